"""Revealed types of fastbind's public API, checked by tests/test_typing.py with mypy --strict.

Each ``reveal_type`` line carries the type mypy must reveal, after ``# R:``. The file
is only type-checked, never run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, reveal_type

import fastbind
from fastbind import (
    Headers,
    Limits,
    PipelineReport,
    Request,
    Response,
    Runtime,
    WorkerEntrypoint,
    current_invocation,
    fetch,
    workers,
)
from fastbind.core import _core
from fastbind.embed import RawDispatcher, raw_request, raw_response


class Auth(WorkerEntrypoint):
    async def fetch(self, request: Request) -> Response:
        return Response.json({"user": 42}, status=200)


async def public_api(rt: Runtime, env: Any) -> None:
    request = Request("https://example.com/", method="POST", headers={"a": "b"}, body=b"{}")
    reveal_type(request)  # R: fastbind.request.Request
    reveal_type(request.headers)  # R: fastbind.headers.Headers
    reveal_type(request.headers.get("a"))  # R: str | None
    reveal_type(await request.json())  # R: Any
    reveal_type(await request.bytes())  # R: bytes
    reveal_type(Response.json({"a": 1}))  # R: fastbind.response.Response
    response = await rt.dispatch("gateway", request)
    reveal_type(response)  # R: fastbind.response.Response
    reveal_type(response.status)  # R: int
    reveal_type(await response.json())  # R: Any
    reveal_type(await response.array_buffer())  # R: bytes
    reveal_type(await fetch("https://example.com/"))  # R: fastbind.response.Response
    reveal_type(Limits().depth)  # R: int
    reveal_type(Headers([("a", "b")]).get_all("a"))  # R: list[str]
    reveal_type(rt.implementation)  # R: str
    reveal_type(fastbind.RawDispatcher)  # R: def (runtime: fastbind.runtime.Runtime, entry: str) -> fastbind.embed.RawDispatcher


def on_report(report: PipelineReport) -> None:
    reveal_type(report.duration_ns)  # R: int


async def embedding(rt: Runtime) -> None:
    raw = RawDispatcher(rt, "gateway")
    status, headers, body = await raw(b"GET", "https://example.com/", [(b"host", b"e")], b"")
    reveal_type(status)  # R: int
    reveal_type(headers)  # R: list[tuple[bytes, bytes]]
    reveal_type(body)  # R: bytes | bytearray | memoryview[int] | typing.AsyncIterator[bytes]
    reveal_type(raw_request("GET", "https://e/", [], None))  # R: fastbind.request.Request
    reveal_type(raw_response(Response(None))[0])  # R: int


async def python_workers(path: Path) -> None:
    reveal_type(workers.Response.json({"a": 1}, 201))  # R: fastbind.workers.Response
    reveal_type(workers.Response("x", 404).status_text)  # R: str
    reveal_type(workers.install())  # R: types.ModuleType
    handler = workers.load(path)
    Runtime().add_worker("w", handler)
    reveal_type(await workers.fetch("https://example.com/"))  # R: fastbind.response.Response


def compiled_core() -> None:
    reveal_type(_core.live_counts())  # R: dict[str, int]
    reveal_type(_core.IMPLEMENTATION)  # R: Literal['c'] | Literal['py']
    reveal_type(_core.current_invocation())  # R: fastbind.core._core.InvocationContext | None
    pipeline = _core.PipelineContext("gateway", Limits())
    reveal_type(pipeline.ledger)  # R: tuple[fastbind.core._core.SubrequestRecord, ...]
    reveal_type(current_invocation())  # R: fastbind.core._twin_contexts.InvocationContext | None
