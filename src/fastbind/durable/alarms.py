"""Durable Object alarms: ``storage.set_alarm(when)``, ``get_alarm()``, ``delete_alarm()`` and the ``alarm()`` handler.

As Cloudflare's (its Alarms API documentation):

- An object has at most one alarm; setting it again replaces the time. ``when`` is
  milliseconds since the epoch, or a ``datetime`` (naive ones are local time).
- The alarm is kept in the namespace's database, so it fires even if the object was
  evicted meanwhile, or the process restarted: a Runtime arms the alarms it finds when
  its bindings are resolved in a running event loop (the first dispatch, or
  ``Runtime.validate()`` called there), or at the first call to one of its objects.
- At its time the object's ``alarm()`` (or ``alarm(alarm_info)``, which gets
  ``retry_count`` and ``is_retry``) runs as a top-level invocation of its own, through
  the object's input gate like any call; at most one alarm of an object runs at a time.
- When ``alarm()`` raises, it is retried with exponential backoff: 2 s after the first
  failure, then 4, 8, 16, 32, 64 s; after six retries the alarm is dropped (logged).
  It is at-least-once: an alarm that was running when the process died runs again.
- While ``alarm()`` runs, ``get_alarm()`` returns None unless ``set_alarm()`` was called
  since it started; a new time set meanwhile is kept (no retry of the old one).
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
import time
from typing import TYPE_CHECKING, Any

from ..lifecycle import logger
from ..request import Request
from ..response import Response

if TYPE_CHECKING:
    from .namespace import DurableObjectNamespace
    from .storage import NamespaceDatabase

__all__ = ("AlarmInfo", "Alarms", "AlarmScheduler", "MAX_ALARM_RETRIES", "ALARM_RETRY_S")

MAX_ALARM_RETRIES = 6
ALARM_RETRY_S = 2.0  # the first retry's delay; each next one doubles it

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alarms (
    object_id BLOB PRIMARY KEY,
    name TEXT,
    at_ms INTEGER NOT NULL,
    retry INTEGER NOT NULL,
    running INTEGER NOT NULL
) WITHOUT ROWID
"""
_ALARM_URL = "https://alarm.invalid/"


def _when_ms(when: object) -> int:
    if isinstance(when, datetime.datetime):
        return int(when.timestamp() * 1000)
    if isinstance(when, bool) or not isinstance(when, (int, float)):
        raise TypeError(
            "set_alarm() takes milliseconds since the epoch (int or float) or a datetime, "
            f"not {type(when).__name__}"
        )
    return int(when)


class AlarmInfo:
    """What ``alarm(alarm_info)`` is given: whether this run is a retry, and which."""

    __slots__ = ("retry_count",)

    def __init__(self, retry_count: int) -> None:
        self.retry_count = retry_count

    @property
    def is_retry(self) -> bool:
        return self.retry_count > 0

    retryCount = property(lambda self: self.retry_count)  # noqa: N815 - Cloudflare's names
    isRetry = property(lambda self: self.is_retry)  # noqa: N815

    def __repr__(self) -> str:
        return f"<AlarmInfo retry_count={self.retry_count}>"


class AlarmTable:
    """The alarms of one namespace, in its database (a table beside the key-value one)."""

    __slots__ = ("_db", "_ready")

    def __init__(self, db: NamespaceDatabase) -> None:
        self._db = db
        self._ready = False

    def _conn(self) -> Any:
        conn = self._db._connect()
        if not self._ready:
            conn.execute(_SCHEMA)
            self._ready = True
        return conn

    def set(self, oid: bytes, name: str | None, at_ms: int) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO alarms VALUES (?, ?, ?, 0, 0)", (oid, name, at_ms)
        )

    def get(self, oid: bytes) -> int | None:
        row = self._conn().execute(
            "SELECT at_ms FROM alarms WHERE object_id = ? AND running = 0", (oid,)
        ).fetchone()
        return None if row is None else int(row[0])

    def delete(self, oid: bytes) -> None:
        self._conn().execute("DELETE FROM alarms WHERE object_id = ?", (oid,))

    def row(self, oid: bytes) -> tuple[str | None, int, int, int] | None:
        row: tuple[str | None, int, int, int] | None = self._conn().execute(
            "SELECT name, at_ms, retry, running FROM alarms WHERE object_id = ?", (oid,)
        ).fetchone()
        return row

    def start(self, oid: bytes) -> None:
        self._conn().execute("UPDATE alarms SET running = 1 WHERE object_id = ?", (oid,))

    def retry(self, oid: bytes, at_ms: int, retry: int) -> None:
        self._conn().execute(
            "UPDATE alarms SET at_ms = ?, retry = ?, running = 0 WHERE object_id = ?",
            (at_ms, retry, oid),
        )

    def all(self) -> list[tuple[bytes, str | None, int]]:
        return [
            (bytes(oid), name, int(at)) for oid, name, at in
            self._conn().execute("SELECT object_id, name, at_ms FROM alarms").fetchall()
        ]


class Alarms:
    """The alarm methods of one object's storage (``storage.set_alarm`` and the others)."""

    __slots__ = ("_scheduler", "_oid", "_name")

    def __init__(self, scheduler: AlarmScheduler, oid: bytes, name: str | None) -> None:
        self._scheduler = scheduler
        self._oid = oid
        self._name = name

    async def set_alarm(self, when: int | float | datetime.datetime) -> None:
        at_ms = _when_ms(when)
        self._scheduler.table.set(self._oid, self._name, at_ms)
        self._scheduler.arm(self._oid, self._name, at_ms)

    async def get_alarm(self) -> int | None:
        return self._scheduler.table.get(self._oid)

    async def delete_alarm(self) -> None:
        self._scheduler.table.delete(self._oid)
        self._scheduler.disarm(self._oid)


class AlarmScheduler:
    """Arms a namespace's alarms on the event loop and runs them, one per object at a time."""

    __slots__ = ("_ns", "table", "_timers", "_running", "_tasks", "loaded", "retry_s")

    def __init__(self, ns: DurableObjectNamespace, db: NamespaceDatabase) -> None:
        self._ns = ns
        self.table = AlarmTable(db)
        self._timers: dict[bytes, asyncio.TimerHandle] = {}
        self._running: set[bytes] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.loaded = False
        self.retry_s = ALARM_RETRY_S

    def load(self) -> None:
        """Arm every alarm the database holds (once per Runtime, in its event loop)."""
        self.loaded = True
        for oid, name, at_ms in self.table.all():
            self.arm(oid, name, at_ms)

    def arm(self, oid: bytes, name: str | None, at_ms: int) -> None:
        self.disarm(oid)
        loop = asyncio.get_running_loop()
        delay = max(0.0, at_ms / 1000 - time.time())
        self._timers[oid] = loop.call_later(delay, self._fire, oid, name)

    def disarm(self, oid: bytes) -> None:
        timer = self._timers.pop(oid, None)
        if timer is not None:
            timer.cancel()

    def _fire(self, oid: bytes, name: str | None) -> None:
        self._timers.pop(oid, None)
        if oid in self._running:
            return  # the running alarm arms the next one when it ends
        task = asyncio.ensure_future(self._run(oid, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, oid: bytes, name: str | None) -> None:
        row = self.table.row(oid)
        if row is None:
            return
        _, _, retry, _ = row
        self._running.add(oid)
        self.table.start(oid)
        try:
            error = await self._ns._run_alarm(oid, name, AlarmInfo(retry))
        finally:
            self._running.discard(oid)
        row = self.table.row(oid)
        if row is None:
            return  # deleted meanwhile, or no alarm left
        _, at_ms, _, running = row
        if not running:  # set again while it ran: that time stands
            self.arm(oid, name, at_ms)
        elif error is None:
            self.table.delete(oid)
        elif retry >= MAX_ALARM_RETRIES:
            self.table.delete(oid)
            logger.error(
                "Alarm of Durable Object %s:%s failed %d times and was dropped: %r",
                self._ns.class_name, oid.hex(), retry + 1, error,
            )
        else:
            at_ms = int((time.time() + self.retry_s * 2**retry) * 1000)
            self.table.retry(oid, at_ms, retry + 1)
            self.arm(oid, name, at_ms)

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        loop = asyncio.get_running_loop()
        tasks = [t for t in self._tasks if t.get_loop() is loop and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def alarm_arguments(handler: Any, info: AlarmInfo) -> tuple[Any, ...]:
    """``(info,)`` when the object's ``alarm`` takes a parameter, else ``()``."""
    try:
        params = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return ()
    takes = any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params
    )
    return (info,) if takes else ()


def alarm_request() -> Request:
    """The Request of an alarm's top-level invocation (nothing reads it)."""
    return Request(_ALARM_URL)


def alarm_response(error: BaseException | None) -> Response:
    return Response(None, status=204 if error is None else 500)
