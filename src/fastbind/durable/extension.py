"""Durable Objects in a Runtime: the extension that declares, builds and closes its namespaces."""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from ..errors import ConfigError, FastbindError
from ..extension import Extension, register
from .alarms import ALARM_RETRY_S
from .declarations import check_declarations
from .namespace import DurableObjectNamespace

if TYPE_CHECKING:
    from ..bindings import WorkerSpec
    from ..runtime import Runtime
    from .ids import DurableObjectId

__all__ = ("DurableObjects", "ObjectRouter")


class ObjectRouter(Protocol):
    """Decides where an object's calls run, for a Runtime that is one of several processes."""

    def route(self, namespace: DurableObjectNamespace, oid: DurableObjectId) -> Callable[..., Awaitable[Any]] | None:
        """None when ``oid`` lives in this process; else a coroutine function taking
        ``(ctx, oid, method, args, kwargs)`` as ``DurableObjectNamespace._serve`` does,
        that runs the call where the object lives."""


@register
class DurableObjects(Extension):
    """A Runtime's Durable Object namespaces, their storage directory and idle time.

    ``Runtime(durable_dir=...)``: one SQLite file per namespace there (in memory
    without one); ``durable_idle_s``: objects idle that long leave memory (None: never).
    """

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        directory = runtime.options.durable_dir
        idle_s = runtime.options.durable_idle_s
        if directory is not None and not isinstance(directory, (str, os.PathLike)):
            raise TypeError(
                f"Runtime durable_dir must be a path or None, not {type(directory).__name__}"
            )
        if idle_s is not None and (
            isinstance(idle_s, bool) or not isinstance(idle_s, (int, float))
            or not 0 < idle_s < math.inf
        ):
            raise ValueError(
                "Runtime durable_idle_s must be a positive number of seconds or None, "
                f"not {idle_s!r}"
            )
        self.directory = None if directory is None else Path(directory)
        self.idle_s = None if idle_s is None else float(idle_s)
        # The first retry's delay of a failed alarm (then doubled each time), as Cloudflare's.
        self.alarm_retry_s = ALARM_RETRY_S
        self._namespaces: dict[tuple[str, str], DurableObjectNamespace] = {}
        # Where each object lives, when the Runtime is one of several processes (the
        # cluster package sets it): None runs every object here.
        self.router: ObjectRouter | None = None

    @property
    def namespaces(self) -> tuple[DurableObjectNamespace, ...]:
        return tuple(self._namespaces.values())

    def find(self, key: str) -> DurableObjectNamespace | None:
        """The namespace whose ``key`` is "<worker>/<class name>", or None."""
        for ns in self._namespaces.values():
            if ns.key == key:
                return ns
        return None

    def move_storage(self, directory: str | os.PathLike[str] | None) -> None:
        """Keep every namespace's storage under ``directory`` (None: in memory) from now
        on: a process's shard of the storage, set before any object is used."""
        self.directory = None if directory is None else Path(directory)
        for (worker, class_name), ns in self._namespaces.items():
            ns._move_storage(self.database_path(worker, class_name))

    def worker_added(self, spec: WorkerSpec) -> None:
        declared = check_declarations(spec.name, spec.options.get("durable_objects"))
        for binding in declared:
            if binding in spec.services or binding in spec.vars:
                raise ConfigError(
                    f'Worker "{spec.name}" defines "{binding}" both as a Durable Object namespace '
                    "and as a binding or var."
                )
        spec.options["durable_objects"] = declared

    def env_values(self, spec: WorkerSpec, handle: Any) -> dict[str, DurableObjectNamespace]:
        declared = spec.options.get("durable_objects") or {}
        return {
            binding: self.namespace(spec.name, binding, cls, handle)
            for binding, cls in declared.items()
        }

    def database_path(self, worker: str, class_name: str) -> Path | None:
        if self.directory is None:
            return None
        # Quoted so that any Worker name makes one plain file name, "." included so
        # that ("a.b", "C") and ("a", "b.C") cannot meet.
        parts = (quote(part, safe="").replace(".", "%2E") for part in (worker, class_name))
        return self.directory / (".".join(parts) + ".sqlite3")

    def namespace(
        self, worker: str, binding: str, cls: type, worker_handle: Any
    ) -> DurableObjectNamespace:
        """The namespace of ``cls`` in Worker ``worker``, the same one at every validate()."""
        key = (worker, cls.__name__)
        ns = self._namespaces.get(key)
        if ns is None:
            ns = DurableObjectNamespace(self, worker, binding, cls, worker_handle)
            self._namespaces[key] = ns
        elif ns._class is not cls:
            raise ConfigError(
                f'Worker "{worker}" declares two Durable Object classes named "{cls.__name__}" '
                "(they would share ids and storage); give them different names."
            )
        return ns

    def validate(self) -> None:
        """Arm the alarms the namespaces' storage holds, when an event loop runs (else at
        the first call to one of their objects)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        for ns in self._namespaces.values():
            path = ns.database_path
            if path is None or not path.exists():
                continue  # nothing stored yet: no alarm to arm
            try:
                ns.arm_alarms()
            except FastbindError:
                pass  # its storage cannot be opened: the first call to an object says why

    async def aclose(self) -> None:
        """Drop every live object, cancel its timers and close the databases."""
        for ns in self._namespaces.values():
            await ns._close()
