"""What ``fastbind bench`` prints and draws: each case beside its own reference.

Every case is compared with the reference that makes the same kind of call: a binding
round trip and the HTTP peers with a direct ``await`` of the same handler, an RPC call
with a direct method call. The project's own targets are shown only when asked for
(``--targets``): a user's bench shows what was measured, not a verdict.
"""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

__all__ = (
    "CaseResult", "Target", "TARGETS", "machine", "ratios", "paired_ratio", "check_targets",
    "table", "report", "plot",
)


@dataclass(slots=True)
class CaseResult:
    name: str
    role: str  # "floor", "fastbind" or "peer"
    short: str = ""  # the heading of its ratio column, for the floor and peers
    samples: list[float] = field(default_factory=list)  # ns per call, one per round
    skipped: str | None = None
    ref: str = ""  # the case it is compared with (a floor: itself)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def as_dict(self) -> dict[str, Any]:
        stats = {} if self.skipped else {
            "median": self.median, "min": min(self.samples), "max": max(self.samples)}
        return {"name": self.name, "role": self.role, "ref": self.ref or self.name, "skipped": self.skipped,
                **stats, "samples": self.samples}


@dataclass(frozen=True, slots=True)
class Target:
    """median(case) / median(ref) must be at most (or at least) ``bound``."""

    title: str
    case: str
    ref: str
    bound: float
    at_most: bool

    def met(self, ratio: float) -> bool:
        return ratio <= self.bound if self.at_most else ratio >= self.bound


# The project's targets that the core comparison measures (bench/README.md has the rest).
TARGETS = (
    Target("binding [c] at most 1.5x a direct await", "binding [c]", "direct await", 1.5, True),
    Target("rpc [c] at most 1.5x a direct method call", "rpc [c]", "direct method call", 1.5, True),
    Target("binding [c] at least 100x faster than httpx", "httpx ASGITransport", "binding [c]", 100.0, False),
    Target("compiled core at least 2.5x faster than the twin", "binding [py]", "binding [c]", 2.5, False),
)


def machine() -> dict[str, Any]:
    """What the figures were measured on: nproc, CPU model, Python, uvloop."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        uvloop_version: str | None = metadata.version("uvloop")
    except metadata.PackageNotFoundError:
        uvloop_version = None
    nproc = os.cpu_count()  # the machine's, not the one CPU a measuring process is pinned to
    return {"nproc": nproc, "cpu": cpu, "python": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            "uvloop": uvloop_version, "platform": platform.platform()}


def ratios(results: Sequence[CaseResult]) -> dict[str, dict[str, float]]:
    """For each measured case, its median over the median of each floor and of each peer."""
    medians = {r.name: r.median for r in results if not r.skipped}
    refs = [r.name for r in results if r.role in ("floor", "peer") and not r.skipped]
    return {name: {ref: value / medians[ref] for ref in refs} for name, value in medians.items()}


def own_ratio(result: CaseResult, results: Sequence[CaseResult]) -> float | None:
    """``result``'s median over its own reference's (None when that was not measured)."""
    by_name = {r.name: r for r in results if not r.skipped}
    ref = by_name.get(result.ref or result.name)
    if result.skipped or ref is None:
        return None
    return result.median / ref.median


def paired_ratio(case: CaseResult, ref: CaseResult) -> float:
    """The median of the per-round ratios case/ref.

    Both were sampled once per round, close together in time, so each round's ratio is
    taken on the machine as it was then: steadier from run to run than the ratio of the
    medians when the machine's speed drifts during a run.
    """
    return statistics.median(a / b for a, b in zip(case.samples, ref.samples))


def check_targets(results: Sequence[CaseResult]) -> list[dict[str, Any]]:
    """Each target's ratio of medians and its paired ratio, which decides it.

    The paired ratio compares samples taken next to each other; the ratio of medians
    compares medians that may come from different moments of a machine whose speed
    drifts (on a shared 2-vCPU machine it has put the same build at 1.38x a direct
    await in one run and 1.72x in another, where the per-round medians stayed within
    1.40x to 1.48x).
    """
    by_name = {r.name: r for r in results if not r.skipped}
    checks: list[dict[str, Any]] = []
    for target in TARGETS:
        if target.case not in by_name or target.ref not in by_name:
            checks.append({"target": target.title, "measured": None, "paired": None, "met": None})
            continue
        case, ref = by_name[target.case], by_name[target.ref]
        paired = paired_ratio(case, ref)
        checks.append({"target": target.title, "measured": case.median / ref.median,
                       "paired": paired, "met": target.met(paired)})
    return checks


def _ratio(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"


def table(results: Sequence[CaseResult], calls: int, rounds: int, cpu: int | None = None,
          targets: bool = False) -> str:
    """The text table: case, ns/op (median, min, max), the ratio to its own reference,
    then the ratio to each floor and each peer; the targets' verdicts if ``targets``."""
    by_case = ratios(results)
    refs = [r for r in results if r.role in ("floor", "peer")]
    head = ["case", "median ns/op", "min", "max", "vs its reference"] + [f"x {r.short or r.name}" for r in refs]
    rows = [head]
    notes = []
    for r in results:
        if r.skipped:
            notes.append(f"{r.name}: skipped, {r.skipped}")
            rows.append([r.name, "skipped"] + [""] * (len(head) - 2))
            continue
        own = own_ratio(r, results)
        against = "-" if own is None else f"{_ratio(own)}x {r.ref or r.name}"
        rows.append([r.name, f"{r.median:,.0f}", f"{min(r.samples):,.0f}", f"{max(r.samples):,.0f}", against]
                    + [_ratio(by_case[r.name][ref.name]) if ref.name in by_case[r.name] else "-"
                       for ref in refs])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) if i in (0, 4) else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    info = machine()
    where = "not pinned" if cpu is None else f"pinned to CPU {cpu}"
    lines.insert(0, f"{calls} calls per batch, median of {rounds} rounds, uvloop {info['uvloop']}, "
                    f"{info['python_implementation']} {info['python']}, {info['nproc']} x {info['cpu']}, "
                    f"{where}")
    lines += [f"note: {note}" for note in notes]
    if targets:
        for check in check_targets(results):
            verdict = "not measured" if check["met"] is None else (
                f"per-round median {check['paired']:.3g}x (ratio of medians {check['measured']:.3g}x): "
                f"{'met' if check['met'] else 'not met'}")
            lines.append(f"target: {check['target']}: {verdict}")
    return "\n".join(lines)


def report(results: Sequence[CaseResult], calls: int, rounds: int, cpu: int | None = None,
           targets: bool = False) -> dict[str, Any]:
    """Everything ``--json`` saves (the targets' verdicts with ``targets``)."""
    by_case = ratios(results)
    saved: dict[str, Any] = {
        "unit": "ns per call", "calls_per_batch": calls, "rounds": rounds, "machine": machine(),
        "pinned_cpu": cpu,
        "cases": [{**r.as_dict(), "ratio": own_ratio(r, results), "ratios": by_case.get(r.name, {})}
                  for r in results],
    }
    if targets:
        saved["targets"] = check_targets(results)
    return saved


def plot(results: Sequence[CaseResult], path: str) -> None:
    """A bar chart: each case's time over its own reference's, on a log scale, every bar labelled."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed: the chart goes to a file
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    shown = [(r, ratio) for r in results if (ratio := own_ratio(r, results)) is not None]
    values = [ratio for _, ratio in shown]
    colors = {"floor": "#888888", "fastbind": "#f38020", "peer": "#4a6fa5"}
    fig, ax = plt.subplots(figsize=(8.5, 0.5 * len(shown) + 1.5))
    bars = ax.barh([r.name for r, _ in shown], values, color=[colors[r.role] for r, _ in shown])
    labels = [f"{_ratio(v)}x {r.ref or r.name}" for (r, _), v in zip(shown, values)]
    ax.bar_label(bars, labels=labels, padding=3)
    ax.set_xscale("log")
    ax.set_xlim(min(values) / 2, max(values) * 12)  # every bar on the axis, room for its label
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.invert_yaxis()
    ax.set_xlabel("time per call / its reference's (log scale)")
    ax.set_title("fastbind: one call between two handlers in one process")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
