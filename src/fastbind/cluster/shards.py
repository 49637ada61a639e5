"""Storage shards: each process slot of a node keeps its objects' storage in its own folder.

``fastbind serve --durable-dir DIR --workers N``: slot 0 keeps its storage in ``DIR``
itself (where a single process keeps it), slot k in ``DIR/shard-k``. Each folder holds
the same files as a Runtime's ``durable_dir`` (a SQLite file per namespace, a folder of
SQL databases per namespace), locked by the one process that uses it.

``DIR/fastbind-shards.json`` records N. Started with another N, the parent process moves
the storage of every object whose slot changed to its new shard before any process
serves (an object's slot is a function of its id and N: members.py): the key-value rows
and the alarm of each, and its SQL database file. Moves are done one namespace at a
time, copied then deleted, and the record is written last: a move cut short is done
again, the same way, at the next start.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from pathlib import Path

from ..errors import ConfigError
from .members import owner_index, slot_keys

__all__ = ("shard_dir", "prepare_shards", "MANIFEST")

logger = logging.getLogger("fastbind.cluster")

MANIFEST = "fastbind-shards.json"
_TABLES = ("kv", "alarms")


def shard_dir(directory: str | os.PathLike[str], slot: int) -> Path:
    """The folder of slot ``slot``'s storage under ``directory``."""
    base = Path(directory)
    return base if slot == 0 else base / f"shard-{slot}"


def _recorded(directory: Path) -> int:
    path = directory / MANIFEST
    if not path.exists():
        return 1
    try:
        slots = json.loads(path.read_text())["slots"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"Cannot read {path}: {exc}") from None
    if type(slots) is not int or slots < 1:
        raise ConfigError(f"{path} records {slots!r} slots; expected a positive integer")
    return slots


def prepare_shards(directory: str | os.PathLike[str], slots: int) -> int:
    """Make ``directory``'s storage ready for ``slots`` processes; returns how many
    objects moved. Call it before any process opens the storage."""
    base = Path(directory)
    base.mkdir(parents=True, exist_ok=True)
    before = _recorded(base)
    moved = 0
    if before != slots:
        keys = slot_keys(slots)
        for slot in range(before):
            source = shard_dir(base, slot)
            if source.is_dir():
                moved += _move_out(base, source, slot, keys)
        for slot in range(slots, before):  # shards no slot uses any more, now empty
            _remove_empty(shard_dir(base, slot))
        if moved:
            logger.warning("durable storage in %s: %d objects moved to the shard of their new "
                           "process slot (%d slots, were %d)", base, moved, slots, before)
    (base / MANIFEST).write_text(json.dumps({"slots": slots}) + "\n")
    return moved


def _move_out(base: Path, source: Path, slot: int, keys: tuple[bytes, ...]) -> int:
    """Move the objects of shard ``source`` that slot ``slot`` no longer owns."""
    moved = 0
    for db_file in sorted(source.glob("*.sqlite3")):
        objects = _objects_of(db_file)
        objects_dir = db_file.with_suffix(".objects")
        if objects_dir.is_dir():
            for sql_file in objects_dir.glob("*.sqlite3"):
                try:
                    objects.add(bytes.fromhex(sql_file.name.removesuffix(".sqlite3")))
                except ValueError:
                    continue
        by_target: dict[int, list[bytes]] = {}
        for raw in objects:
            target = owner_index(raw, keys)
            if target != slot:
                by_target.setdefault(target, []).append(raw)
        for target, raws in sorted(by_target.items()):
            destination = shard_dir(base, target)
            destination.mkdir(parents=True, exist_ok=True)
            _move_rows(db_file, destination / db_file.name, raws)
            _move_sql_files(objects_dir, destination / objects_dir.name, raws)
            moved += len(raws)
    return moved


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as exc:
        conn.close()
        raise ConfigError(
            f"Cannot move durable storage in {path}: {exc} (is another fastbind process using it?)"
        ) from None
    return conn


def _tables(conn: sqlite3.Connection) -> list[str]:
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return [t for t in _TABLES if t in names]


def _objects_of(db_file: Path) -> set[bytes]:
    conn = _connect(db_file)
    try:
        found: set[bytes] = set()
        for table in _tables(conn):
            found.update(row[0] for row in conn.execute(f"SELECT DISTINCT object_id FROM {table}"))
        return found
    finally:
        conn.close()


def _move_rows(source: Path, destination: Path, raws: list[bytes]) -> None:
    """Copy the rows of ``raws`` into ``destination`` (made like the source), then delete them."""
    src = _connect(source)
    try:
        tables = _tables(src)
        schema = [row[0] for row in src.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND sql IS NOT NULL")]
        version = src.execute("PRAGMA user_version").fetchone()[0]
        dst = _connect(destination)
        try:
            for statement in schema:
                dst.execute(statement.replace("CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ", 1))
            dst.execute(f"PRAGMA user_version = {int(version)}")
            dst.execute("BEGIN IMMEDIATE")
            for table in tables:
                columns = [row[1] for row in src.execute(f"PRAGMA table_info({table})")]
                marks = ",".join("?" * len(columns))
                for raw in raws:
                    rows = src.execute(f"SELECT * FROM {table} WHERE object_id = ?", (raw,)).fetchall()
                    dst.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({marks})", rows)
            dst.execute("COMMIT")
        finally:
            dst.close()
        src.execute("BEGIN IMMEDIATE")
        for table in tables:
            src.executemany(f"DELETE FROM {table} WHERE object_id = ?", [(raw,) for raw in raws])
        src.execute("COMMIT")
    finally:
        src.close()


def _move_sql_files(source: Path, destination: Path, raws: list[bytes]) -> None:
    for raw in raws:
        name = raw.hex() + ".sqlite3"
        if not (source / name).exists():
            continue
        destination.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            path = source / (name + suffix)
            if path.exists():
                os.replace(path, destination / (name + suffix))


def _remove_empty(folder: Path) -> None:
    """Delete a shard folder no slot uses, if nothing of an object is left in it."""
    if not folder.is_dir():
        return
    for db_file in folder.glob("*.sqlite3"):
        if _objects_of(db_file):
            raise ConfigError(f"{folder} still holds objects after they were moved; it was left as it is")
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_dir():
            path.rmdir()
        else:
            path.unlink()
    folder.rmdir()
