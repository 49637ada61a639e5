"""Durable Object stubs: what ``env.ROOMS.get(id)`` gives a caller."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from ..core.python_workers_values import check_python_workers_value
from ..core.rpc_values import isolate
from ..request import Request

if TYPE_CHECKING:
    from ..body import BodyInit
    from ..headers import HeadersInit
    from ..response import Response
    from .ids import DurableObjectId
    from .namespace import DurableObjectNamespace

__all__ = ("DurableObjectStub", "SUBREQUEST_KIND")

SUBREQUEST_KIND = "durable_object"  # the ledger kind of every call to an object


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
                f"{ns.class_name}:{self._id}", ns._worker_handle.env, ns.python_workers
            )
        return handle

    def fetch(
        self,
        input: str | Request,
        *,
        method: str | None = None,
        headers: HeadersInit = None,
        body: BodyInit = None,
    ) -> Awaitable[Response]:
        """Run the object's ``fetch`` with a Request built as a binding's ``fetch`` builds it."""
        if type(input) is Request and method is None and headers is None and body is None:
            request = isolate(input)  # handed over: same body object, the caller's is used
        else:
            request = Request(input, method=method, headers=headers, body=body)
        ns = self._namespace
        call_args = (self._id, None, (request,), None)
        return ns._core.call_child(  # type: ignore[no-any-return]
            self._target(), SUBREQUEST_KIND, ns._forwarder(self._id) or ns._serve, call_args, None, True
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
        caller = ns._core.current_invocation()
        if caller is not None and caller.python_workers:
            for value in (*args, *kwargs.values()):
                check_python_workers_value(value)
        function = ns._forwarder(stub._id)
        if function is None:
            function = ns._serve
            kw = {k: isolate(v) for k, v in kwargs.items()} if kwargs else None
            call_args = (stub._id, self._name, isolate(args) if args else args, kw)
        else:  # another process: the arguments are copied as they are encoded
            call_args = (stub._id, self._name, args, kwargs or None)
        return ns._core.call_child(  # type: ignore[no-any-return]
            stub._target(), SUBREQUEST_KIND, function, call_args
        )

    def __repr__(self) -> str:
        return f"<DurableObjectStub method {self._name}>"
