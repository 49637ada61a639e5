"""Durable Object storage: an async key-value API over one SQLite database per namespace."""

from __future__ import annotations

import inspect
import os
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

import orjson

from ..errors import FastbindError

__all__ = (
    "DurableObjectStorage",
    "DurableObjectTransaction",
    "NamespaceDatabase",
    "TransactionConflictError",
    "MAX_TRANSACTION_ATTEMPTS",
)

T = TypeVar("T")

# How many times transaction() runs a closure whose reads were overwritten meanwhile.
MAX_TRANSACTION_ATTEMPTS = 10

# A stored value is one of two kinds. JSON (orjson) keeps the files data-only: pickle
# would take any object, but reading a pickle runs code named by the file and a renamed
# class breaks every stored value. Bytes are common enough (blobs, encrypted tokens)
# to be kept as they are, without base64 in JSON.
_JSON = 0
_BYTES = 1

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    object_id BLOB NOT NULL,
    key TEXT NOT NULL,
    kind INTEGER NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (object_id, key)
) WITHOUT ROWID
"""
_UPSERT = "INSERT OR REPLACE INTO kv (object_id, key, kind, value) VALUES (?, ?, ?, ?)"
_DELETE = "DELETE FROM kv WHERE object_id = ? AND key = ?"
_SELECT_ONE = "SELECT kind, value FROM kv WHERE object_id = ? AND key = ?"
# SQLite's default cap on bound parameters is 32766; stay far below it.
_CHUNK = 500

Row = tuple[int, bytes]  # (kind, encoded value)


class TransactionConflictError(FastbindError):
    """A storage transaction kept reading keys that other calls overwrote before it committed."""


def encode_value(key: str, value: Any) -> Row:
    """``value`` as stored: bytes as they are, anything else as JSON, or TypeError."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _BYTES, bytes(value)
    try:
        return _JSON, orjson.dumps(value)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise TypeError(
            f'Cannot store the value of key "{key}" in Durable Object storage: {exc}. '
            "Values are JSON data (what orjson serialises: dict with str keys, list, "
            "tuple, str, int, float, bool, None, dataclasses, ...) or bytes on their own."
        ) from None


def decode_value(kind: int, data: bytes) -> Any:
    return data if kind == _BYTES else orjson.loads(data)


def check_key(key: object) -> str:
    if type(key) is not str:
        raise TypeError(f"Durable Object storage keys must be str, not {type(key).__name__}")
    return key


def _check_keys(keys: object) -> list[str]:
    if not isinstance(keys, (list, tuple)):
        raise TypeError(
            f"Durable Object storage takes a key (str) or a list of keys, not {type(keys).__name__}"
        )
    return [check_key(k) for k in keys]


def _after_prefix(prefix: str) -> str | None:
    """The least string greater than every string that starts with ``prefix``."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if code <= 0x10FFFF:
            if 0xD800 <= code <= 0xDFFF:  # surrogates cannot be stored in UTF-8
                code = 0xE000
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


class KeyRange:
    """The keys ``list()`` selects: from ``low`` (open or closed) up to ``high`` (open).

    SQLite compares TEXT as UTF-8 bytes, which orders as Python compares str (by code
    point), so the same bounds select the same keys in SQL and in memory.
    """

    __slots__ = ("low", "low_open", "high")

    def __init__(
        self, start: str | None, start_after: str | None, end: str | None, prefix: str | None
    ) -> None:
        if start is not None and start_after is not None:
            raise ValueError("list() takes start or start_after, not both")
        low, low_open = (start_after, True) if start_after is not None else (start, False)
        high = end
        for bound in (low, high, prefix):
            if bound is not None:
                check_key(bound)
        if prefix:
            if low is None or low < prefix:
                low, low_open = prefix, False
            upper = _after_prefix(prefix)
            if upper is not None and (high is None or upper < high):
                high = upper
        self.low = low
        self.low_open = low_open
        self.high = high

    def __contains__(self, key: str) -> bool:
        low = self.low
        if low is not None and (key <= low if self.low_open else key < low):
            return False
        return self.high is None or key < self.high

    def sql(self) -> tuple[str, list[str]]:
        clause, params = "", []
        if self.low is not None:
            clause += " AND key > ?" if self.low_open else " AND key >= ?"
            params.append(self.low)
        if self.high is not None:
            clause += " AND key < ?"
            params.append(self.high)
        return clause, params


def _check_limit(limit: object) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"list() limit must be a positive int, not {limit!r}")
    return limit


def _private_file(path: Path) -> None:
    """Create ``path`` (mode 0600) and the folders missing above it (0700), if absent.

    Stored objects are the Workers' data: readable by the server's user alone. SQLite
    gives its -wal and -shm files the mode of the database file. Folders and files that
    already exist keep their modes.
    """
    missing = [parent for parent in path.parents if not parent.exists()]
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue
        folder.chmod(0o700)  # mkdir's mode passes through the umask
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class NamespaceDatabase:
    """The SQLite database of one namespace: a file under a directory, or in memory.

    Opened on first use and closed for good by ``close()`` (the Runtime's ``aclose()``).
    Every call runs inline on the event loop's thread: a point read or write takes
    microseconds, far less than handing it to a thread would (see ``durable.py``). A
    file uses WAL with ``synchronous=NORMAL``: a committed write survives the process
    dying; the last ones may be lost if the machine loses power. The file is locked for
    as long as it is open: one Runtime owns a namespace's storage.
    """

    __slots__ = ("_path", "_label", "_conn", "_closed")

    def __init__(self, path: Path | None, label: str) -> None:
        self._path = path
        self._label = label
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    @property
    def path(self) -> Path | None:
        """The database file, or None for an in-memory database."""
        return self._path

    def _connect(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is not None:
            return conn
        if self._closed:
            # Held by an object that outlived Runtime.aclose(): reopening would show it
            # an empty database in place of an in-memory one.
            raise FastbindError(
                f"The storage of Durable Object namespace {self._label} was closed "
                "with its Runtime."
            )
        try:
            conn = self._open()
        except (OSError, sqlite3.Error) as exc:
            where = "in memory" if self._path is None else f"at {os.fspath(self._path)!r}"
            why = str(exc)
            if "locked" in why:
                why += (
                    " by another Runtime or process: the objects of a namespace live in one "
                    "Runtime at a time, so its storage has one owner"
                )
            raise FastbindError(
                f"Cannot open the storage of Durable Object namespace {self._label} {where}: {why}"
            ) from exc
        self._conn = conn
        return conn

    def _open(self) -> sqlite3.Connection:
        if self._path is not None:
            _private_file(self._path)
        # Used by one loop's thread at a time, but a Runtime may be driven by loops of
        # different threads in turn. No busy timeout: waiting for a lock would block
        # the loop, and the lock is never released while its owner runs (below).
        conn = sqlite3.connect(
            self._path or ":memory:", isolation_level=None, check_same_thread=False, timeout=0
        )
        try:
            if self._path is not None:
                # One owner: two Runtimes (or two `fastbind serve --workers` processes)
                # sharing a file would each build their own object of one id.
                conn.execute("PRAGMA locking_mode=EXCLUSIVE")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _SCHEMA_VERSION):
                raise sqlite3.DatabaseError(
                    f"its schema version is {version}; "
                    f"this fastbind reads version {_SCHEMA_VERSION}"
                )
            conn.execute(_SCHEMA)
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        """Close the database for good: later operations on it raise FastbindError."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def read_one(self, oid: bytes, key: str) -> Row | None:
        row: Row | None = self._connect().execute(_SELECT_ONE, (oid, key)).fetchone()
        return row

    def read(self, oid: bytes, keys: Sequence[str]) -> dict[str, Row]:
        conn = self._connect()
        found: dict[str, Row] = {}
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for key, kind, value in conn.execute(
                f"SELECT key, kind, value FROM kv WHERE object_id = ? AND key IN ({marks})",
                (oid, *chunk),
            ):
                found[key] = (kind, value)
        return found

    def scan(
        self, oid: bytes, keys: KeyRange, reverse: bool, limit: int | None
    ) -> list[tuple[str, int, bytes]]:
        clause, params = keys.sql()
        sql = f"SELECT key, kind, value FROM kv WHERE object_id = ?{clause} ORDER BY key"
        if reverse:
            sql += " DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._connect().execute(sql, (oid, *params)).fetchall()

    def write(self, oid: bytes, puts: Mapping[str, Row], deletes: Sequence[str]) -> int:
        """Apply ``puts`` and ``deletes`` in one transaction; returns how many rows were deleted."""
        conn = self._connect()
        if len(puts) + len(deletes) == 1:  # one statement is its own transaction
            if puts:
                ((key, (kind, value)),) = puts.items()
                conn.execute(_UPSERT, (oid, key, kind, value))
                return 0
            return conn.execute(_DELETE, (oid, deletes[0])).rowcount
        before = conn.total_changes
        conn.execute("BEGIN IMMEDIATE")
        try:
            if deletes:
                conn.executemany(_DELETE, [(oid, k) for k in deletes])
            deleted = conn.total_changes - before
            if puts:
                conn.executemany(_UPSERT, [(oid, k, kind, v) for k, (kind, v) in puts.items()])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return deleted

    def delete_object(self, oid: bytes) -> None:
        self._connect().execute("DELETE FROM kv WHERE object_id = ?", (oid,))


class DurableObjectStorage:
    """``state.storage``: the keys and values of one Durable Object.

    Every method is a coroutine that completes without suspending: it never lets
    another call of the object run in between (the input gate rule, see durable.py).
    Each write is committed before its ``await`` returns; a write of several keys, or a
    transaction, commits all of them or none.
    """

    __slots__ = ("_db", "_oid", "_version", "_transactions", "_write_log")

    def __init__(self, db: NamespaceDatabase, oid: bytes) -> None:
        self._db = db
        self._oid = oid
        self._version = 0  # committed writes so far, to tell transactions what changed
        self._transactions = 0  # transactions running; the write log is kept while > 0
        self._write_log: list[tuple[int, frozenset[str] | None]] = []  # None: every key

    def _committed(self, keys: frozenset[str] | None) -> None:
        self._version += 1
        if self._transactions:
            self._write_log.append((self._version, keys))

    @overload
    async def get(self, key: str) -> Any: ...
    @overload
    async def get(self, key: list[str] | tuple[str, ...]) -> dict[str, Any]: ...

    async def get(self, key: str | list[str] | tuple[str, ...]) -> Any:
        """The value of ``key`` (None if absent), or a dict of those of ``[keys]`` that exist."""
        if isinstance(key, str):
            row = self._db.read_one(self._oid, key)
            return None if row is None else decode_value(*row)
        keys = _check_keys(key)
        rows = self._db.read(self._oid, keys)
        return {k: decode_value(*rows[k]) for k in sorted(rows)}

    async def put(self, key: str | Mapping[str, Any], value: Any = ...) -> None:
        """Store ``value`` under ``key``, or every item of a ``{key: value}`` mapping at once."""
        if value is ...:
            if not isinstance(key, Mapping):
                raise TypeError("put() takes a key and a value, or a mapping of keys to values")
            puts = {check_key(k): encode_value(k, v) for k, v in key.items()}
        else:
            puts = {check_key(key): encode_value(key, value)}  # type: ignore[arg-type]
        if puts:
            self._db.write(self._oid, puts, ())
            self._committed(frozenset(puts))

    @overload
    async def delete(self, key: str) -> bool: ...
    @overload
    async def delete(self, key: list[str] | tuple[str, ...]) -> int: ...

    async def delete(self, key: str | list[str] | tuple[str, ...]) -> bool | int:
        """Delete ``key`` (whether it existed), or ``[keys]`` (how many existed)."""
        keys = [key] if isinstance(key, str) else _check_keys(key)
        if not keys:
            return 0
        deleted = self._db.write(self._oid, {}, keys)
        self._committed(frozenset(keys))
        return deleted > 0 if isinstance(key, str) else deleted

    async def list(
        self,
        *,
        prefix: str | None = None,
        start: str | None = None,
        start_after: str | None = None,
        end: str | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """Keys and values in key order: those from ``start`` (or after ``start_after``)
        up to ``end`` (excluded) that begin with ``prefix``, at most ``limit`` of them."""
        keys = KeyRange(start, start_after, end, prefix)
        rows = self._db.scan(self._oid, keys, bool(reverse), _check_limit(limit))
        return {k: decode_value(kind, v) for k, kind, v in rows}

    async def delete_all(self) -> None:
        """Delete every key of this object."""
        self._db.delete_object(self._oid)
        self._committed(None)

    async def transaction(self, closure: Callable[[DurableObjectTransaction], Awaitable[T]]) -> T:
        """Run ``await closure(txn)`` and commit its writes at once, or none of them.

        The closure reads and writes through ``txn`` (``get``, ``put``, ``delete``,
        ``list``, ``rollback()``). Its writes are kept aside and committed together when it
        returns; an exception or ``txn.rollback()`` drops them. If the closure awaits
        something other than storage, other calls may run meanwhile: when one of them
        wrote a key the closure read, the closure is run again on fresh values (up to
        MAX_TRANSACTION_ATTEMPTS times), so transactions behave as if run one by one.
        """
        for _ in range(MAX_TRANSACTION_ATTEMPTS):
            txn = DurableObjectTransaction(self)
            self._transactions += 1
            try:
                outcome: Any = closure(txn)
                if inspect.isawaitable(outcome):
                    outcome = await outcome
                if txn._rolled_back:
                    return outcome  # type: ignore[no-any-return]
                if not txn._conflicts():
                    txn._commit()
                    return outcome  # type: ignore[no-any-return]
            finally:
                txn._ended = True
                self._transactions -= 1
                if not self._transactions:
                    self._write_log.clear()
        raise TransactionConflictError(
            f"A Durable Object storage transaction was run {MAX_TRANSACTION_ATTEMPTS} times "
            "and each time other writes changed keys it had read. Inside the closure, read "
            "and write through the transaction (txn.get/put), not state.storage."
        )


_DELETED = None  # in a transaction's write buffer: the key is deleted


class DurableObjectTransaction:
    """``txn`` of ``storage.transaction(closure)``: reads see the transaction's own writes."""

    __slots__ = ("_storage", "_start", "_writes", "_reads", "_ranges", "_rolled_back", "_ended")

    def __init__(self, storage: DurableObjectStorage) -> None:
        self._storage = storage
        self._start = storage._version
        self._writes: dict[str, Row | None] = {}
        self._reads: set[str] = set()
        self._ranges: list[KeyRange] = []
        self._rolled_back = False
        self._ended = False

    def _check_open(self) -> None:
        if self._ended:
            raise FastbindError("This storage transaction has ended; use state.storage instead")

    def _read(self, keys: list[str]) -> dict[str, Row]:
        """The current rows of ``keys``, the transaction's own writes first."""
        found: dict[str, Row] = {}
        missing = []
        for key in keys:
            if key in self._writes:
                row = self._writes[key]
                if row is not _DELETED:
                    found[key] = row
            else:
                missing.append(key)
        if missing:
            self._reads.update(missing)
            storage = self._storage
            found.update(storage._db.read(storage._oid, missing))
        return found

    @overload
    async def get(self, key: str) -> Any: ...
    @overload
    async def get(self, key: list[str] | tuple[str, ...]) -> dict[str, Any]: ...

    async def get(self, key: str | list[str] | tuple[str, ...]) -> Any:
        self._check_open()
        if isinstance(key, str):
            row = self._read([key]).get(key)
            return None if row is None else decode_value(*row)
        rows = self._read(_check_keys(key))
        return {k: decode_value(*rows[k]) for k in sorted(rows)}

    async def put(self, key: str | Mapping[str, Any], value: Any = ...) -> None:
        self._check_open()
        if value is ...:
            if not isinstance(key, Mapping):
                raise TypeError("put() takes a key and a value, or a mapping of keys to values")
            puts = {check_key(k): encode_value(k, v) for k, v in key.items()}
        else:
            puts = {check_key(key): encode_value(key, value)}  # type: ignore[arg-type]
        self._writes.update(puts)

    async def delete(self, key: str | list[str] | tuple[str, ...]) -> bool | int:
        self._check_open()
        keys = [key] if isinstance(key, str) else _check_keys(key)
        existed = self._read(keys)
        for k in keys:
            self._writes[k] = _DELETED
        return bool(existed) if isinstance(key, str) else len(existed)

    async def list(
        self,
        *,
        prefix: str | None = None,
        start: str | None = None,
        start_after: str | None = None,
        end: str | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> dict[str, Any]:
        self._check_open()
        keys = KeyRange(start, start_after, end, prefix)
        limit = _check_limit(limit)
        self._ranges.append(keys)
        # Each of our deletes may hide one stored row: read that many more.
        deleted = sum(1 for row in self._writes.values() if row is _DELETED)
        storage = self._storage
        rows = {
            k: (kind, v)
            for k, kind, v in storage._db.scan(
                storage._oid, keys, bool(reverse), None if limit is None else limit + deleted
            )
        }
        for key, row in self._writes.items():
            if key in keys:
                if row is _DELETED:
                    rows.pop(key, None)
                else:
                    rows[key] = row
        selected = sorted(rows, reverse=bool(reverse))[:limit]
        return {k: decode_value(*rows[k]) for k in selected}

    def rollback(self) -> None:
        """Drop every write of this transaction when the closure returns."""
        self._check_open()
        self._rolled_back = True

    def _conflicts(self) -> bool:
        """Whether a write committed since the start touched a key this transaction read."""
        for version, keys in self._storage._write_log:
            if version <= self._start:
                continue
            if keys is None:
                if self._reads or self._ranges:
                    return True
            elif not keys.isdisjoint(self._reads) or any(
                key in r for r in self._ranges for key in keys
            ):
                return True
        return False

    def _commit(self) -> None:
        if not self._writes:
            return
        puts = {k: row for k, row in self._writes.items() if row is not _DELETED}
        deletes = [k for k, row in self._writes.items() if row is _DELETED]
        storage = self._storage
        storage._db.write(storage._oid, puts, deletes)
        storage._committed(frozenset(self._writes))
