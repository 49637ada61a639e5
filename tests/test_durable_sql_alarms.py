"""Durable Objects' SQL storage and alarms, native and through the workers module, on both cores.

Cloudflare's documented examples are translated to Python: the SQL API's (an ``artist``
table made in the constructor, read with ``one()``, ``to_array()``, ``raw()``) and the
Alarms API's (a Batcher that queues requests and flushes them from ``alarm()``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fastbind import Request, Response, Runtime, workers
from fastbind.durable import DurableObject, DurableObjects


class Artists(DurableObject):
    """Cloudflare's SQL API example, in Python."""

    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        self.sql = ctx.storage.sql
        self.sql.exec(
            """CREATE TABLE IF NOT EXISTS artist(
              artistid    INTEGER PRIMARY KEY,
              artistname  TEXT
            );INSERT OR IGNORE INTO artist (artistid, artistname) VALUES
              (123, 'Alice'),
              (456, 'Bob'),
              (789, 'Charlie');"""
        )

    async def say_hello(self) -> str:
        result = self.ctx.storage.sql.exec("SELECT 'Hello, World!' as greeting").one()
        return str(result["greeting"])

    async def read(self) -> Any:
        everyone = self.sql.exec("SELECT * FROM artist;").to_array()
        bob = self.sql.exec("SELECT * FROM artist WHERE artistid = ?;", 456)
        raw = list(self.sql.exec("SELECT artistname FROM artist ORDER BY artistid").raw())
        count = self.sql.exec("SELECT COUNT(*) AS n FROM artist").one()["n"]
        return everyone, next(iter(bob)), bob.column_names, raw, count

    async def write(self) -> Any:
        cursor = self.sql.exec("UPDATE artist SET artistname = upper(artistname) WHERE artistid > ?", 200)
        listed = self.sql.exec("SELECT * FROM artist")
        rows = [row for row in listed]
        return cursor.rows_written, listed.rows_read, listed.rowsRead, len(rows)

    async def errors(self) -> list[str]:
        messages = []
        for query in ("SELECT * FROM artist WHERE artistid = 0", "SELECT * FROM artist"):
            try:
                self.sql.exec(query).one()
            except TypeError as exc:
                messages.append(str(exc))
        return messages

    async def transact(self) -> Any:
        def add_then_fail() -> None:
            self.sql.exec("INSERT INTO artist VALUES (1, 'Dora')")
            raise ValueError("no")

        with pytest.raises(ValueError):
            self.ctx.storage.transaction_sync(add_then_fail)
        added = self.ctx.storage.transactionSync(
            lambda: self.sql.exec("INSERT INTO artist VALUES (2, 'Eve')").rows_written
        )
        names = [r["artistname"] for r in self.sql.exec("SELECT artistname FROM artist WHERE artistid < 10")]
        return added, names


def harness(objects: dict[str, type], **options: Any) -> tuple[Runtime, list[Any]]:
    jobs: list[Any] = []

    async def gw(request: Request, env: Any, ctx: Any) -> Response:
        return Response.json(await jobs.pop(0)(env))

    rt = Runtime(**options)
    rt.add_worker("gw", gw, durable_objects=objects)
    return rt, jobs


async def call(rt: Runtime, jobs: list[Any], job: Any) -> Any:
    jobs.append(job)
    response = await rt.dispatch("gw", Request("https://gw/"))
    assert response.status == 200, await response.text()
    return await response.json()


def test_cloudflares_sql_example(core, run, tmp_path: Path) -> None:
    async def main() -> None:
        rt, jobs = harness({"ARTISTS": Artists}, durable_dir=tmp_path)
        stub = lambda env: env.ARTISTS.get_by_name("a")  # noqa: E731
        assert await call(rt, jobs, lambda env: stub(env).say_hello()) == "Hello, World!"
        everyone, bob, columns, raw, count = await call(rt, jobs, lambda env: stub(env).read())
        assert everyone == [{"artistid": 123, "artistname": "Alice"}, {"artistid": 456, "artistname": "Bob"},
                            {"artistid": 789, "artistname": "Charlie"}]
        assert bob == {"artistid": 456, "artistname": "Bob"} and columns == ["artistid", "artistname"]
        assert raw == [["Alice"], ["Bob"], ["Charlie"]] and count == 3
        assert await call(rt, jobs, lambda env: stub(env).write()) == [2, 3, 3, 3]
        assert await call(rt, jobs, lambda env: stub(env).errors()) == [
            "Expected exactly one result from SQL query, but got no results.",
            "Expected exactly one result from SQL query, but got multiple results.",
        ]
        assert await call(rt, jobs, lambda env: stub(env).transact()) == [1, ["Eve"]]
        # Another object has a database of its own.
        assert await call(rt, jobs, lambda env: env.ARTISTS.get_by_name("b").write()) == [2, 3, 3, 3]
        await rt.aclose()
        # The rows outlive the Runtime: a new one reads them from the object's file.
        rt, jobs = harness({"ARTISTS": Artists}, durable_dir=tmp_path)
        everyone = (await call(rt, jobs, lambda env: stub(env).read()))[0]
        assert [r["artistname"] for r in everyone] == ["Eve", "Alice", "BOB", "CHARLIE"]
        await rt.aclose()

    run(main())
    assert sorted(p.name for p in (tmp_path / "gw.Artists.objects").glob("*.sqlite3")) == sorted(
        p.name for p in (tmp_path / "gw.Artists.objects").iterdir() if p.suffix == ".sqlite3"
    )
    assert len(list((tmp_path / "gw.Artists.objects").glob("*.sqlite3"))) == 2


class Batcher(workers.DurableObject):
    """Cloudflare's Alarms API example (batching requests), in Python: the upstream
    service it posts the batch to is a binding here, and the window 0.2 s, not 10 s."""

    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        self.storage = ctx.storage
        self.count = 0

        async def load() -> None:
            vals = await self.storage.list(reverse=True, limit=1)
            self.count = 0 if len(vals) == 0 else int(next(iter(vals)))

        self.ctx.blockConcurrencyWhile(load)

    async def fetch(self, request: Any) -> Any:
        self.count += 1
        current_alarm = await self.storage.getAlarm()
        if current_alarm is None:
            await self.storage.setAlarm(time.time() * 1000 + 200)
        await self.storage.put(f"{self.count:04d}", await request.text())
        return workers.Response.json({"queued": self.count})

    async def alarm(self) -> None:
        vals = await self.storage.list()
        await self.env.UPSTREAM.fetch("https://upstream/", method="POST", body="|".join(vals.values()))
        await self.storage.deleteAll()
        self.count = 0


def test_cloudflares_alarm_example_batches_until_the_alarm(core, run) -> None:
    batches: list[str] = []

    async def upstream(request: Request, env: Any, ctx: Any) -> Response:
        batches.append(await request.text())
        return Response(None)

    async def gw(request: Request, env: Any, ctx: Any) -> Response:
        return await env.BATCHER.getByName("foo").fetch(request)

    async def main() -> list[Any]:
        rt = Runtime()
        rt.add_worker("gw", gw, durable_objects={"BATCHER": Batcher}, services={"UPSTREAM": "up"})
        rt.add_worker("up", upstream)
        queued = []
        for text in ("a", "b", "c"):
            response = await rt.dispatch("gw", Request("https://gw/", method="POST", body=text))
            queued.append((await response.json())["queued"])
        assert batches == []
        await asyncio.sleep(0.5)
        response = await rt.dispatch("gw", Request("https://gw/", method="POST", body="d"))
        queued.append((await response.json())["queued"])
        await asyncio.sleep(0.5)
        await rt.aclose()
        return queued

    assert run(main()) == [1, 2, 3, 1]
    assert batches == ["a|b|c", "d"]


class Alarmed(DurableObject):
    async def set(self, delay_s: float, fails: int = 0) -> Any:
        await self.ctx.storage.put("fail", fails)
        await self.ctx.storage.set_alarm(time.time() * 1000 + delay_s * 1000)
        return await self.ctx.storage.get_alarm()

    async def status(self) -> Any:
        return [await self.ctx.storage.get("runs"), await self.ctx.storage.get_alarm()]

    async def alarm(self, info: Any) -> None:
        runs = await self.ctx.storage.get("runs") or []
        runs.append([info.retry_count, info.isRetry, await self.ctx.storage.get_alarm()])
        await self.ctx.storage.put("runs", runs)
        if len(runs) <= await self.ctx.storage.get("fail"):
            raise RuntimeError(f"run {len(runs)} fails")


def test_an_alarm_survives_a_restart_between_set_and_its_time(core, run, tmp_path: Path) -> None:
    async def main() -> Any:
        rt, jobs = harness({"A": Alarmed}, durable_dir=tmp_path)
        at = await call(rt, jobs, lambda env: env.A.get_by_name("x").set(0.3))
        assert at == pytest.approx(time.time() * 1000 + 300, abs=200)
        await rt.aclose()  # the process goes away before the alarm's time
        rt, jobs = harness({"A": Alarmed}, durable_dir=tmp_path)
        rt.validate()  # in the loop: the new Runtime arms what its storage holds
        await asyncio.sleep(0.6)
        state = await call(rt, jobs, lambda env: env.A.get_by_name("x").status())
        await rt.aclose()
        return state

    # It ran once, first try; get_alarm() inside it was None; none is left.
    assert run(main()) == [[[0, False, None]], None]


def test_a_failing_alarm_is_retried_with_backoff_then_dropped(core, run, caplog) -> None:
    async def main() -> Any:
        rt, jobs = harness({"A": Alarmed})
        rt.extension(DurableObjects).alarm_retry_s = 0.02  # 2 s on Cloudflare
        await call(rt, jobs, lambda env: env.A.get_by_name("twice").set(0, 2))
        await call(rt, jobs, lambda env: env.A.get_by_name("always").set(0, 99))
        await asyncio.sleep(0.02 * (1 + 2 + 4 + 8 + 16 + 32) + 0.8)
        states = [await call(rt, jobs, lambda env, n=name: env.A.get_by_name(n).status())
                  for name in ("twice", "always")]
        await rt.aclose()
        return states

    twice, always = run(main())
    assert twice == [[[0, False, None], [1, True, None], [2, True, None]], None]
    assert [r[0] for r in always[0]] == [0, 1, 2, 3, 4, 5, 6] and always[1] is None
    assert "failed 7 times and was dropped" in caplog.text


class Slow(DurableObject):
    async def set(self, delay_s: float) -> None:
        await self.ctx.storage.set_alarm(time.time() * 1000 + delay_s * 1000)

    async def log(self) -> Any:
        return await self.ctx.storage.get("log")

    async def alarm(self) -> None:
        log = await self.ctx.storage.get("log") or []
        await self.ctx.storage.put("log", [*log, "start"])
        if len(log) == 0:
            await self.ctx.storage.set_alarm(0)  # due at once, while this one runs
            await asyncio.sleep(0.2)
        log = await self.ctx.storage.get("log")
        await self.ctx.storage.put("log", [*log, "end"])


def test_one_alarm_of_an_object_runs_at_a_time_and_a_new_time_set_meanwhile_stands(core, run) -> None:
    async def main() -> Any:
        rt, jobs = harness({"S": Slow})
        await call(rt, jobs, lambda env: env.S.get_by_name("s").set(0))
        await asyncio.sleep(0.6)
        log = await call(rt, jobs, lambda env: env.S.get_by_name("s").log())
        await rt.aclose()
        return log

    assert run(main()) == ["start", "end", "start", "end"]


def test_an_alarm_runs_after_its_object_was_evicted_and_needs_a_handler(core, run) -> None:
    class NoHandler(DurableObject):
        async def set(self) -> str:
            try:
                await self.ctx.storage.setAlarm(0)
            except TypeError as exc:
                return str(exc)
            return "set"

    async def main() -> Any:
        rt, jobs = harness({"A": Alarmed, "N": NoHandler}, durable_idle_s=0.05)
        await call(rt, jobs, lambda env: env.A.get_by_name("e").set(0.3))
        await asyncio.sleep(0.15)
        evicted = (await _namespaces(rt))["A"].live_count == 0
        await asyncio.sleep(0.4)
        state = await call(rt, jobs, lambda env: env.A.get_by_name("e").status())
        refused = await call(rt, jobs, lambda env: env.N.get_by_name("n").set())
        await rt.aclose()
        return evicted, state, refused

    evicted, state, refused = run(main())
    assert evicted and state == [[[0, False, None]], None]
    assert refused == "Your Durable Object class must have an alarm() handler in order to call setAlarm()"


async def _namespaces(rt: Runtime) -> dict[str, Any]:
    return {ns.class_name[0]: ns for ns in rt.extension(DurableObjects)._namespaces.values()}


def test_the_workers_module_counter_example_runs_unchanged(core, run) -> None:
    counter = workers.load(Path(__file__).resolve().parent.parent / "examples" / "python_workers" / "counter.py")
    module = sys.modules[counter.__module__]

    async def main() -> list[str]:
        rt = Runtime()
        rt.add_worker("counter", counter, durable_objects={"COUNTERS": module.Counter})
        out = []
        for path in ("/increment?name=A", "/increment?name=A", "/increment?name=B", "/decrement?name=A",
                     "/?name=A", "/nowhere?name=A", "/"):
            response = await rt.dispatch("counter", Request("https://example.com" + path))
            out.append(f"{response.status} {await response.text()}")
        await rt.aclose()
        return out

    assert run(main()) == [
        "200 Durable Object 'A' count: 1", "200 Durable Object 'A' count: 2",
        "200 Durable Object 'B' count: 1", "200 Durable Object 'A' count: 1",
        "200 Durable Object 'A' count: 1", "404 Not found",
        "200 Select a Durable Object to contact by using the `name` URL query string parameter, "
        "for example, ?name=A",
    ]
