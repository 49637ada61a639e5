"""The hop headers: what a request between fastbind processes carries of its pipeline.

A remote binding's request (``fastbind.remote(url)``) and a Durable Object call
forwarded to the process that owns the object are one protocol: an HTTP/1.1 request to
a fastbind server with these headers, signed with the cluster's shared secret
(``FASTBIND_CLUSTER_SECRET``, HMAC-SHA256). The receiving server trusts them only when
the signature is good; a request that has any of them without it is refused, so a
client cannot reset its depth or raise its CPU budget. docs/scaling.md describes the
protocol; ``cluster/receive.py`` serves it.

- ``fastbind-depth``: the depth the callee runs at (its caller's + 1).
- ``fastbind-pipeline``: the pipeline's id, the same in every process it crosses.
- ``fastbind-cpu-ms``: the CPU the pipeline has left, in ms (absent: no limit).
- ``fastbind-object``: a Durable Object call: ``<worker>/<class>/<id>``.
- ``fastbind-rpc``: an RPC call's method name (absent: the object's fetch).
- ``fastbind-members``: the fingerprint of the sender's cluster membership.
- ``fastbind-signature``: ``t=<unix seconds>,v1=<hex HMAC>`` over the method, the path
  and query, the time and the headers above.

An answer made by the receiving fastbind itself (not by a Worker) says why in
``fastbind-error``: ``refused`` (403: not signed), ``depth`` (508: past the receiver's
depth limit), ``cpu`` (503: the budget ran out there), ``exception`` (500: the object
raised; the body is the exception), ``misdirected`` (421: the receiver does not own the
object), ``unavailable`` (503: its owner cannot be reached).
"""

from __future__ import annotations

import hmac
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, FastbindError

__all__ = (
    "Hop", "HopKey", "HopRefused", "HOP_HEADERS", "SECRET_ENV", "ERROR", "DEPTH", "PIPELINE",
    "CPU_MS", "OBJECT", "RPC", "MEMBERS", "SIGNATURE", "key_from_env", "path_of", "without_hop",
    "caller_chain", "remaining_cpu_ms", "read_trusted",
)

SECRET_ENV = "FASTBIND_CLUSTER_SECRET"
DEPTH = "fastbind-depth"
PIPELINE = "fastbind-pipeline"
CPU_MS = "fastbind-cpu-ms"
OBJECT = "fastbind-object"
RPC = "fastbind-rpc"
MEMBERS = "fastbind-members"
SIGNATURE = "fastbind-signature"
ERROR = "fastbind-error"  # on answers: why the receiving fastbind answered itself
HOP_HEADERS = frozenset((DEPTH, PIPELINE, CPU_MS, OBJECT, RPC, MEMBERS, SIGNATURE))
# How far a signature's time may be from the receiver's clock: it bounds a replay.
MAX_SKEW_S = 300
_PIPELINE_ID = re.compile(r"[0-9A-Za-z_.-]{1,64}")
_METHOD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


class HopRefused(FastbindError):
    """A request's hop headers cannot be trusted (unsigned, badly signed, malformed)."""


@dataclass(frozen=True, slots=True)
class Hop:
    """What one hop carries: the callee's depth, the pipeline's id and CPU left, and
    for a Durable Object call its target, method and the sender's membership."""

    depth: int
    pipeline_id: str
    cpu_ms: float | None = None
    object: str | None = None
    rpc: str | None = None
    members: str | None = None

    def headers(self) -> list[tuple[str, str]]:
        """The hop's headers, unsigned."""
        pairs = [(DEPTH, str(self.depth)), (PIPELINE, self.pipeline_id)]
        if self.cpu_ms is not None:
            pairs.append((CPU_MS, f"{self.cpu_ms:.3f}"))
        if self.object is not None:
            pairs.append((OBJECT, self.object))
        if self.rpc is not None:
            pairs.append((RPC, self.rpc))
        if self.members is not None:
            pairs.append((MEMBERS, self.members))
        return pairs


# The signed headers, in the order the signed text lists them.
_SIGNED = (DEPTH, PIPELINE, CPU_MS, OBJECT, RPC, MEMBERS)


def _signed_text(stamp: str, method: str, path: str, values: dict[str, str]) -> bytes:
    lines = [stamp, method, path]
    lines += [f"{name}:{values[name]}" for name in _SIGNED if name in values]
    return "\n".join(lines).encode("utf-8", "surrogateescape")


class HopKey:
    """The cluster's shared secret: signs hops going out, checks hops coming in."""

    __slots__ = ("_secret",)

    def __init__(self, secret: str | bytes) -> None:
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        if len(raw) < 16:
            raise ValueError(
                f"{SECRET_ENV} must be at least 16 bytes long (a random string such as "
                "`openssl rand -hex 32` gives), not " + str(len(raw))
            )
        self._secret = raw

    def sign(self, hop: Hop, method: str, path: str, now: float | None = None) -> list[tuple[str, str]]:
        """``hop``'s headers with their signature, for a request ``method path``."""
        pairs = hop.headers()
        stamp = str(int(time.time() if now is None else now))
        mac = hmac.digest(self._secret, _signed_text(stamp, method, path, dict(pairs)), "sha256").hex()
        pairs.append((SIGNATURE, f"t={stamp},v1={mac}"))
        return pairs

    def verify(self, method: str, path: str, headers: Iterable[tuple[str, str]], now: float | None = None) -> Hop:
        """The Hop a request's headers carry, or HopRefused saying why they are not trusted."""
        found: dict[str, str] = {}
        for name, value in headers:
            if name in HOP_HEADERS:
                if name in found:
                    raise HopRefused(f"the request has two {name} headers")
                found[name] = value
        signature = found.pop(SIGNATURE, None)
        if signature is None:
            raise HopRefused(
                f"the request has fastbind hop headers ({', '.join(sorted(found))}) but no "
                f"{SIGNATURE}: they are accepted only from cluster peers"
            )
        stamp, _, mac = signature.partition(",v1=")
        stamp = stamp.removeprefix("t=")
        if not stamp.isdigit() or not mac:
            raise HopRefused(f"the {SIGNATURE} header is malformed")
        moment = time.time() if now is None else now
        if abs(moment - int(stamp)) > MAX_SKEW_S:
            raise HopRefused(
                f"the hop was signed {int(moment) - int(stamp)} s away from this server's clock "
                f"(at most {MAX_SKEW_S} s): check the peers' clocks"
            )
        expected = hmac.digest(self._secret, _signed_text(stamp, method, path, found), "sha256").hex()
        if not hmac.compare_digest(expected, mac):
            raise HopRefused(
                f"the {SIGNATURE} does not match: the peer's {SECRET_ENV} differs from this server's"
            )
        return _parse(found)


def read_trusted(headers: Iterable[tuple[str, str]]) -> Hop:
    """The Hop of a request from a peer trusted by how it came (a process of the node,
    on its private unix socket): its headers are read, not checked against a signature."""
    found = {}
    for name, value in headers:
        if name in HOP_HEADERS:
            found[name] = value
    found.pop(SIGNATURE, None)
    return _parse(found)


def _parse(found: dict[str, str]) -> Hop:
    depth_text = found.get(DEPTH)
    pipeline_id = found.get(PIPELINE)
    if depth_text is None or pipeline_id is None:
        raise HopRefused(f"a hop needs {DEPTH} and {PIPELINE}")
    if not depth_text.isdigit() or not 1 <= int(depth_text) <= 1_000_000:
        raise HopRefused(f"{DEPTH} must be a positive integer, not {depth_text!r}")
    if _PIPELINE_ID.fullmatch(pipeline_id) is None:
        raise HopRefused(f"{PIPELINE} must be 1 to 64 letters, digits or _.-, not {pipeline_id!r}")
    cpu_ms = None
    cpu_text = found.get(CPU_MS)
    if cpu_text is not None:
        try:
            cpu_ms = float(cpu_text)
        except ValueError:
            raise HopRefused(f"{CPU_MS} must be a number, not {cpu_text!r}") from None
        if not 0 <= cpu_ms < 1e15:
            raise HopRefused(f"{CPU_MS} must be a number of milliseconds, not {cpu_text!r}")
    rpc = found.get(RPC)
    if rpc is not None and _METHOD_NAME.fullmatch(rpc) is None:
        raise HopRefused(f"{RPC} must be a method name, not {rpc!r}")
    return Hop(int(depth_text), pipeline_id, cpu_ms, found.get(OBJECT), rpc, found.get(MEMBERS))


def key_from_env() -> HopKey | None:
    """The key of ``FASTBIND_CLUSTER_SECRET``, or None when it is not set."""
    secret = os.environ.get(SECRET_ENV)
    if not secret:
        return None
    try:
        return HopKey(secret)
    except ValueError as exc:  # a configuration error: fastbind serve says so without a traceback
        raise ConfigError(str(exc)) from None


def path_of(url: str) -> str:
    """The path and query of an absolute URL (what a hop's signature covers)."""
    start = url.find("//")
    slash = url.find("/", start + 2 if start >= 0 else 0)
    if slash < 0:
        return "/"
    end = url.find("#", slash)
    return url[slash:] if end < 0 else url[slash:end]


def without_hop(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """``pairs`` less every hop header (and ``fastbind-error``)."""
    return [(n, v) for n, v in pairs if n not in HOP_HEADERS and n != ERROR]


def caller_chain(invocation: Any) -> tuple[str, ...]:
    """The Workers of the calls that led to ``invocation``, the top-level one first (the
    chain of a SubrequestDepthError; a continued pipeline's callers elsewhere are counted)."""
    names = []
    inv = invocation
    while inv is not None:
        names.append(inv.worker)
        inv = inv.parent
    names.reverse()
    earlier = invocation.pipeline.root_depth - 1
    if earlier > 0:
        names.insert(0, f"({earlier} in other processes)")
    return tuple(names)


def remaining_cpu_ms(pipeline: Any) -> float | None:
    """What the pipeline's CPU budget has left, in ms; None when it has no limit."""
    limit: int = pipeline.cpu_limit_ns
    if limit < 0:
        return None
    used: int = pipeline.cpu_ns
    return max(0.0, (limit - used) / 1e6)
