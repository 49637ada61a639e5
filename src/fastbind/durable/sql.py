"""SQL storage of a Durable Object: ``state.storage.sql.exec(query, *bindings)`` on its own SQLite database.

As Cloudflare's SQLite-backed Durable Objects: each object has a private database
(tables it creates are its own); ``exec`` runs at once, without suspending, so it sits
inside the object's input gate exactly as the key-value API does; it returns a cursor
(``to_array()``, ``one()``, ``raw()``, iteration, ``column_names``, ``rows_read``,
``rows_written``, with Cloudflare's camelCase names too). A query may hold several
statements separated by semicolons: the bindings go to the last one, and the cursor
reads its rows. ``storage.transaction_sync(fn)`` runs ``fn()`` in one SQLite transaction,
committed when it returns and rolled back when it raises.

The database is a file beside the namespace's (``<namespace>.objects/<id>.sqlite3``
under ``Runtime(durable_dir=...)``), or memory kept by the namespace for as long as the
Runtime lives when there is no directory; either way it outlives the object's eviction.
``rows_read`` counts the rows the cursor has returned (Python's sqlite3 does not expose
how many a query scanned).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ..errors import FastbindError

__all__ = ("SqlStorage", "SqlCursor", "ObjectDatabases")

T = TypeVar("T")

_EXPECTED_ONE = "Expected exactly one result from SQL query, but got {}."


class ObjectDatabases:
    """The SQL databases of one namespace's objects, opened on first use."""

    __slots__ = ("_directory", "_label", "_open", "_closed")

    def __init__(self, namespace_file: Path | None, label: str) -> None:
        self._directory = None if namespace_file is None else namespace_file.with_suffix(".objects")
        self._label = label
        self._open: dict[bytes, sqlite3.Connection] = {}
        self._closed = False

    def connection(self, oid: bytes) -> sqlite3.Connection:
        conn = self._open.get(oid)
        if conn is not None:
            return conn
        if self._closed:
            raise FastbindError(
                f"The SQL storage of Durable Object namespace {self._label} was closed with its Runtime."
            )
        if self._directory is None:
            target = ":memory:"
        else:
            self._directory.mkdir(parents=True, exist_ok=True)
            target = str(self._directory / (oid.hex() + ".sqlite3"))
        # Inline on the loop's thread, as the key-value storage (see storage.py).
        conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=0)
        if self._directory is not None:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        self._open[oid] = conn
        return conn

    def delete(self, oid: bytes) -> None:
        """Drop the object's whole database (``storage.delete_all()``)."""
        conn = self._open.pop(oid, None)
        if conn is not None:
            conn.close()
        if self._directory is not None:
            for suffix in ("", "-wal", "-shm"):
                (self._directory / (oid.hex() + ".sqlite3" + suffix)).unlink(missing_ok=True)

    def close(self) -> None:
        self._closed = True
        for conn in self._open.values():
            conn.close()
        self._open.clear()


def _statements(query: str) -> list[str]:
    """``query`` cut into its statements, at semicolons outside strings and comments."""
    out, start = [], 0
    for i, ch in enumerate(query):
        if ch == ";" and sqlite3.complete_statement(query[start : i + 1]):
            out.append(query[start : i + 1])
            start = i + 1
    rest = query[start:]
    if rest.strip():
        out.append(rest)
    return [s for s in out if s.strip(" \t\r\n;")]


class SqlCursor:
    """What ``sql.exec`` returns: the rows of its (last) statement, read as they are asked for."""

    __slots__ = ("_cursor", "_columns", "rows_read", "rows_written")

    def __init__(self, cursor: sqlite3.Cursor | None, rows_written: int) -> None:
        self._cursor = cursor
        self._columns = [] if cursor is None or cursor.description is None else [
            d[0] for d in cursor.description
        ]
        self.rows_read = 0
        self.rows_written = rows_written

    @property
    def column_names(self) -> list[str]:
        return list(self._columns)

    def _next_raw(self) -> tuple[Any, ...] | None:
        if self._cursor is None:
            return None
        row: tuple[Any, ...] | None = self._cursor.fetchone()
        if row is None:
            self._cursor = None
        else:
            self.rows_read += 1
        return row

    def raw(self) -> Iterator[list[Any]]:
        """The remaining rows as lists of values, in column order."""
        while (row := self._next_raw()) is not None:
            yield list(row)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        columns = self._columns
        while (row := self._next_raw()) is not None:
            yield dict(zip(columns, row))

    def __next__(self) -> dict[str, Any]:
        row = self._next_raw()
        if row is None:
            raise StopIteration
        return dict(zip(self._columns, row))

    def to_array(self) -> list[dict[str, Any]]:
        """The remaining rows, as dicts of column name to value."""
        return list(self)

    def one(self) -> dict[str, Any]:
        """The only row; TypeError (Cloudflare's message) when there is none or more than one."""
        rows = self.to_array()
        if len(rows) != 1:
            raise TypeError(_EXPECTED_ONE.format("no results" if not rows else "multiple results"))
        return rows[0]

    # Cloudflare's names
    toArray = to_array  # noqa: N815
    columnNames = column_names  # noqa: N815

    @property
    def rowsRead(self) -> int:  # noqa: N802
        return self.rows_read

    @property
    def rowsWritten(self) -> int:  # noqa: N802
        return self.rows_written

    def __repr__(self) -> str:
        return f"<SqlCursor columns={self._columns!r}>"


class SqlStorage:
    """``state.storage.sql`` of one object."""

    __slots__ = ("_databases", "_oid")

    def __init__(self, databases: ObjectDatabases, oid: bytes) -> None:
        self._databases = databases
        self._oid = oid

    def _connection(self) -> sqlite3.Connection:
        return self._databases.connection(self._oid)

    def exec(self, query: str, *bindings: Any) -> SqlCursor:
        """Run ``query`` (one statement or several); the cursor reads the last one's rows."""
        if not isinstance(query, str):
            raise TypeError(f"sql.exec() takes the query as a str, not {type(query).__name__}")
        conn = self._connection()
        statements = _statements(query)
        if not statements:
            return SqlCursor(None, 0)
        before = conn.total_changes
        for statement in statements[:-1]:
            conn.execute(statement)
        cursor = conn.execute(statements[-1], bindings)
        return SqlCursor(cursor, conn.total_changes - before)

    @property
    def database_size(self) -> int:
        """The database's size in bytes."""
        conn = self._connection()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        return int(pages * size)

    databaseSize = database_size  # noqa: N815

    def transaction_sync(self, closure: Callable[[], T]) -> T:
        """Run ``closure()`` in one transaction: committed when it returns, rolled back if it raises."""
        conn = self._connection()
        if conn.in_transaction:  # nested: a savepoint, as SQLite nests
            name = f"fastbind_{id(closure)}"
            conn.execute(f"SAVEPOINT {name}")
            try:
                result = closure()
            except BaseException:
                conn.execute(f"ROLLBACK TO {name}")
                conn.execute(f"RELEASE {name}")
                raise
            conn.execute(f"RELEASE {name}")
            return result
        conn.execute("BEGIN")
        try:
            result = closure()
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result
