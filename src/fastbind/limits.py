"""Per-pipeline limits (docs/design.md, "The contract")."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ("Limits", "DEFAULT_CPU_MS")

# Cloudflare's default CPU limit for a request (the most its Workers may be given is 5 minutes).
DEFAULT_CPU_MS = 30_000.0


def _finite(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


@dataclass(frozen=True, slots=True)
class Limits:
    """What one top-level request and the Workers it reaches may use.

    ``depth`` counts the top-level Worker as 1; ``subrequests`` is per invocation;
    ``open_connections`` bounds outbound fetches waiting for headers per pipeline;
    ``wait_until_s`` is how long ``ctx.wait_until`` work may outlive the response;
    ``cpu_ms`` is the CPU time the whole pipeline may use (30 s by default, as
    Cloudflare's; 0 for no limit, None too); ``measure_cpu`` meters every step of every
    pipeline and reports CPU per pipeline and invocation. Without it a pipeline is
    metered from the moment the CPU watchdog finds it running (docs/design.md, "CPU").
    """

    depth: int = 32
    subrequests: int = 10_000
    open_connections: int = 6
    wait_until_s: float = 30.0
    cpu_ms: float | None = DEFAULT_CPU_MS
    measure_cpu: bool = False

    def __post_init__(self) -> None:
        for name in ("depth", "subrequests", "open_connections"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"Limits.{name} must be a positive int, not {value!r}")
        w = self.wait_until_s
        if not _finite(w) or w < 0:
            raise ValueError(f"Limits.wait_until_s must be a number >= 0 (finite), not {w!r}")
        c = self.cpu_ms
        if c is not None and (not _finite(c) or c < 0):
            raise ValueError(f"Limits.cpu_ms must be a number >= 0 (finite; 0: no limit), not {c!r}")
        if type(self.measure_cpu) is not bool:
            raise ValueError(f"Limits.measure_cpu must be a bool, not {self.measure_cpu!r}")
