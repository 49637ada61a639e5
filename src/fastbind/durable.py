"""Durable Object namespaces: one live, single-threaded, stateful object per id (issue 9).

A Worker declares ``add_worker(..., durable_objects={"ROOMS": Room})``; its env then holds
``env.ROOMS``, a DurableObjectNamespace. ``env.ROOMS.get(id)`` gives a stub whose
``fetch()`` and public methods run on the one live ``Room(state, env)`` of that id, built
with the declaring Worker's env. A call is a child invocation of its caller (one
subrequest of kind "durable_object", depth + 1, cancelled with the caller's pipeline),
made through the core's ``call_child``.

Decisions:

- Storage is SQLite (storage.py), one database per namespace: a file under
  ``Runtime(durable_dir=...)``, or memory when no directory is given. Its calls run
  inline on the loop's thread. Measured on this project's CI machine: a point read takes
  about 4 us inline and 100 to 150 us through ``run_in_executor``/``to_thread``; a
  committed write about 12 us in memory, 37 us to a WAL file with
  ``synchronous=NORMAL`` and 1.9 ms with ``synchronous=FULL`` (an fsync per commit).
  Blocking the loop for microseconds costs less than the thread hop, and a storage
  operation that never suspends is what makes the input gate rule below cheap and exact.
  A large value blocks in proportion to its size (a 590 kB value: about 4 ms).
- Values are JSON data through orjson (or bytes on their own), not pickle: see storage.py.
- The input gate rule is in input_gate.py. In short: calls start in arrival order; a
  call runs alone until it awaits something other than its own storage;
  ``state.block_concurrency_while(fn)`` holds every other call until ``fn`` is done.
- An object with no call in progress for ``Runtime(durable_idle_s=...)`` seconds is
  dropped; the next call builds it again, and it reads its state back from storage.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import inspect
import math
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from .errors import ConfigError, FastbindError
from .lifecycle import logger
from .request import Request
from .rpc_values import RESERVED_METHODS, isolate, reserved_message, unknown_message
from .input_gate import InputGate
from .storage import DurableObjectStorage, NamespaceDatabase

if TYPE_CHECKING:
    from .response import Response
    from .runtime import Runtime

__all__ = (
    "DurableObject",
    "DurableObjectId",
    "DurableObjectNamespace",
    "DurableObjectState",
    "DurableObjectStub",
    "DurableObjects",
    "BLOCK_CONCURRENCY_TIMEOUT_S",
    "DEFAULT_IDLE_S",
    "SUBREQUEST_KIND",
    "check_declarations",
    "namespace_specs_from_config",
)

T = TypeVar("T")

SUBREQUEST_KIND = "durable_object"  # the ledger kind of every call to an object
DEFAULT_IDLE_S = 60.0
# As Cloudflare: a callback that holds the gate longer resets the object, which also
# ends a callback that deadlocked by waiting for a call to its own object.
BLOCK_CONCURRENCY_TIMEOUT_S = 30.0

_ID_BODY = 24  # random or name-derived bytes of an id; 8 more tag it with its namespace
_ID_HEX = 2 * (_ID_BODY + 8)


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


class DurableObjectId:
    """Names one object of one namespace; ``str(id)`` is 64 hex digits.

    Ids from ``id_from_name`` carry that ``name``; equal ids name the same object.
    """

    __slots__ = ("_raw", "_namespace", "name")

    def __init__(self, raw: bytes, namespace: str, name: str | None = None) -> None:
        self._raw = raw
        self._namespace = namespace
        self.name = name

    def __str__(self) -> str:
        return self._raw.hex()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DurableObjectId):
            return NotImplemented
        return self._raw == other._raw and self._namespace == other._namespace

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        named = f" name={self.name!r}" if self.name is not None else ""
        return f"<DurableObjectId {self._raw.hex()}{named}>"


class DurableObjectState:
    """The ``state`` an object is built with: its ``id``, ``storage`` and input gate."""

    __slots__ = ("_live",)

    def __init__(self, live: _LiveObject) -> None:
        self._live = live

    @property
    def id(self) -> DurableObjectId:
        return self._live.id

    @property
    def storage(self) -> DurableObjectStorage:
        return self._live.storage

    def block_concurrency_while(
        self, callback: Callable[[], Awaitable[T]] | Awaitable[T]
    ) -> asyncio.Task[T]:
        """Start ``callback()`` (or the awaitable given) and admit no other call until it ends.

        Returns its task: await it for the result, or leave it running (in the
        constructor, to load state before the first call). If it raises, or runs longer
        than BLOCK_CONCURRENCY_TIMEOUT_S, the object is reset: the calls waiting for it
        fail with FastbindError, and the next call builds the object again.
        """
        live = self._live
        awaitable = callback() if callable(callback) and not inspect.isawaitable(callback) else callback
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

    def wait_until(self, awaitable: Awaitable[Any]) -> None:
        """Let ``awaitable`` run on after the current call, as ``ctx.wait_until``."""
        inv = self._live.namespace._core.current_invocation()
        if inv is None:
            raise FastbindError("state.wait_until() was called outside a call to the object")
        inv.wait_until(awaitable)

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
        "namespace", "id", "label", "storage", "gate", "instance", "calls", "last_used",
        "timer", "detached",
    )

    def __init__(self, namespace: DurableObjectNamespace, oid: DurableObjectId) -> None:
        self.namespace = namespace
        self.id = oid
        self.label = f"{namespace.class_name}:{oid}"
        self.storage = DurableObjectStorage(namespace._db, oid._raw)
        self.gate = InputGate()
        self.instance: Any = None
        self.calls = 0  # admitted or waiting
        self.last_used = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.detached = False  # evicted, reset or closed: no longer the live one

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
        "_registry", "_core", "_worker", "_binding", "_class", "_name", "_key", "_worker_handle",
        "_db", "_live", "_rpc_names",
    )

    def __init__(
        self, registry: DurableObjects, worker: str, binding: str, cls: type, worker_handle: Any
    ) -> None:
        self._registry = registry
        self._core = registry.runtime._core
        self._worker = worker
        self._binding = binding
        self._class = cls
        self._name = f"{worker}/{cls.__name__}"  # what ids are derived from and tagged with
        self._key = self._name.encode()
        self._worker_handle = worker_handle  # its env is the objects' env
        self._db = NamespaceDatabase(registry.database_path(worker, cls.__name__), self.label)
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

    # --- ids and stubs -----------------------------------------------------------

    def _make_id(self, body: bytes, name: str | None = None) -> DurableObjectId:
        tag = hashlib.sha256(b"fastbind id tag\0" + self._key + b"\0" + body).digest()[:8]
        return DurableObjectId(body + tag, self._name, name)

    def id_from_name(self, name: str) -> DurableObjectId:
        """The id of the object called ``name``: always the same for the same name."""
        if not isinstance(name, str):
            raise TypeError(f"id_from_name() takes a str, not {type(name).__name__}")
        body = hashlib.sha256(b"fastbind id name\0" + self._key + b"\0" + name.encode("utf-8", "surrogatepass")).digest()
        return self._make_id(body[:_ID_BODY], name)

    def new_unique_id(self) -> DurableObjectId:
        """The id of a new object that no other id names."""
        return self._make_id(secrets.token_bytes(_ID_BODY))

    def id_from_string(self, value: str) -> DurableObjectId:
        """The id whose ``str()`` is ``value``; ValueError if it is not one of this namespace."""
        if not isinstance(value, str):
            raise TypeError(f"id_from_string() takes a str, not {type(value).__name__}")
        try:
            raw = bytes.fromhex(value) if len(value) == _ID_HEX else b""
        except ValueError:
            raw = b""
        if not raw:
            raise ValueError(
                f"Invalid Durable Object id {value!r}: an id is {_ID_HEX} hexadecimal digits, "
                "as str(id) gives."
            )
        oid = self._make_id(raw[:_ID_BODY])
        if oid._raw != raw:
            raise ValueError(
                f'Durable Object id "{value}" is not an id of namespace {self.label}: it was '
                "made by another namespace, or mistyped."
            )
        return oid

    def get(self, id: DurableObjectId) -> DurableObjectStub:
        """A stub for the object ``id``; building it starts nothing."""
        if not isinstance(id, DurableObjectId):
            raise TypeError(
                f"{self._binding}.get() takes a DurableObjectId, not {type(id).__name__}; make "
                "one with id_from_name(), id_from_string() or new_unique_id()"
            )
        if id._namespace != self._name:
            raise ValueError(
                f'{self._binding}.get() was given id "{id}" of namespace {id._namespace}, '
                f"not of {self.label}"
            )
        return DurableObjectStub(self, id)

    def get_by_name(self, name: str) -> DurableObjectStub:
        """``get(id_from_name(name))``."""
        return self.get(self.id_from_name(name))

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

    def _activate(self, oid: DurableObjectId) -> _LiveObject:
        """The live object of ``oid``, built now if it is not in memory."""
        live = self._live.get(oid._raw)
        if live is not None:
            return live
        self._registry.opened()
        live = self._live[oid._raw] = _LiveObject(self, oid)
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
        live = self._activate(oid)
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
            if method is None:
                handler = getattr(live.instance, "fetch", None)
                if handler is None:
                    raise TypeError(
                        f"Durable Object class {self._class.__name__} does not implement "
                        "fetch(); define `async def fetch(self, request)`"
                    )
            else:
                handler = getattr(live.instance, method)
            result = handler(*args, **kwargs) if kwargs else handler(*args)
            if inspect.isawaitable(result):
                result = await result
            return result
        finally:
            live.calls -= 1
            if not live.calls:
                self._arm_idle_timer(live)

    # --- eviction, reset, close --------------------------------------------------

    def _arm_idle_timer(self, live: _LiveObject) -> None:
        idle_s = self._registry.idle_s
        if idle_s is None or live.detached:
            return
        loop = asyncio.get_running_loop()
        live.last_used = loop.time()
        # One timer per object: when it fires early it arms itself for the rest.
        if live.timer is None:
            live.timer = loop.call_later(idle_s, self._expire, live, idle_s)

    def _expire(self, live: _LiveObject, idle_s: float) -> None:
        live.timer = None
        if live.detached or live.calls or not live.gate.idle:
            return  # busy: the end of its last call arms the timer again
        loop = asyncio.get_running_loop()
        remaining = live.last_used + idle_s - loop.time()
        if remaining > 0:
            live.timer = loop.call_later(remaining, self._expire, live, idle_s)
        else:
            self._detach(live)

    def _detach(self, live: _LiveObject) -> None:
        live.detached = True
        if self._live.get(live.id._raw) is live:
            del self._live[live.id._raw]
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
            live.gate.fail_waiting(
                lambda: FastbindError(f"The Runtime of Durable Object namespace {self.label} was closed.")
            )
            blockers += [t for t in live.gate.blockers() if not t.done()]
        loop = asyncio.get_running_loop()
        for task in blockers:
            task.cancel()
        await asyncio.gather(*(t for t in blockers if t.get_loop() is loop), return_exceptions=True)
        self._db.close()
        # A fresh handle for later use of the Runtime; objects still holding the old one
        # get a clear error instead of an empty in-memory database.
        self._db = NamespaceDatabase(self._db.path, self.label)

    def __repr__(self) -> str:
        return f"<DurableObjectNamespace {self.label}>"


class DurableObjectStub:
    """``env.ROOMS.get(id)``: ``fetch()`` and the public methods of the object ``id``."""

    __slots__ = ("_namespace", "_id", "_handle", "__dict__")

    def __init__(self, namespace: DurableObjectNamespace, oid: DurableObjectId) -> None:
        self._namespace = namespace
        self._id = oid
        self._handle: Any = None

    @property
    def id(self) -> DurableObjectId:
        return self._id

    @property
    def name(self) -> str | None:
        return self._id.name

    def _target(self) -> Any:
        """The core's handle for the object: its ledger name and its env."""
        handle = self._handle
        if handle is None:
            ns = self._namespace
            handle = self._handle = ns._core.WorkerHandle.for_target(
                f"{ns.class_name}:{self._id}", ns._worker_handle.env
            )
        return handle

    def fetch(
        self, input: str | Request, *, method: str | None = None, headers: Any = None,
        body: Any = None,
    ) -> Awaitable[Response]:
        """Run the object's ``fetch`` with a Request built as a binding's ``fetch`` builds it."""
        if type(input) is Request and method is None and headers is None and body is None:
            request = isolate(input)  # handed over: same body object, the caller's is used
        else:
            request = Request(input, method=method, headers=headers, body=body)
        ns = self._namespace
        return ns._core.call_child(  # type: ignore[no-any-return]
            self._target(), SUBREQUEST_KIND, ns._serve, (self._id, None, (request,), None), None, True
        )

    def __getattr__(self, name: str) -> _StubMethod:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        method = self.__dict__[name] = _StubMethod(self, name)
        return method

    def __repr__(self) -> str:
        return f"<DurableObjectStub {self._namespace.class_name}:{self._id}>"


class _StubMethod:
    """``stub.name``: calling it runs method ``name`` of the object, arguments isolated."""

    __slots__ = ("_stub", "_name")

    def __init__(self, stub: DurableObjectStub, name: str) -> None:
        self._stub = stub
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        stub = self._stub
        ns = stub._namespace
        ns._check_rpc(self._name)
        call_args = (stub._id, self._name, isolate(args),
                     {k: isolate(v) for k, v in kwargs.items()} if kwargs else None)
        return ns._core.call_child(  # type: ignore[no-any-return]
            stub._target(), SUBREQUEST_KIND, ns._serve, call_args
        )

    def __repr__(self) -> str:
        return f"<DurableObjectStub method {self._name}>"


class DurableObjects:
    """A Runtime's Durable Object namespaces, their storage directory and idle time."""

    __slots__ = ("runtime", "directory", "idle_s", "_namespaces", "_closer_added")

    def __init__(self, runtime: Runtime, directory: str | os.PathLike[str] | None, idle_s: float | None) -> None:
        if directory is not None and not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"Runtime durable_dir must be a path or None, not {type(directory).__name__}")
        if idle_s is not None and (
            isinstance(idle_s, bool) or not isinstance(idle_s, (int, float))
            or not 0 < idle_s < math.inf
        ):
            raise ValueError(f"Runtime durable_idle_s must be a positive number of seconds or None, not {idle_s!r}")
        self.runtime = runtime
        self.directory = None if directory is None else Path(directory)
        self.idle_s = None if idle_s is None else float(idle_s)
        self._namespaces: dict[tuple[str, str], DurableObjectNamespace] = {}
        self._closer_added = False

    def database_path(self, worker: str, class_name: str) -> Path | None:
        if self.directory is None:
            return None
        # Quoted so that any Worker name makes one plain file name, "." included so
        # that ("a.b", "C") and ("a", "b.C") cannot meet.
        parts = (quote(part, safe="").replace(".", "%2E") for part in (worker, class_name))
        return self.directory / (".".join(parts) + ".sqlite3")

    def namespace(self, worker: str, binding: str, cls: type, worker_handle: Any) -> DurableObjectNamespace:
        """The namespace of ``cls`` in Worker ``worker``, the same one at every validate()."""
        key = (worker, cls.__name__)
        ns = self._namespaces.get(key)
        if ns is None:
            ns = self._namespaces[key] = DurableObjectNamespace(self, worker, binding, cls, worker_handle)
        elif ns._class is not cls:
            raise ConfigError(
                f'Worker "{worker}" declares two Durable Object classes named "{cls.__name__}" '
                "(they would share ids and storage); give them different names."
            )
        return ns

    def opened(self) -> None:
        """Something is live: make sure Runtime.aclose() will close it."""
        if not self._closer_added:
            self._closer_added = True
            self.runtime.add_closer(self.aclose)

    async def aclose(self) -> None:
        """Drop every live object, cancel its timers and close the databases."""
        self._closer_added = False
        for ns in self._namespaces.values():
            await ns._close()


def check_declarations(worker: str, durable_objects: Mapping[str, Any] | None) -> dict[str, type]:
    """``add_worker(durable_objects=...)`` checked: binding names to classes."""
    if durable_objects is None:
        return {}
    if not isinstance(durable_objects, Mapping):
        raise ConfigError(
            f'Worker "{worker}" durable_objects must map binding names to classes, '
            f"not {type(durable_objects).__name__}."
        )
    declared = {}
    for binding, cls in durable_objects.items():
        if not isinstance(binding, str) or not binding:
            raise ConfigError(f'Worker "{worker}" has a Durable Object binding with an invalid name {binding!r}.')
        if not isinstance(cls, type):
            raise ConfigError(
                f'Worker "{worker}" Durable Object binding "{binding}" must be a class, '
                f"built as cls(state, env), not {cls!r}."
            )
        declared[binding] = cls
    return declared


def namespace_specs_from_config(
    worker_name: str, entries: Any, module: ModuleType | str, *, source: str | None = None
) -> dict[str, type]:
    """The ``durable_objects`` argument of ``add_worker`` for a Worker of a config file.

    ``entries`` is the Worker's ``durable_objects = [{ binding = "ROOMS", class_name =
    "Room" }]``; each class is looked up in ``module``, the module of the Worker's
    ``main`` (or its import name). Errors are ConfigErrors that name the Worker, the
    binding and, when ``source`` (the file) is given, the file.
    """
    where = f"{source}: " if source else ""
    worker = f'{where}Worker "{worker_name}"'
    shape = '[{ binding = "ROOMS", class_name = "Room" }]'
    if not isinstance(entries, list):
        raise ConfigError(f"{worker} durable_objects must be a list like {shape}, not {type(entries).__name__}.")
    if isinstance(module, str):
        try:
            module = importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f'{worker} Durable Object classes live in module "{module}", which cannot be imported: {exc}') from exc
    declared: dict[str, type] = {}
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise ConfigError(f"{worker} durable_objects entry {number} must be a table like {shape}.")
        if "script_name" in entry:
            raise ConfigError(
                f"{worker} durable_objects entry {number} names script_name; a namespace is "
                "declared by the Worker whose module defines the class."
            )
        unknown = sorted(set(entry) - {"binding", "class_name"})
        if unknown:
            raise ConfigError(
                f"{worker} durable_objects entry {number} has unknown keys {', '.join(unknown)}; "
                "expected binding and class_name."
            )
        binding, class_name = entry.get("binding"), entry.get("class_name")
        if not isinstance(binding, str) or not binding:
            raise ConfigError(f'{worker} durable_objects entry {number} needs a binding name (a non-empty string).')
        if not isinstance(class_name, str) or not class_name:
            raise ConfigError(f'{worker} Durable Object binding "{binding}" needs a class_name (a non-empty string).')
        if binding in declared:
            raise ConfigError(f'{worker} declares the Durable Object binding "{binding}" twice.')
        cls = getattr(module, class_name, None)
        if not isinstance(cls, type):
            raise ConfigError(
                f'{worker} Durable Object binding "{binding}" refers to class "{class_name}", '
                f'but module "{module.__name__}" has no such class.'
            )
        declared[binding] = cls
    return declared
