"""``state.storage`` of one Durable Object: key-value, SQL and alarm storage in one object.

The key-value methods are ``DurableObjectStorage``'s (storage.py), ``sql`` is the
object's own SQLite database (sql.py), the alarm methods are alarms.py's. Every method
also answers to Cloudflare's camelCase name (``setAlarm``, ``transactionSync``,
``deleteAll``, ...), so code written for Cloudflare's ``DurableObject`` runs on it as it is.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import TypeVar

from .alarms import Alarms, AlarmScheduler
from .sql import ObjectDatabases, SqlStorage
from .storage import DurableObjectStorage, NamespaceDatabase

__all__ = ("ObjectStorage", "NO_ALARM_HANDLER")

T = TypeVar("T")

# Cloudflare's message when an object without an alarm() handler sets an alarm.
NO_ALARM_HANDLER = "Your Durable Object class must have an alarm() handler in order to call setAlarm()"


class ObjectStorage(DurableObjectStorage):
    """``state.storage``: ``get``/``put``/``delete``/``list``/``transaction``, ``sql``, alarms."""

    __slots__ = ("sql", "_alarms", "_databases", "_has_alarm_handler")

    def __init__(
        self, db: NamespaceDatabase, oid: bytes, name: str | None, databases: ObjectDatabases,
        scheduler: AlarmScheduler, has_alarm_handler: bool,
    ) -> None:
        super().__init__(db, oid)
        self.sql = SqlStorage(databases, oid)
        self._databases = databases
        self._alarms = Alarms(scheduler, oid, name)
        self._has_alarm_handler = has_alarm_handler

    def transaction_sync(self, closure: Callable[[], T]) -> T:
        """Run ``closure()`` in one SQL transaction: committed when it returns, rolled back if it raises."""
        return self.sql.transaction_sync(closure)

    async def delete_all(self) -> None:
        """Delete every key and the whole SQL database of this object (not its alarm)."""
        await super().delete_all()
        self._databases.delete(self._oid)

    async def set_alarm(self, when: int | float | datetime.datetime) -> None:
        """Run the object's ``alarm()`` at ``when`` (ms since the epoch, or a datetime)."""
        if not self._has_alarm_handler:
            raise TypeError(NO_ALARM_HANDLER)
        await self._alarms.set_alarm(when)

    async def get_alarm(self) -> int | None:
        """The alarm's time in ms since the epoch, or None."""
        return await self._alarms.get_alarm()

    async def delete_alarm(self) -> None:
        await self._alarms.delete_alarm()

    # Cloudflare's names
    setAlarm = set_alarm  # noqa: N815
    getAlarm = get_alarm  # noqa: N815
    deleteAlarm = delete_alarm  # noqa: N815
    deleteAll = delete_all  # noqa: N815
    transactionSync = transaction_sync  # noqa: N815
