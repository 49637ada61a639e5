"""The compiled core and its pure-Python twin do the same thing, checked on generated graphs of Workers.

Each example is a small graph: 2-5 Workers (function or WorkerEntrypoint class style),
each running a tiny program of steps (binding fetches, RPC calls, raises, try/except,
spawned, detached and gathered tasks, ``ctx.wait_until``, request body and header
use, plain or streamed responses), with every Worker bound to every other one and to
itself (cycles reach the depth limit), under small generated ``Limits``. The same
graph and the same top-level requests (read, closed unread or cancelled midway, one
after the other or all at once) run once on each core, each on a fresh event loop;
what each run did (the responses, what the Workers saw, the ledger and outcome of
every pipeline, the log) must be equal entry by entry, and every pipeline must have
ended after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastbind import (
    Limits,
    Request,
    Response,
    Runtime,
    WorkerEntrypoint,
    current_invocation,
    service,
)
from fastbind import core as cores

pytestmark = pytest.mark.skipif(
    cores.compiled is None,
    reason="compiled core not built: there is nothing to compare the twin with",
)

# Seeded and bounded: the same examples every run, the whole file in a few seconds.
TWINS = settings(
    derandomize=True, database=None, deadline=None, max_examples=200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

NOTHING_LIVE = {"pipelines": 0, "invocations": 0, "tasks": 0}
RUN_TIMEOUT_S = 10.0  # one core's run of one graph; a hang fails the example
REPORT_POLLS = 2_000  # loop iterations to wait for a pipeline's report


class Boom(Exception):
    """An exception type of the test's own (not a builtin)."""


EXCEPTIONS: tuple[type[Exception], ...] = (ValueError, KeyError, RuntimeError, Boom)
# Method names an RPC call may use: async, sync and static methods, and names that
# are not methods (a class, a str, none at all), private or reserved.
RPC_METHODS = ("call", "sync_call", "static")
NOT_RPC_METHODS = ("Inner", "label", "missing", "_private", "connect")
RPC_ARGS: tuple[Any, ...] = (0, 7, "s", (1, 2), [1, [2]], {"k": [3]}, "the request")
# How the call passes its arguments: positional counts (the compiled core keeps up
# to two in the call, up to seven on the stack), a keyword, or * and ** (tp_call).
RPC_FORMS: tuple[Any, ...] = (1, 1, 0, 2, 3, 9, "kw", "star")
# URLs a Worker may fetch: the compiled core builds http(s) ones without a full parse.
URLS = (
    "https://h", "http://h.test:8080/p?q=1#f", "HTTPS://UP.test/", "https://h.test/é",
    "https://h.test/\x7f", "https://h.t/?\x01", "ftp://h.test/x", "mailto:someone",
    "https:///nohost", "http://", "not a url", "https://h.test/a b",
)
BINDINGS = tuple(f"B{j}" for j in range(5))  # interned: env.<name> by identity


# -- the graph ------------------------------------------------------------------------------
# A step is a tuple (so that a failing example prints as plain data):
#   ("fetch", j, how, then)   await env.Bj.fetch(...); how: forward (the request), new (a
#                             URL), post (a URL, POST with a body), request (a new
#                             Request), star (fetch(*[request])), or one of URLS;
#                             then: read (the response), return (it), drop (it unread)
#   ("rpc", j, method, arg, form)
#                             await env.Bj.<method>(arg, ...) as RPC_FORMS says, and
#                             record the result (arg "the request": the Worker's request)
#   ("header", op)            change the request's headers (append, set, delete, dict)
#   ("read_body",)            await request.bytes()
#   ("sleep",)                await asyncio.sleep(0)
#   ("raise", k, msg)         raise EXCEPTIONS[k](...)
#   ("return", body, status)  return a Response (fetch) or a value (RPC)
#   ("return_bad",)           return what the handler may not return
#   ("try", steps)            run steps, catch Exception, record it and go on
#   ("spawn", steps)          await asyncio.create_task(steps)
#   ("detach", steps)         asyncio.create_task(steps), not awaited
#   ("wait_until", steps)     ctx.wait_until(steps)
#   ("wait_until_task", steps) ctx.wait_until(asyncio.create_task(steps))
#   ("gather", steps, steps)  asyncio.gather(both, return_exceptions=True)
# A body is None, bytes, str, ("bytearray" or "memoryview", bytes) or ("stream", chunks,
# fail, j): an async generator of chunks that calls env.Bj.fetch at its end when j is
# not None, then raises if fail.
# A top-level request is (entry, kind, end): kind get, post or stream (its body);
# end: read (the response body), close (it unread) or an int k: cancel the task that
# dispatches and reads after k loop iterations. The requests go one after the other,
# or all at once when the graph is concurrent.


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    style: str  # "fn" or "cls"
    steps: tuple[Any, ...]


@dataclass(frozen=True)
class Graph:
    workers: tuple[WorkerSpec, ...]
    depth: int
    subrequests: int
    props: bool
    measure_cpu: bool  # the metered paths of both cores (the figures are not compared)
    concurrent: bool
    requests: tuple[tuple[int, str, str | int], ...]


@st.composite
def graphs(draw: st.DrawFn) -> Graph:
    n = draw(st.integers(2, 5))
    styles = draw(st.lists(st.sampled_from(("cls", "fn")), min_size=n, max_size=n))
    target = st.integers(0, n - 1)
    # RPC goes mostly to class-style Workers (a function-style one has no methods).
    classes = [i for i, style in enumerate(styles) if style == "cls"]
    rpc_target = st.one_of(st.sampled_from(classes), st.sampled_from(classes), target) if classes else target
    stream = st.tuples(
        st.just("stream"),
        st.lists(st.binary(max_size=2) | st.text(alphabet="xy", max_size=2), max_size=3).map(tuple),
        st.booleans(),
        st.none() | target,
    )
    body = st.one_of(
        st.none(),
        st.binary(max_size=3),
        st.text(alphabet="abé", max_size=3),
        st.tuples(st.sampled_from(("bytearray", "memoryview")), st.binary(max_size=3)),
        stream,
        stream,
    )
    # Calls that fail before they start (no such method, a bad URL) are rarer.
    common_how = st.sampled_from(("forward", "forward", "new", "post", "request", "star"))
    how = st.one_of(common_how, common_how, common_how, st.sampled_from(URLS))
    fetch = st.tuples(st.just("fetch"), target, how, st.sampled_from(("read", "return", "drop")))
    rpc = st.tuples(
        st.just("rpc"), rpc_target,
        st.one_of(st.just("call"), st.just("call"), st.sampled_from(RPC_METHODS),
                  st.sampled_from(NOT_RPC_METHODS)),
        st.sampled_from(RPC_ARGS),
        st.sampled_from(RPC_FORMS),
    )
    # Binding calls weigh most: they make the graph (and the ledger) deep. A raise or a
    # return ends a program or a block: they come last, or not at all.
    simple = st.one_of(
        fetch, fetch, fetch, rpc, rpc,
        st.tuples(st.just("header"), st.sampled_from(("append", "set", "delete", "dict"))),
        st.just(("read_body",)), st.just(("sleep",)),
    )
    returns = st.tuples(st.just("return"), body, st.sampled_from((200, 201, 404, 503)))
    last = st.one_of(
        returns, returns, returns,
        st.tuples(st.just("raise"), st.integers(0, len(EXCEPTIONS) - 1), st.sampled_from(("", "bad", "x y"))),
        st.just(("return_bad",)),
    )

    def steps(inner: st.SearchStrategy[Any], most: int) -> st.SearchStrategy[tuple[Any, ...]]:
        return st.tuples(
            st.lists(inner, min_size=1, max_size=most), st.lists(last, max_size=1),
        ).map(lambda parts: tuple(parts[0] + parts[1]))

    def block(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.tuples(st.sampled_from(("try", "try", "spawn", "detach", "wait_until", "wait_until_task")),
                      steps(inner, 2)),
            st.tuples(st.just("gather"), steps(inner, 2), steps(inner, 2)),
        )

    # Blocks nest two deep; simple steps weigh more than blocks, try more than the others.
    step = st.one_of(simple, simple, block(st.one_of(simple, simple, block(simple))))
    # A program most often starts with a binding call, so that the graph gets deep.
    program = st.tuples(
        st.one_of(fetch, fetch, rpc, step), st.lists(step, max_size=2), st.lists(last, max_size=1),
    ).map(lambda parts: (parts[0], *parts[1], *parts[2]))
    workers = tuple(WorkerSpec(f"w{i}", styles[i], draw(program)) for i in range(n))
    ending = st.one_of(st.just("read"), st.just("read"), st.sampled_from(("close", 1, 2, 3, 5, 8)))
    return Graph(
        workers=workers,
        depth=draw(st.sampled_from((3, 2, 4, 5, 1))),
        subrequests=draw(st.sampled_from((2, 1, 1, 3, 5))),
        props=draw(st.booleans()),
        measure_cpu=draw(st.booleans()),
        concurrent=draw(st.booleans()),
        requests=tuple(draw(st.lists(
            st.tuples(target, st.sampled_from(("get", "post", "stream")), ending), min_size=1, max_size=3,
        ))),
    )


# -- the Workers: one interpreter of the steps ----------------------------------------------


def where() -> tuple[str, int] | None:
    """Which invocation the running code belongs to, as plain data."""
    inv = current_invocation()
    return None if inv is None else (inv.worker, inv.depth)


def error(exc: BaseException) -> tuple[str, str]:
    return type(exc).__name__, str(exc)


def plain(value: Any) -> Any:
    """A value as plain data: a Request by what it holds, an object() by its type."""
    if isinstance(value, Request):
        return ("request", value.method, value.url, list(value.headers), value.body_used)
    if type(value) is object:  # what return_bad gives
        return ("object",)
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


async def summary(value: Any) -> Any:
    """A returned value as plain data; bodies and streams are read to their end."""
    if isinstance(value, Response):
        return ("response", value.status, value.headers.get("x-worker"), await value.bytes())
    if hasattr(value, "__aiter__"):
        chunks = []
        async for chunk in value:
            chunks.append(chunk)
        return ("stream", tuple(chunks))
    return plain(value)


def rpc_call(method: Any, arg: Any, form: Any) -> Any:
    """Call ``method`` with ``arg`` (and more) as RPC_FORMS ``form`` says."""
    if form == 0:
        return method()
    if form == 1:
        return method(arg)
    if form == 2:
        return method(arg, 1)
    if form == 3:
        return method(arg, 1, 2)
    if form == 9:
        return method(arg, 1, 2, 3, 4, 5, 6, 7, 8)
    if form == "kw":
        return method(arg, kw=arg)
    return method(*[arg, 1], **{"kw": arg})


class Observed:
    """What the Workers saw, in order; and what cancelled code saw, in no order.

    When a pipeline ends, its leftover tasks are cancelled in the order of a set of
    tasks (by address, on both cores), so the order in which they unwind is not part
    of the behaviour: what they note on the way out is compared as a sorted list.
    """

    def __init__(self) -> None:
        self.ordered: list[Any] = []
        self.unordered: list[Any] = []

    def take(self) -> tuple[Any, ...]:
        taken = ("observed", self.ordered[:], sorted(self.unordered, key=repr))
        self.ordered.clear()
        self.unordered.clear()
        return taken


class Invocation:
    """What one run of a Worker's program works with."""

    def __init__(self, spec: WorkerSpec, obs: Observed, env: Any, ctx: Any,
                 request: Request | None, args: tuple[Any, ...] = (), kwargs: Any = None) -> None:
        self.name = spec.name
        self.obs = obs
        self.env = env
        self.ctx = ctx
        self.request = request
        self.args = args
        self.kwargs = kwargs
        self.rpc = request is None

    def note(self, *event: Any) -> None:
        self.obs.ordered.append((self.name, *event))

    def note_cancelled(self, *event: Any) -> None:
        self.obs.unordered.append((self.name, *event))

    def body(self, spec: Any) -> Any:
        if not isinstance(spec, tuple):
            return spec
        if spec[0] == "bytearray":
            return bytearray(spec[1])
        if spec[0] == "memoryview":
            return memoryview(spec[1])
        _, chunks, fail, call = spec
        env, name, note = self.env, self.name, self.note

        async def stream() -> AsyncIterator[Any]:
            note("stream starts", where())
            for chunk in chunks:
                await asyncio.sleep(0)
                yield chunk
            if call is not None:
                resp = await env[f"B{call}"].fetch(f"https://w{call}.test/stream/{name}")
                yield await resp.bytes()
            if fail:
                raise Boom(f"{name}: stream failed")
            note("stream ends", where())

        return stream()

    async def run(self, steps: tuple[Any, ...]) -> tuple[Any] | None:
        """Run ``steps``; ``(value,)`` when one of them returned, else None."""
        for step in steps:
            result = await self.step(step)
            if result is not None:
                return result
        return None

    async def fetch(self, j: int, how: str) -> Response:
        binding, name = getattr(self.env, BINDINGS[j]), self.name
        if how in ("forward", "star") and not self.rpc:
            if how == "star":
                return await binding.fetch(*[self.request])
            return await binding.fetch(self.request)
        if how == "post":
            url = f"https://w{j}.test/post/{name}"
            return await binding.fetch(url, method="POST", body=b"p-" + name.encode())
        if how == "request":
            url = f"https://w{j}.test/req/{name}"
            return await binding.fetch(Request(url, method="PUT", headers={"x-from": name}, body=b"r"))
        if how in URLS:
            return await binding.fetch(how)
        return await binding.fetch(f"https://w{j}.test/new/{name}")

    async def step(self, step: tuple[Any, ...]) -> tuple[Any] | None:
        kind = step[0]
        name = self.name
        if kind == "fetch":
            _, j, how, then = step
            resp = await self.fetch(j, how)
            if then == "return":
                return (resp,)
            if then == "read":
                self.note("got", j, await summary(resp))
            return None
        if kind == "rpc":
            _, j, method, arg, form = step
            if arg == "the request":
                arg = self.request
            result = await rpc_call(getattr(self.env[f"B{j}"], method), arg, form)
            self.note("rpc result", j, method, await summary(result))
            return None
        if kind == "header":
            request = self.request
            if request is not None:
                op = step[1]
                if op == "append":
                    request.headers.append("x-hop", name)
                elif op == "set":
                    request.headers.set("x-last", name)
                elif op == "delete":
                    request.headers.delete("x-hop")
                else:
                    request.headers = {"x-dict": name}
            return None
        if kind == "read_body":
            if self.request is not None:
                self.note("body", await self.request.bytes())
            return None
        if kind == "sleep":
            await asyncio.sleep(0)
            return None
        if kind == "raise":
            _, k, msg = step
            raise EXCEPTIONS[k](f"{name}: {msg}")
        if kind == "return":
            _, body, status = step
            if self.rpc:
                if isinstance(body, tuple):  # a stream, bytearray or memoryview, as it is
                    return (self.body(body),)
                return ((name, self.ctx.depth, self.plain_args(), body, status),)
            return (Response(self.body(body), status=status, headers={"x-worker": name}),)
        if kind == "return_bad":
            return (object(),) if self.rpc else ("not a Response",)
        return await self.block(kind, step[1:])

    async def block(self, kind: str, blocks: tuple[Any, ...]) -> tuple[Any] | None:
        inner = blocks[0]
        if kind == "try":
            try:
                return await self.run(inner)
            except Exception as exc:
                self.note("caught", *error(exc))
                return None
        if kind == "spawn":
            async def spawned() -> tuple[Any] | None:
                self.note("task", where())
                return await self.run(inner)

            return await asyncio.create_task(spawned())
        if kind == "gather":
            outcomes = []
            for result in await asyncio.gather(*map(self.run, blocks), return_exceptions=True):
                if isinstance(result, BaseException):
                    outcomes.append(("raised", *error(result)))
                else:
                    outcomes.append(result if result is None else ("returned", await summary(result[0])))
            self.note("gathered", outcomes)
            return None

        async def background() -> None:
            self.note(f"{kind} starts", where())
            try:
                await self.run(inner)
            except asyncio.CancelledError as exc:
                self.note_cancelled(f"{kind} cancelled", exc.args)
                raise
            except Exception as exc:
                self.note(f"{kind} raised", *error(exc))
            else:
                self.note(f"{kind} ends")

        if kind == "detach":
            asyncio.create_task(background())
        elif kind == "wait_until_task":  # a task the pipeline has already adopted
            self.ctx.wait_until(asyncio.create_task(background()))
        else:
            assert kind == "wait_until", kind
            self.ctx.wait_until(background())
        return None

    async def serve(self, steps: tuple[Any, ...]) -> Any:
        if self.rpc:
            self.note("rpc starts", self.ctx.depth, self.plain_args(), self.family())
        else:
            req = self.request
            assert req is not None
            self.note("fetch starts", self.ctx.depth, req.method, req.url, list(req.headers), self.family())
        try:
            result = await self.run(steps)
        except asyncio.CancelledError:
            self.note_cancelled("cancelled after subrequests", self.ctx.subrequests)
            raise
        except BaseException:
            self.note("made subrequests", self.ctx.subrequests)
            raise
        self.note("made subrequests", self.ctx.subrequests)
        if result is not None:
            return result[0]
        if self.rpc:
            return (self.name, self.ctx.depth, self.plain_args())
        return Response(f"{self.name}@{self.ctx.depth}", headers={"x-worker": self.name})

    def plain_args(self) -> Any:
        return plain(self.args), plain(self.kwargs or {})

    def family(self) -> tuple[Any, ...]:
        """What the invocation sees of itself and of its caller."""
        ctx, parent = self.ctx, self.ctx.parent
        if parent is None:
            seen = None
        else:
            try:
                parent.env
            except AttributeError as exc:
                seen = (parent.worker, parent.depth, str(exc))
            else:
                seen = (parent.worker, parent.depth, "the parent's env was readable")
        return ctx.worker, dict(ctx.props), where(), seen


def build_handler(spec: WorkerSpec, obs: Observed) -> Any:
    steps = spec.steps
    if spec.style == "fn":
        async def handler(request, env, ctx):
            return await Invocation(spec, obs, env, ctx, request).serve(steps)

        return handler

    async def fetch(self, request):
        return await Invocation(spec, obs, self.env, self.ctx, request).serve(steps)

    async def call(self, *args, **kwargs):
        return await Invocation(spec, obs, self.env, self.ctx, None, args, kwargs).serve(steps)

    def sync_call(self, arg=None, *more, **kwargs):
        seen = (self.ctx.depth, plain(arg), plain(more), plain(kwargs), where())
        obs.ordered.append((spec.name, "sync_call", *seen))
        if arg == 7:
            raise LookupError(f"{spec.name}: sync")
        return [spec.name, arg]

    def static(*args, **kwargs):
        obs.ordered.append((spec.name, "static", plain(args), plain(kwargs), where()))
        return ("static", spec.name, len(args))

    class Inner:  # a class is no RPC method
        pass

    return type(spec.name.upper(), (WorkerEntrypoint,), {
        "fetch": fetch, "call": call, "sync_call": sync_call, "static": staticmethod(static),
        "Inner": Inner, "label": "not callable",
    })


# -- one run of a graph on one core ---------------------------------------------------------


class LogRecords(logging.Handler):
    """What the fastbind logger said, without addresses (task reprs) or tracebacks."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[Any] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        self.items.append((record.levelname, str(record.msg), None if exc is None else error(exc)))


def request_for(kind: str) -> Request:
    if kind == "get":
        return Request("https://top.test/get")
    if kind == "post":
        return Request("https://top.test/post", method="POST", body=b"top-body")

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b"top-", b"stream"):
            await asyncio.sleep(0)
            yield chunk

    return Request("https://top.test/stream", method="POST", body=chunks())


async def scenario(graph: Graph) -> list[Any]:
    obs = Observed()
    reports: list[Any] = []
    limits = Limits(depth=graph.depth, subrequests=graph.subrequests, measure_cpu=graph.measure_cpu)
    rt = Runtime(limits=limits, on_pipeline_end=reports.append)
    n = len(graph.workers)
    for spec in graph.workers:
        services = {
            f"B{j}": service(f"w{j}", props={"via": f"{spec.name}.B{j}"}) if graph.props else f"w{j}"
            for j in range(n)
        }
        rt.add_worker(spec.name, build_handler(spec, obs), services=services)
    record: list[Any] = []

    async def exchange(entry: int, kind: str, end: str | int) -> Any:
        resp = await rt.dispatch(f"w{entry}", request_for(kind))
        if end == "close":
            await resp.aclose()
            return ("closed", resp.status, resp.headers.get("x-worker"))
        try:
            body: Any = await resp.bytes()
        except Exception as exc:
            body = ("body raised", *error(exc))
        return ("response", resp.status, resp.headers.get("x-worker"), body)

    waves = [graph.requests] if graph.concurrent else [(request,) for request in graph.requests]
    for wave in waves:
        seen = len(reports)
        tasks = [asyncio.create_task(exchange(*request)) for request in wave]
        # Each task whose end is k is cancelled after k loop iterations.
        for tick in range(1, 1 + max((end for _, _, end in wave if isinstance(end, int)), default=0)):
            await asyncio.sleep(0)
            for task, (_, _, end) in zip(tasks, wave):
                if end == tick:
                    task.cancel()
        for task in tasks:
            try:
                record.append(await task)
            except asyncio.CancelledError:
                record.append(("cancelled",))
            except Exception as exc:
                record.append(("dispatch raised", *error(exc)))
        # The reports come once wait_until work is over: let it run.
        for _ in range(REPORT_POLLS):
            if len(reports) >= seen + len(wave):
                break
            await asyncio.sleep(0)
        for report in reports[seen:]:
            # Times and CPU figures differ run to run: only whether they were measured counts.
            record.append((
                "report", report.entry, report.status,
                None if report.error is None else error(report.error),
                [(r.kind, r.caller, r.target, r.depth, r.outcome, r.duration_ns >= 0, r.cpu_ns >= 0)
                 for r in report.subrequests],
                report.cpu_ns is None,
            ))
        record.append(("reports", len(reports) - seen))
        record.append(obs.take())
    return record


@contextlib.contextmanager
def active_core(module: Any) -> Iterator[Any]:
    """Make ``module`` the core of Runtimes built (and current_invocation()) inside."""
    saved = cores.impl
    cores.impl = module
    try:
        yield module
    finally:
        cores.impl = saved


def run_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on a fresh loop (uvloop's; asyncio's with FASTBIND_LOOP=asyncio)."""
    bounded = asyncio.wait_for(coro, RUN_TIMEOUT_S)
    if os.environ.get("FASTBIND_LOOP") == "asyncio":
        return asyncio.run(bounded)
    import uvloop

    return uvloop.run(bounded)


def run_on(module: Any, make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``make()`` with ``module`` as the core; every pipeline must have ended after."""
    log = LogRecords()
    logger = logging.getLogger("fastbind")
    logger.addHandler(log)
    try:
        with active_core(module):
            result = run_loop(make())
    finally:
        logger.removeHandler(log)
    assert module.live_counts() == NOTHING_LIVE, module.IMPLEMENTATION
    return [*result, ("log", log.items)]


def assert_same(compiled: list[Any], twin: list[Any]) -> None:
    for i, (c, p) in enumerate(zip(compiled, twin)):
        assert c == p, f"entry {i} differs: compiled {c!r} / twin {p!r}"
    assert len(compiled) == len(twin)


# -- the property ---------------------------------------------------------------------------


@TWINS
@given(graph=graphs())
def test_both_cores_run_a_graph_of_workers_alike(graph: Graph) -> None:
    compiled = run_on(cores.compiled, lambda: scenario(graph))
    twin = run_on(cores.twin, lambda: scenario(graph))
    assert_same(compiled, twin)
