"""Dispatch namespaces with tenants in the gateway's process, on both cores (docs/namespaces.md)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fastbind import (
    ConfigError,
    Request,
    Response,
    Runtime,
    TooManySubrequestsError,
    WorkerCpuLimitError,
    WorkerEntrypoint,
    WorkerNotFoundError,
    fetch,
)
from fastbind.namespaces import add_namespace

ACME = """
from fastbind import Response

async def fetch(request, env, ctx):
    return Response(f"acme {VERSION} {ctx.worker} {env.PLAN}")

VERSION = 1
"""

GLOBEX = """
from fastbind import Response, WorkerEntrypoint
from .words import greeting

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(f"globex {greeting()}")

    async def add(self, a, b):
        return a + b
"""

# A tenant that does what its request asks: burn CPU, make subrequests, fetch, look around.
BUSY = """
import asyncio, time
import fastbind
from fastbind import Response, TooManySubrequestsError

def burn(ms):
    end = time.thread_time_ns() + int(ms * 1e6)
    while time.thread_time_ns() < end:
        pass

async def fetch(request, env, ctx):
    what = request.headers.get("x-do")
    if what == "spin":
        while True:
            pass
    if what == "steps":
        for _ in range(400):
            burn(1)
            await asyncio.sleep(0)
        return Response("finished")
    if what == "task":
        async def background():
            burn(400)
        await asyncio.create_task(background())
        return Response("finished")
    if what == "subrequests":
        made = 0
        try:
            for _ in range(10):
                await env.LEAF.fetch("https://leaf/")
                made += 1
        except TooManySubrequestsError as exc:
            return Response(f"{made} then {exc}")
        return Response(f"{made}")
    if what == "fetch":
        resp = await fastbind.fetch("https://api.example/v1?q=1", headers={"x-key": "k"})
        return Response(f"{resp.status} {await resp.text()}")
    if what == "look":
        found = {"env": sorted(env)}
        try:
            ctx.parent.env
        except AttributeError as exc:
            found["parent_env"] = str(exc)
        try:
            env.SECRET
        except AttributeError as exc:
            found["secret"] = type(exc).__name__
        return Response.json(found)
    return Response("busy")
"""


async def leaf(request, env, ctx):
    return Response("leaf")


async def gateway(request, env, ctx):
    name = request.headers.get("x-tenant", "")
    limits = request.headers.get("x-limits")
    kwargs: dict[str, Any] = {}
    if limits is not None:
        cpu, sub = limits.split(",")
        kwargs["limits"] = {"cpu_ms": float(cpu) if cpu else None, "subrequests": int(sub) if sub else None}
    try:
        if request.headers.get("x-rpc"):
            return Response(str(await env.DISPATCHER.get(name, **kwargs).add(2, 3)))
        return await env.DISPATCHER.get(name, **kwargs).fetch(request)
    except (WorkerNotFoundError, WorkerCpuLimitError) as exc:
        return Response(f"{type(exc).__name__}: {exc}", status=404 if isinstance(exc, WorkerNotFoundError) else 503)


async def egress(request, env, ctx):
    """The outbound Worker: refuses api.example, rewrites anything else to the ORIGIN Worker."""
    if "api.example" in request.url:
        return Response(f"refused {request.url} of {ctx.props['namespace']}/{ctx.props['tenant']}", status=403)
    return await env.ORIGIN.fetch(request)


@pytest.fixture
def tenants(tmp_path: Path) -> Path:
    directory = tmp_path / "tenants"
    directory.mkdir()
    (directory / "acme.py").write_text(ACME)
    (directory / "globex").mkdir()
    (directory / "globex" / "__init__.py").write_text(GLOBEX)
    (directory / "globex" / "words.py").write_text("def greeting():\n    return 'hello'\n")
    (directory / "busy.py").write_text(BUSY)
    (directory / "README.txt").write_text("not a Worker")
    return directory


def make_runtime(tenants: Path, reports: list[Any] | None = None, **options: Any) -> Runtime:
    rt = Runtime(on_pipeline_end=None if reports is None else reports.append)
    options.setdefault("vars", {"PLAN": "free"})
    options.setdefault("services", {"LEAF": "leaf"})
    add_namespace(rt, "customers", tenants, **options)
    rt.add_worker("gateway", gateway, dispatch_namespaces={"DISPATCHER": "customers"}, vars={"SECRET": "s"})
    rt.add_worker("leaf", leaf)
    rt.add_worker("egress", egress, services={"ORIGIN": "leaf"})
    return rt


def call(rt: Runtime, tenant: str, path: str = "/", **headers: str) -> Any:
    async def go() -> tuple[int, str]:
        head = {"x-tenant": tenant, **{k.replace("_", "-"): v for k, v in headers.items()}}
        response = await rt.dispatch("gateway", Request(f"https://{tenant}.example{path}", headers=head))
        return response.status, await response.text()

    return go()


def test_routing_by_name_to_modules_packages_and_rpc(core: Any, run: Any, tenants: Path) -> None:
    reports: list[Any] = []
    rt = make_runtime(tenants, reports)

    async def main() -> list[Any]:
        return [
            await call(rt, "acme"), await call(rt, "globex"), await call(rt, "globex", x_rpc="1"),
        ]

    assert run(main()) == [(200, "acme 1 customers/acme free"), (200, "globex hello"), (200, "5")]
    # Per-tenant accounting: the tenant's name in the ledger.
    assert [(r.caller, r.target, r.kind, r.depth, r.outcome) for r in reports[0].subrequests] == [
        ("gateway", "customers/acme", "binding", 2, "ok")
    ]
    assert reports[2].subrequests[0].target == "customers/globex"
    assert rt.namespace("customers").names() == ["acme", "busy", "globex"]


@pytest.mark.parametrize("name", ["nobody", "../acme", "acme.py", ".hidden", "a/b", ""])
def test_an_unknown_name_raises_worker_not_found_on_use(core: Any, run: Any, tenants: Path, name: str) -> None:
    rt = make_runtime(tenants)
    assert run(call(rt, name)) == (404, "WorkerNotFoundError: Worker not found.")


def test_a_tenant_reaches_only_its_own_bindings(core: Any, run: Any, tenants: Path) -> None:
    rt = make_runtime(tenants)
    status, body = run(call(rt, "busy", x_do="look"))
    assert status == 200
    assert body == (
        '{"env":["LEAF","PLAN"],"parent_env":"An invocation\'s env is readable only by its own code",'
        '"secret":"MissingBindingError"}'
    )


def test_per_call_subrequests_lower_than_the_namespace_win(core: Any, run: Any, tenants: Path) -> None:
    rt = make_runtime(tenants, limits={"subrequests": 5})

    async def main() -> list[Any]:
        return [
            await call(rt, "busy", x_do="subrequests"),                    # the namespace's 5
            await call(rt, "busy", x_do="subrequests", x_limits=",2"),     # the call's 2
            await call(rt, "busy", x_do="subrequests", x_limits=",50"),    # the lower: still 5
        ]

    assert run(main()) == [
        (200, "5 then Too many subrequests."), (200, "2 then Too many subrequests."),
        (200, "5 then Too many subrequests."),
    ]


@pytest.mark.parametrize("what", ["spin", "steps", "task"])
def test_per_call_cpu_lower_than_the_namespace_stops_the_tenant(
    core: Any, run: Any, tenants: Path, what: str
) -> None:
    reports: list[Any] = []
    rt = make_runtime(tenants, reports, limits={"cpu_ms": 10_000})

    async def main() -> list[Any]:
        return [await call(rt, "busy", x_do=what, x_limits="30,"), await call(rt, "acme")]

    started = time.monotonic()
    assert run(main()) == [
        (503, "WorkerCpuLimitError: Worker exceeded CPU time limit."), (200, "acme 1 customers/acme free"),
    ]
    assert time.monotonic() - started < 5  # stopped long before the namespace's 10 s
    assert reports[0].subrequests[0].outcome == "exceeded_cpu"
    assert reports[0].subrequests[0].cpu_ns >= 30e6


def test_an_uncaught_limit_error_answers_503(core: Any, run: Any, tenants: Path) -> None:
    async def plain(request, env, ctx):
        return await env.DISPATCHER.get("busy").fetch(request)

    rt = make_runtime(tenants, limits={"cpu_ms": 30})
    rt.add_worker("plain", plain, dispatch_namespaces={"DISPATCHER": "customers"})
    response = run(rt.dispatch("plain", Request("https://e/", headers={"x-do": "spin"})))
    assert (response.status, run(response.text())) == (503, "Worker exceeded CPU time limit.")


def test_the_outbound_worker_sees_every_fetch_and_may_refuse_or_rewrite(
    core: Any, run: Any, tenants: Path
) -> None:
    reports: list[Any] = []
    rt = make_runtime(tenants, reports, outbound="egress")
    (tenants / "rewritten.py").write_text(
        "import fastbind\nfrom fastbind import Response\n"
        "async def fetch(request, env, ctx):\n"
        "    resp = await fastbind.fetch('https://elsewhere.example/')\n"
        "    return Response(await resp.text())\n"
    )

    async def main() -> list[Any]:
        return [await call(rt, "busy", x_do="fetch"), await call(rt, "rewritten")]

    assert run(main()) == [
        (200, "403 refused https://api.example/v1?q=1 of customers/busy"), (200, "leaf"),
    ]
    assert [(r.caller, r.target, r.kind) for r in reports[0].subrequests] == [
        ("gateway", "customers/busy", "binding"), ("customers/busy", "egress", "binding"),
    ]


def test_the_outbound_worker_does_not_see_the_gateways_own_fetch(core: Any, run: Any, tenants: Path) -> None:
    async def own(request, env, ctx):
        try:
            await fetch("http://127.0.0.1:9/", timeout=2)  # the network: nothing listens there
        except Exception as exc:
            return Response(type(exc).__name__)
        return Response("reached")

    rt = make_runtime(tenants, outbound="egress")
    rt.add_worker("own", own)

    async def main() -> str:
        try:
            return await run_text(rt.dispatch("own", Request("https://e/")))
        finally:
            await rt.aclose()  # its outbound session

    assert run(main()) == "FetchError"


async def run_text(awaitable: Any) -> str:
    return str(await (await awaitable).text())


def test_a_file_changed_on_disk_is_served_at_the_next_request(core: Any, run: Any, tenants: Path) -> None:
    rt = make_runtime(tenants)
    assert run(call(rt, "acme"))[1].startswith("acme 1 ")
    module = tenants / "acme.py"
    module.write_text(ACME.replace("VERSION = 1", "VERSION = 2"))  # the same size
    os.utime(module, ns=(time.time_ns(), time.time_ns() + 1))
    time.sleep(1.05)  # files are looked at, at most, once a second
    assert run(call(rt, "acme"))[1].startswith("acme 2 ")
    module.unlink()
    time.sleep(1.05)
    assert run(call(rt, "acme")) == (404, "WorkerNotFoundError: Worker not found.")


def test_put_and_delete_at_run_time(core: Any, run: Any, tenants: Path) -> None:
    rt = make_runtime(tenants)
    customers = rt.namespace("customers")

    class Initech(WorkerEntrypoint):
        async def fetch(self, request):
            return Response(f"initech {self.env.PLAN} {self.env.TIER}")

    async def main() -> list[Any]:
        results = [await call(rt, "initech")]
        customers.put("initech", Initech, vars={"TIER": "gold"})
        results.append(await call(rt, "initech"))
        customers.put("initech", "from fastbind import Response\n"
                                 "async def fetch(request, env, ctx):\n    return Response('from source')\n")
        results.append(await call(rt, "initech"))
        customers.put("acme", "from fastbind import Response\n"
                              "async def fetch(request, env, ctx):\n    return Response('acme replaced')\n")
        results.append(await call(rt, "acme"))
        results.append(customers.delete("acme"))  # from the directory, and put over it: gone
        results.append(await call(rt, "acme"))
        results.append(customers.delete("acme"))
        customers.put("acme", tenants / "acme.py")
        results.append(await call(rt, "acme"))
        return results

    assert run(main()) == [
        (404, "WorkerNotFoundError: Worker not found."), (200, "initech free gold"), (200, "from source"),
        (200, "acme replaced"), True, (404, "WorkerNotFoundError: Worker not found."), False,
        (200, "acme 1 customers/acme free"),
    ]
    assert "initech" in customers.names() and "acme" in customers.names()


def test_the_lru_keeps_max_loaded_tenants_and_frees_the_rest(core: Any, run: Any, tenants: Path) -> None:
    rt = make_runtime(tenants, max_loaded=2)
    customers = rt.namespace("customers")

    async def main() -> None:
        await call(rt, "acme")
        await call(rt, "globex")
        await asyncio.sleep(1.05)  # recency is kept to the second (when files are looked at)
        await call(rt, "acme")  # used again: globex is now the least recent
        await call(rt, "busy")

    def globex_modules() -> list[str]:
        folder = str(tenants / "globex")
        return [name for name, m in list(sys.modules.items()) if str(getattr(m, "__file__", "")).startswith(folder)]

    run(main())
    assert customers.loaded == ("acme", "busy")
    assert globex_modules() == []  # evicted: its modules are forgotten
    assert run(call(rt, "globex")) == (200, "globex hello")  # loaded again on use
    assert customers.loaded == ("busy", "globex")
    assert len(globex_modules()) == 2  # the package and its words module


def test_a_tenant_that_fails_to_load_raises_why_on_use(core: Any, run: Any, tenants: Path) -> None:
    (tenants / "broken.py").write_text("raise RuntimeError('bad deploy')\n")
    (tenants / "empty.py").write_text("X = 1\n")

    async def gw(request, env, ctx):
        try:
            await env.DISPATCHER.get(request.headers["x-tenant"]).fetch(request)
        except Exception as exc:
            return Response(f"{type(exc).__name__}: {exc}")
        return Response("served")

    rt = make_runtime(tenants)
    rt.add_worker("gw", gw, dispatch_namespaces={"DISPATCHER": "customers"})

    async def main() -> list[str]:
        return [await run_text(rt.dispatch("gw", Request("https://e/", headers={"x-tenant": t})))
                for t in ("broken", "empty")]

    broken, empty = run(main())
    assert broken == (
        'ConfigError: Worker "broken" of dispatch namespace "customers" failed to load: '
        "RuntimeError: bad deploy"
    )
    assert empty.startswith('ConfigError: Worker "empty" of dispatch namespace "customers" defines neither')


def test_declaration_errors(tenants: Path) -> None:
    rt = Runtime()
    with pytest.raises(Exception, match='"limits" has an unknown key "cpu"; did you mean "cpu_ms"'):
        add_namespace(rt, "customers", tenants, limits={"cpu": 5})
    with pytest.raises(Exception, match='"isolation" must be "none" or "process"'):
        add_namespace(rt, "customers", tenants, isolation="container")
    with pytest.raises(Exception, match="is not a directory"):
        add_namespace(rt, "customers", tenants / "acme.py")
    add_namespace(rt, "customers", tenants, outbound="egres")
    rt.add_worker("egress", egress, services={"ORIGIN": "egress"})
    rt.add_worker("gateway", gateway, dispatch_namespaces={"DISPATCHER": "custom"})
    with pytest.raises(Exception, match='refers to namespace "custom", but no such namespace is defined. '
                                        'Did you mean "customers"'):
        rt.validate()
    rt2 = Runtime()
    add_namespace(rt2, "customers", tenants, outbound="egres")
    rt2.add_worker("egress", egress, services={"ORIGIN": "egress"})
    with pytest.raises(Exception, match='outbound Worker "egres" is not defined. Did you mean "egress"'):
        rt2.validate()
    with pytest.raises(LookupError, match='No dispatch namespace named "nope"'):
        rt2.namespace("nope")
    with pytest.raises(ConfigError, match='defines "D" both as a dispatch namespace and as a binding or var'):
        rt2.add_worker("x", gateway, vars={"D": 1}, dispatch_namespaces={"D": "customers"})


def test_metrics_count_subrequests_and_limits_per_tenant(core: Any, run: Any, tenants: Path) -> None:
    metrics = pytest.importorskip("fastbind.metrics")
    pytest.importorskip("prometheus_client")
    rt = make_runtime(tenants)
    counting = metrics.Metrics()
    counting.observe(rt)

    async def main() -> list[Any]:
        return [
            await call(rt, "acme"), await call(rt, "acme"), await call(rt, "busy", x_do="subrequests"),
            await call(rt, "busy", x_do="spin", x_limits="30,"),
        ]

    answers = run(main())
    assert [status for status, _ in answers] == [200, 200, 200, 503]
    text = counting.text().decode()
    lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
             if line.startswith(("fastbind_subrequests_total", "fastbind_limit_exceeded_total"))}
    call_acme = 'caller="gateway",kind="binding",outcome="ok",target="customers/acme",tenant="customers/acme"'
    leaf = 'caller="customers/busy",kind="binding",outcome="ok",target="leaf",tenant="customers/busy"'
    spin = 'caller="gateway",kind="binding",outcome="exceeded_cpu",target="customers/busy",tenant="customers/busy"'
    assert lines[f"fastbind_subrequests_total{{{call_acme}}}"] == 2.0
    assert lines[f"fastbind_subrequests_total{{{leaf}}}"] == 10.0
    assert lines[f"fastbind_subrequests_total{{{spin}}}"] == 1.0
    assert lines['fastbind_limit_exceeded_total{limit="cpu_ms"}'] == 1.0
