"""Durable Object namespaces: one live, single-threaded, stateful object per id.

A Worker declares ``add_worker(..., durable_objects={"ROOMS": Room})``; its env then holds
``env.ROOMS``, a DurableObjectNamespace. ``env.ROOMS.get(id)`` gives a stub whose
``fetch()`` and public methods run on the one live ``Room(state, env)`` of that id, built
with the declaring Worker's env. A call is a child invocation of its caller (one
subrequest of kind "durable_object", depth + 1, cancelled with the caller's pipeline),
made through the core's ``call_child``.

Decisions:

- Storage is SQLite (storage.py), one database per namespace: a file under
  ``Runtime(durable_dir=...)``, locked by the Runtime that opened it, or memory when no
  directory is given. Its calls run inline on the loop's thread. Measured on a 2-core
  CI machine (best of 7 runs of 5,000): a point read takes 3-5 us inline and at least
  29 us through ``asyncio.to_thread`` (100-150 us under load); a committed write 5 us
  in memory, 11-16 us to a WAL file with ``synchronous=NORMAL``, 1.9 ms with
  ``synchronous=FULL`` (an fsync per commit). Blocking the loop for microseconds costs
  less than the thread hop, and a storage operation that never suspends is what makes
  the input gate rule below cheap and exact. A large value blocks in proportion to its
  size (590 kB of JSON: about 4 ms). A call through a stub costs about 2 us with the
  compiled core (a binding's RPC: 0.6 us); an increment (get + put) about 11 us.
- Values are JSON data through orjson (or bytes on their own), not pickle: see storage.py.
- The input gate rule is in input_gate.py. In short: calls start in arrival order; a
  call runs alone until it awaits something other than its own storage;
  ``state.block_concurrency_while(fn)`` holds every other call until ``fn`` is done.
- An object with no call in progress for ``Runtime(durable_idle_s=...)`` seconds is
  dropped; the next call builds it again, and it reads its state back from storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..core.rpc_values import RESERVED_METHODS, reserved_message, unknown_message
from ..errors import FastbindError
from ..lifecycle import logger
from ..request import Request
from ..response import Response
from .alarms import AlarmInfo, AlarmScheduler, alarm_arguments, alarm_request, alarm_response
from .ids import DurableObjectId, IdMaker
from .input_gate import InputGate
from ..websocket import WebSocket
from .object_storage import ObjectStorage
from .sockets import ObjectSockets
from .sql import ObjectDatabases
from .storage import NamespaceDatabase
from .stub import SUBREQUEST_KIND, DurableObjectStub

if TYPE_CHECKING:
    from .extension import DurableObjects

__all__ = (
    "DurableObject",
    "DurableObjectId",
    "DurableObjectNamespace",
    "DurableObjectState",
    "DurableObjectStub",
    "BLOCK_CONCURRENCY_TIMEOUT_S",
    "SUBREQUEST_KIND",
)

T = TypeVar("T")

# As Cloudflare: a callback that holds the gate longer resets the object, which also
# ends a callback that deadlocked by waiting for a call to its own object.
BLOCK_CONCURRENCY_TIMEOUT_S = 30.0


class DurableObject:
    """Optional base class: ``Room(state, env)`` keeps ``self.state`` and ``self.env``.

    ``self.ctx`` is the same state, as Cloudflare's ``DurableObject`` names it. Public
    methods are callable over RPC through a stub; ``fetch`` serves ``stub.fetch(...)``.
    """

    state: DurableObjectState
    ctx: DurableObjectState
    env: Any

    def __init__(self, state: DurableObjectState, env: Any) -> None:
        self.state = self.ctx = state
        self.env = env

    async def fetch(self, request: Request) -> Response:
        raise TypeError(
            f"{type(self).__name__} does not implement fetch(); "
            "define `async def fetch(self, request)` to handle stub.fetch()"
        )


class DurableObjectState:
    """The ``state`` an object is built with: its ``id``, ``storage`` and input gate."""

    __slots__ = ("_live",)

    def __init__(self, live: _LiveObject) -> None:
        self._live = live

    @property
    def id(self) -> DurableObjectId:
        return self._live.id

    @property
    def storage(self) -> ObjectStorage:
        return self._live.storage

    def block_concurrency_while(
        self, callback: Callable[[], Awaitable[T]] | Awaitable[T]
    ) -> asyncio.Task[T]:
        """Start ``callback()`` (or the awaitable given) and admit no other call until it ends.

        Returns its task: await it for the result, or leave it running (in the
        constructor, to load state before the first call). Like any task a Worker
        starts, it belongs to the pipeline of the call that started it and is cancelled
        if that pipeline ends first. If it raises, is cancelled, or runs longer than
        BLOCK_CONCURRENCY_TIMEOUT_S, the object is reset: the calls waiting for it fail
        with FastbindError, and the next call builds the object again.
        """
        live = self._live
        awaitable: Any = callback
        if callable(callback) and not inspect.isawaitable(callback):
            awaitable = callback()
        if not inspect.isawaitable(awaitable):
            raise TypeError(
                "block_concurrency_while() takes an async function or an awaitable, "
                f"not {type(callback).__name__}"
            )
        # A task, so the gate is held from now even if nobody awaits it; spawned inside
        # a call, it belongs to that call's pipeline like any task a Worker starts.
        task: asyncio.Task[T] = asyncio.ensure_future(_time_limited(awaitable, live.label))
        live.gate.block(task)
        task.add_done_callback(live.blocker_done)
        return task

    def accept_websocket(self, ws: WebSocket, tags: Iterable[str] = ()) -> None:
        """Hold ``ws`` (the server end of a WebSocketPair): its events go to this object's
        ``websocket_message``, ``websocket_close`` and ``websocket_error`` (sockets.py)."""
        self._live.sockets.accept(ws, tags)

    def get_websockets(self, tag: str | None = None) -> list[WebSocket]:
        """The open sockets this object accepted, or those with ``tag``."""
        return self._live.sockets.get(tag)

    acceptWebSocket = accept_websocket  # noqa: N815 - Cloudflare's names
    getWebSockets = get_websockets  # noqa: N815

    def wait_until(self, awaitable: Awaitable[Any]) -> None:
        """Let ``awaitable`` run on after the current call, as ``ctx.wait_until``."""
        inv = self._live.namespace._core.current_invocation()
        if inv is None:
            raise FastbindError("state.wait_until() was called outside a call to the object")
        inv.wait_until(awaitable)

    # Cloudflare's names
    blockConcurrencyWhile = block_concurrency_while  # noqa: N815
    waitUntil = wait_until  # noqa: N815

    def __repr__(self) -> str:
        return f"<DurableObjectState {self._live.label}>"


async def _time_limited(awaitable: Awaitable[T], label: str) -> T:
    limit = asyncio.timeout(BLOCK_CONCURRENCY_TIMEOUT_S)
    try:
        async with limit:
            return await awaitable
    except TimeoutError:
        if limit.expired():
            raise FastbindError(
                f"block_concurrency_while() of Durable Object {label} did not finish within "
                f"{BLOCK_CONCURRENCY_TIMEOUT_S:g} s."
            ) from None
        raise


class _LiveObject:
    """One object while it is in memory: instance, gate, calls in progress, idle timer."""

    __slots__ = (
        "namespace", "id", "label", "loop", "storage", "gate", "instance", "calls", "last_used",
        "timer", "detached", "sockets",
    )

    def __init__(self, namespace: DurableObjectNamespace, oid: DurableObjectId) -> None:
        self.namespace = namespace
        # Its gate's futures, blocking tasks and idle timer all belong to this loop.
        self.loop = asyncio.get_running_loop()
        self.id = oid
        self.label = f"{namespace.class_name}:{oid}"
        self.storage = ObjectStorage(
            namespace._db, oid.raw, oid.name, namespace._sql, namespace._alarms,
            namespace._has_alarm,
        )
        self.gate = InputGate()
        self.instance: Any = None
        self.calls = 0  # admitted or waiting
        self.last_used = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.detached = False  # evicted, reset or closed: no longer the live one
        self.sockets = ObjectSockets(self)  # the WebSockets it holds keep it in memory

    def blocker_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            error: BaseException | None = asyncio.CancelledError(
                "block_concurrency_while() callback was cancelled"
            )
        else:
            error = task.exception()  # marks it retrieved: the waiting calls report it
        if error is not None and not self.detached:
            self.namespace._reset(self, error)
        self.gate.unblock(task)
        if not self.calls:
            self.namespace._arm_idle_timer(self)


class DurableObjectNamespace:
    """``env.ROOMS``: makes ids and stubs for the objects of one Durable Object class."""

    __slots__ = (
        "_registry", "_core", "_worker", "_binding", "_class", "_ids", "_worker_handle", "_db",
        "_live", "_rpc_names", "_sql", "_alarms", "_has_alarm", "python_workers",
    )

    def __init__(
        self, registry: DurableObjects, worker: str, binding: str, cls: type, worker_handle: Any
    ) -> None:
        self._registry = registry
        self._core = registry.runtime.core
        self._worker = worker
        self._binding = binding
        self._class = cls
        self._ids = IdMaker(f"{worker}/{cls.__name__}", self.label)
        self._worker_handle = worker_handle  # its env is the objects' env
        self._open_storage(registry.database_path(worker, cls.__name__), registry.alarm_retry_s)
        self._has_alarm: bool = callable(getattr(cls, "alarm", None))
        # A class of the workers module: its RPC values follow Python Workers' rules.
        self.python_workers: bool = getattr(cls, "__fastbind_rpc_rules__", None) == "python_workers"
        self._live: dict[bytes, _LiveObject] = {}
        self._rpc_names: dict[str, bool] = {}

    @property
    def label(self) -> str:
        return f'{self._binding} (class {self._class.__name__} of Worker "{self._worker}")'

    @property
    def class_name(self) -> str:
        return self._class.__name__

    @property
    def live_count(self) -> int:
        """How many objects of this namespace are in memory now."""
        return len(self._live)

    @property
    def database_path(self) -> Path | None:
        """The namespace's SQLite file, or None when its storage is in memory."""
        return self._db.path

    @property
    def key(self) -> str:
        """"<worker>/<class name>": what ids are tied to, the same in every process."""
        return self._ids.namespace

    def _open_storage(self, path: Path | None, retry_s: float) -> None:
        # Handles only: the files are opened at first use.
        self._db = NamespaceDatabase(path, self.label)
        self._sql = ObjectDatabases(self._db.path, self.label)
        self._alarms = AlarmScheduler(self, self._db)
        self._alarms.retry_s = retry_s

    # --- ids and stubs -----------------------------------------------------------

    def id_from_name(self, name: str) -> DurableObjectId:
        """The id of the object called ``name``: always the same for the same name."""
        return self._ids.from_name(name)

    def new_unique_id(self) -> DurableObjectId:
        """The id of a new object that no other id names."""
        return self._ids.unique()

    def id_from_string(self, value: str) -> DurableObjectId:
        """The id whose ``str()`` is ``value``; ValueError if it is not one of this namespace."""
        return self._ids.from_string(value)

    def get(self, id: DurableObjectId) -> DurableObjectStub:
        """A stub for the object ``id``; making it starts nothing."""
        return DurableObjectStub(self, self._ids.check(id, self._binding))

    def get_by_name(self, name: str) -> DurableObjectStub:
        """``get(id_from_name(name))``."""
        return self.get(self.id_from_name(name))

    # Cloudflare's names
    idFromName = id_from_name  # noqa: N815
    idFromString = id_from_string  # noqa: N815
    newUniqueId = new_unique_id  # noqa: N815
    getByName = get_by_name  # noqa: N815

    def arm_alarms(self) -> None:
        """Arm the alarms its storage holds, once, on the running loop."""
        if not self._alarms.loaded:
            self._alarms.load()

    # --- calls -------------------------------------------------------------------

    def _check_rpc(self, name: str) -> None:
        if name in RESERVED_METHODS or name.startswith("_"):
            raise TypeError(reserved_message(name))
        known = self._rpc_names.get(name)
        if known is None:
            attr = getattr(self._class, name, None)
            known = self._rpc_names[name] = callable(attr) and not isinstance(attr, type)
        if not known:
            raise TypeError(unknown_message(name))

    def _forwarder(self, oid: DurableObjectId) -> Callable[..., Awaitable[Any]] | None:
        """None when ``oid`` lives in this process; else what runs its calls where it lives
        (the router of ``DurableObjects``, set when the Runtime is one of several processes)."""
        router = self._registry.router
        return None if router is None else router.route(self, oid)

    async def serve_call(
        self, ctx: Any, oid: DurableObjectId, method: str | None, args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
    ) -> Any:
        """Run one call on the live object ``oid`` of this process (a forwarded call,
        as the top-level invocation ``ctx``): ``fetch`` when ``method`` is None."""
        if method is not None:
            self._check_rpc(method)
        return await self._serve(ctx, oid, method, args, kwargs)

    def _activate(self, oid: DurableObjectId) -> _LiveObject:
        """Build the object ``oid`` (the caller found no live one on the running loop)."""
        stale = self._live.get(oid.raw)
        if stale is not None:
            # The Runtime is driven by another loop now (tests do this): the old loop's
            # futures and timers can never fire here, so the object is built afresh.
            self._detach(stale)
        live = self._live[oid.raw] = _LiveObject(self, oid)
        try:
            live.instance = self._class(DurableObjectState(live), self._worker_handle.env)
        except BaseException:
            self._detach(live)
            raise
        return live

    async def _serve(
        self, ctx: Any, oid: DurableObjectId, method: str | None, args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
    ) -> Any:
        """The body of one call, run by call_child as a child invocation of the caller."""
        if not self._alarms.loaded:
            self._alarms.load()
        live = self._live.get(oid.raw)
        if live is None or live.loop is not asyncio.get_running_loop():
            live = self._activate(oid)
        async with self.admitted(live):
            if method is None:
                handler = getattr(live.instance, "fetch", None)
                if handler is None:
                    raise TypeError(
                        f"Durable Object class {self._class.__name__} does not implement "
                        "fetch(); define `async def fetch(self, request)`"
                    )
            else:
                handler = getattr(live.instance, method)
                if method == "alarm":  # the scheduler's call (a reserved name over RPC)
                    args = alarm_arguments(handler, *args)
            result = handler(*args, **kwargs) if kwargs else handler(*args)
            if inspect.isawaitable(result):
                result = await result
            return result

    @contextlib.asynccontextmanager
    async def admitted(self, live: _LiveObject) -> AsyncIterator[None]:
        """Run the body as one call of ``live``: admitted by its input gate, counted."""
        live.calls += 1
        try:
            gate = live.gate
            waiter = gate.admit()
            if waiter is not None:
                if gate.is_blocked_by(asyncio.current_task()):
                    waiter.cancel()
                    raise FastbindError(
                        f"Durable Object {live.label} was called from its own "
                        "block_concurrency_while() callback, which would wait for the call "
                        "while the call waits for it."
                    )
                await waiter
            yield
        finally:
            live.calls -= 1
            if not live.calls and not len(live.sockets):
                self._arm_idle_timer(live)

    async def _run_alarm(self, raw: bytes, name: str | None, info: AlarmInfo) -> BaseException | None:
        """Run the object's ``alarm()`` as a top-level invocation; the exception it raised, if any."""
        oid = self._ids.of_raw(raw, name)
        error: BaseException | None = None

        async def alarm(request: Request, env: Any, ctx: Any) -> Response:
            nonlocal error
            try:
                await self._serve(ctx, oid, "alarm", (info,), None)
            except Exception as exc:
                error = exc
                logger.warning("Alarm of Durable Object %s:%s raised", self.class_name, oid,
                               exc_info=exc)
            return alarm_response(error)

        handle = self._core.WorkerHandle(f"{self.class_name}:{oid}", alarm)
        handle.env = self._worker_handle.env
        response = await self._registry.runtime.entry_for(handle)(alarm_request())
        await response.aclose()
        return error

    # --- eviction, reset, close --------------------------------------------------

    def _arm_idle_timer(self, live: _LiveObject) -> None:
        idle_s = self._registry.idle_s
        if idle_s is None or live.detached:
            return
        loop = live.loop
        live.last_used = loop.time()
        # One timer per object: when it fires early it arms itself for the rest.
        if live.timer is None:
            live.timer = loop.call_later(idle_s, self._expire, live, idle_s)

    def _expire(self, live: _LiveObject, idle_s: float) -> None:
        live.timer = None
        if live.detached or live.calls or len(live.sockets) or not live.gate.idle:
            return  # busy: the end of its last call (or socket) arms the timer again
        loop = live.loop
        remaining = live.last_used + idle_s - loop.time()
        if remaining > 0:
            live.timer = loop.call_later(remaining, self._expire, live, idle_s)
        else:
            self._detach(live)

    def _detach(self, live: _LiveObject) -> None:
        live.detached = True
        if self._live.get(live.id.raw) is live:
            del self._live[live.id.raw]
        if live.timer is not None:
            live.timer.cancel()
            live.timer = None

    def _reset(self, live: _LiveObject, error: BaseException) -> None:
        self._detach(live)
        logger.warning(
            "Durable Object %s was reset: its block_concurrency_while() callback raised %r",
            live.label, error,
        )

        def reset_error() -> FastbindError:
            exc = FastbindError(
                f"Durable Object {live.label} was reset: its block_concurrency_while() "
                f"callback raised {error!r}."
            )
            exc.__cause__ = error
            return exc

        live.gate.fail_waiting(reset_error)

    async def _close(self) -> None:
        lives = list(self._live.values())
        blockers = []
        for live in lives:
            self._detach(live)
            live.gate.fail_waiting(lambda: FastbindError(f"The Runtime of {self!r} was closed."))
            blockers += [t for t in live.gate.blockers() if not t.done()]
        loop = asyncio.get_running_loop()
        for task in blockers:
            task.cancel()
        await asyncio.gather(*[t for t in blockers if t.get_loop() is loop], return_exceptions=True)
        await self._alarms.close()
        self._db.close()
        self._sql.close()
        # Fresh handles for later use of the Runtime; objects still holding the old ones
        # get a clear error instead of an empty in-memory database.
        self._open_storage(self._db.path, self._alarms.retry_s)

    def _move_storage(self, path: Path | None) -> None:
        """Keep storage at ``path`` from now on (a process's shard: cluster/shards.py);
        only before any object, database or alarm of the namespace was used."""
        if self._live or self._alarms.loaded:
            raise FastbindError(f"The storage of {self!r} cannot move: it is in use.")
        self._db.close()
        self._sql.close()
        self._open_storage(path, self._alarms.retry_s)

    def _evict_unless(self, keep: Callable[[DurableObjectId], bool]) -> int:
        """Let go of the live objects ``keep`` refuses (their owner is elsewhere now):
        calls in progress finish on them, the next calls go to the owner. Returns how many."""
        gone = [live for live in self._live.values() if not keep(live.id)]
        for live in gone:
            self._detach(live)
        return len(gone)

    def __repr__(self) -> str:
        return f"<DurableObjectNamespace {self.label}>"
