"""Dispatch namespaces with ``isolation = "process"``, and namespaces in fastbind.toml (docs/namespaces.md)."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fastbind import ConfigError, Request, Response, Runtime, WorkerCpuLimitError
from fastbind.cli import main as cli_main
from fastbind.config import load_config
from fastbind.namespaces import add_namespace

HOG = """
import time
from fastbind import Response

async def fetch(request, env, ctx):
    if request.url.endswith("/eat"):
        blob = bytearray(400 * 1024 * 1024)  # past the 128 MB cap
        return Response(f"ate {len(blob)}")
    if request.url.endswith("/spin"):
        while True:
            pass
    if request.url.endswith("/moved"):
        return Response.redirect("https://hog.example/a?b=1", 302)
    return Response(f"hog {request.url} {env.PLAN} {dict(ctx.props)} {request.headers.get('x-fastbind-tenant-token')}")
"""

CALM = """
import os
from fastbind import Response

async def fetch(request, env, ctx):
    return Response(f"calm {os.getpid()}")
"""


async def gateway(request, env, ctx):
    name = request.headers.get("x-tenant", "")
    kwargs: dict[str, Any] = {}
    if request.url.endswith("/spin"):
        kwargs["limits"] = {"cpu_ms": 50}
    if name == "hog":
        kwargs["props"] = {"plan": "gold"}
    try:
        return await env.DISPATCHER.get(name, **kwargs).fetch(request)
    except WorkerCpuLimitError as exc:
        return Response(f"caught: {exc}", status=503)


@pytest.fixture
def isolated(tmp_path: Path) -> Path:
    directory = tmp_path / "isolated"
    directory.mkdir()
    (directory / "hog.py").write_text(HOG)
    (directory / "calm.py").write_text(CALM)
    return directory


def test_a_tenant_past_its_memory_cap_is_stopped_and_others_keep_serving(
    core: Any, run: Any, isolated: Path
) -> None:
    rt = Runtime()
    add_namespace(rt, "customers", isolated, isolation="process", memory_mb=128, vars={"PLAN": "free"})
    rt.add_worker("gateway", gateway, dispatch_namespaces={"DISPATCHER": "customers"})

    async def request(tenant: str, path: str = "/") -> tuple[int, str]:
        headers = {"x-tenant": tenant, "x-fastbind-tenant-token": "forged"}
        response = await rt.dispatch("gateway", Request(f"https://{tenant}.example{path}", headers=headers))
        return response.status, await response.text()

    async def main() -> list[Any]:
        results = [await request("calm"), await request("hog", "/moved")]  # a redirect, followed
        eat, calm_meanwhile = await asyncio.gather(request("hog", "/eat"), request("calm"))
        results += [eat, calm_meanwhile, await request("calm"), await request("hog"), await request("hog", "/spin")]
        results.append(await request("nobody"))
        await rt.aclose()
        return results

    (calm, hog, eat, calm_meanwhile, calm_after, hog_again, spin, nobody) = run(main())
    assert calm[0] == 200 and calm[1].startswith("calm ")
    # The tenant sees the request the client sent, its vars and props, and no token.
    assert hog == (200, "hog https://hog.example/a?b=1 free {'plan': 'gold'} None")
    assert eat == (503, "Worker exceeded memory limit.")
    assert calm_meanwhile == calm == calm_after  # the same process served throughout
    assert hog_again == (200, "hog https://hog.example/ free {'plan': 'gold'} None")  # started again
    assert spin == (503, "caught: Worker exceeded CPU time limit.")
    assert nobody == (500, "Internal Server Error")  # WorkerNotFoundError, uncaught


def test_only_the_gateway_can_call_a_tenants_process_and_idle_ones_stop(
    core: Any, run: Any, isolated: Path
) -> None:
    rt = Runtime()
    customers = add_namespace(rt, "customers", isolated, isolation="process", idle_s=0.2, vars={"PLAN": "x"})
    rt.add_worker("gateway", gateway, dispatch_namespaces={"DISPATCHER": "customers"})

    async def main() -> list[Any]:
        first = await rt.dispatch("gateway", Request("https://calm.example/", headers={"x-tenant": "calm"}))
        await first.text()
        port = customers.tenants._processes["calm"].port
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/") as direct:
                forged = (direct.status, await direct.text())
        loaded = customers.loaded
        for _ in range(100):  # stopped after idle_s (0.2 s), looked at every 0.1 s
            if not customers.loaded:
                break
            await asyncio.sleep(0.05)
        await rt.aclose()  # waits for the stopped process to be reaped
        return [first.status, forged, loaded, customers.loaded]

    assert run(main()) == [200, (403, "Forbidden"), ("calm",), ()]


def test_process_namespaces_refuse_what_cannot_cross_a_process(isolated: Path) -> None:
    rt = Runtime()
    with pytest.raises(ConfigError, match='isolation = "process" and an "outbound" Worker'):
        add_namespace(rt, "a", isolated, isolation="process", outbound="egress")
    with pytest.raises(ConfigError, match='binding "KV" must be a remote one'):
        add_namespace(rt, "b", isolated, isolation="process", services={"KV": "kv"})
    ns = add_namespace(rt, "c", isolated, isolation="process")
    with pytest.raises(ConfigError, match="give put\\(\\) module source or a path"):
        ns.put("x", gateway)


CONFIG = """
[[workers]]
name = "gateway"
main = "ns_gateway:gateway"
dispatch_namespaces = [{ binding = "DISPATCHER", namespace = "customers" }]

[[workers]]
name = "egress"
main = "ns_gateway:egress"

[[namespaces]]
name = "customers"
directory = "tenants"
outbound = "egress"
limits = { cpu_ms = 500, subrequests = 3 }
vars = { PLAN = "free" }
"""

GW = """
from fastbind import Response

async def gateway(request, env, ctx):
    return await env.DISPATCHER.get("acme").fetch(request)

async def egress(request, env, ctx):
    return Response("refused", status=403)
"""


@pytest.fixture(autouse=True)
def _forget_the_gateway_module() -> Any:
    yield
    sys.modules.pop("ns_gateway", None)  # each test's project has its own


def write_project(tmp_path: Path, config: str = CONFIG) -> Path:
    (tmp_path / "ns_gateway.py").write_text(GW)
    (tmp_path / "tenants").mkdir(exist_ok=True)
    (tmp_path / "tenants" / "acme.py").write_text(textwrap.dedent("""
        import fastbind
        from fastbind import Response

        async def fetch(request, env, ctx):
            out = await fastbind.fetch("https://api.example/")
            return Response(f"acme {env.PLAN} {out.status}")
    """))
    path = tmp_path / "fastbind.toml"
    path.write_text(config)
    return path


def test_a_config_declares_namespaces_and_check_prints_them(
    core: Any, run: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_project(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    rt = load_config(path)
    response = run(rt.dispatch("gateway", Request("https://e/")))
    assert (response.status, run(response.text())) == (200, "acme free 403")
    assert cli_main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  DISPATCHER -> namespace customers  (dispatch)" in out
    assert "namespace customers  (" in out and "outbound egress; limits cpu_ms=500 subrequests=3): 1 Worker" in out
    assert "\n  acme\n" in out


@pytest.mark.parametrize(("change", "message"), [
    (('namespace = "customers"', 'namespace = "custmers"'),
     'Worker "gateway" dispatch namespace "DISPATCHER" refers to namespace "custmers", which is not '
     'defined; did you mean "customers"?'),
    (("limits = { cpu_ms", "limits = { cpums"), 'namespace "customers" limits has an unknown key "cpums"; did you mean "cpu_ms"?'),
    (('outbound = "egress"', 'outbound = "egres"'),
     'namespace "customers" "outbound" names Worker "egres", which is not defined; did you mean "egress"?'),
    (('directory = "tenants"', 'directroy = "tenants"'), 'namespace "customers" has an unknown key "directroy"; did you mean "directory"?'),
    (('directory = "tenants"', 'directory = "missing"'), 'Dispatch namespace "customers" "directory"'),
    (('dispatch_namespaces = [{ binding = "DISPATCHER", namespace = "customers" }]',
      'dispatch_namespaces = [{ binding = "DISPATCHER", namespaces = "customers" }]'),
     'Worker "gateway" dispatch_namespaces[0] has an unknown key "namespaces"; did you mean "namespace"?'),
])
def test_config_errors_name_the_file_and_the_key(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    path = write_project(tmp_path, CONFIG.replace(*change))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_the_platform_example_routes_by_subdomain(core: Any, run: Any) -> None:
    rt = load_config(Path(__file__).resolve().parent.parent / "examples" / "platform" / "fastbind.toml")

    async def main() -> list[tuple[int, str]]:
        answers = []
        for host in ("acme", "globex", "initech"):
            response = await rt.dispatch("gateway", Request(f"http://{host}.localhost/about"))
            answers.append((response.status, await response.text()))
        await rt.aclose()
        return answers

    try:
        assert run(main()) == [
            (200, "Welcome to Acme, on the example platform.\n"),
            (200, "Globex serves http://globex.localhost/about\n"),
            (404, "No site named 'initech' here."),
        ]
    finally:
        sys.modules.pop("platform_gateway", None)
