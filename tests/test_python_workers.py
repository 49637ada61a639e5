"""Cloudflare Python Workers code runs unchanged (fastbind.workers), on both cores."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import types
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest

from fastbind import ConfigError, Request, Runtime, service, workers
from fastbind import Response as FastbindResponse
from fastbind import WorkerEntrypoint as FastbindEntrypoint

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "python_workers"


@pytest.fixture(autouse=True)
def import_state(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Undo what loading Workers does to the import system: sys.path entries, modules."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    roots = (str(EXAMPLES), str(tmp_path_factory.getbasetemp()))
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(roots):
            del sys.modules[name]


def write_module(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def serve(run: Any, rt: Runtime, entry: str, request: Request) -> tuple[int, str, Any]:
    async def go() -> tuple[int, str, Any]:
        resp = await rt.dispatch(entry, request)
        return resp.status, await resp.text(), resp.headers

    return run(go())


# -- the three documented-style Workers, unchanged -----------------------------------


@pytest.fixture
def example_runtime(core: Any) -> Runtime:
    rt = Runtime()
    rt.add_worker("greeter", workers.load(EXAMPLES / "greeter.py"), vars={"GREETING": "Howdy"})
    rt.add_worker("echo", workers.load(EXAMPLES / "echo.py"), vars={"MODE": "test"})
    rt.add_worker(
        "gateway", workers.load(EXAMPLES / "gateway.py"),
        services={"GREETER": "greeter", "ECHO": "echo"},
    )
    return rt


def test_class_worker_parses_the_url_and_reads_env(example_runtime: Runtime, run: Any) -> None:
    status, text, headers = serve(
        run, example_runtime, "greeter", Request("https://example.com/?name=Ada")
    )
    assert (status, text, headers.get("x-greeting")) == (200, "Hello, Ada!", "Howdy")


def test_on_fetch_worker_reads_json_and_answers_json(example_runtime: Runtime, run: Any) -> None:
    request = Request("https://example.com/", method="POST", body=b'{"n": [1, 2]}')
    status, text, headers = serve(run, example_runtime, "echo", request)
    assert status == 201
    assert headers.get("content-type") == "application/json"
    assert text == '{"echo": {"n": [1, 2]}, "mode": "test"}'  # what json.dumps writes


def test_gateway_forwards_through_env_fetch(example_runtime: Runtime, run: Any) -> None:
    status, text, headers = serve(
        run, example_runtime, "gateway", Request("https://example.com/greet?name=Bo")
    )
    assert (status, text, headers.get("x-greeting")) == (200, "Hello, Bo!", "Howdy")
    request = Request("https://example.com/echo", method="POST", body=b"[true]")
    assert serve(run, example_runtime, "gateway", request)[:2] == (
        201, '{"echo": [true], "mode": "test"}',
    )


def test_gateway_calls_a_sync_method_over_rpc(example_runtime: Runtime, run: Any) -> None:
    status, text, _ = serve(run, example_runtime, "gateway", Request("https://example.com/rpc"))
    assert (status, text) == (200, "Result: Howdy, RPC")


def test_unknown_route(example_runtime: Runtime, run: Any) -> None:
    assert serve(run, example_runtime, "gateway", Request("https://e/x"))[:2] == (404, "Not Found")


# -- load(): which handler a module gives ---------------------------------------------


def test_default_wins_over_on_fetch(tmp_path: Path) -> None:
    path = write_module(tmp_path, "both", """
        from workers import WorkerEntrypoint, Response

        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                return Response("class")

        async def on_fetch(request):
            return Response("function")
    """)
    handler = workers.load(path)
    assert isinstance(handler, type) and handler.__name__ == "Default"


def test_named_entrypoint_and_errors(tmp_path: Path) -> None:
    path = write_module(tmp_path, "named", """
        from workers import WorkerEntrypoint

        class Admin(WorkerEntrypoint):
            pass

        Default = 42
    """)
    assert workers.load(path, entrypoint="Admin").__name__ == "Admin"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match='"Default" must be a WorkerEntrypoint subclass'):
        workers.load(path)
    with pytest.raises(ConfigError, match='has no entrypoint class "Missing"'):
        workers.load(path, entrypoint="Missing")
    empty = write_module(tmp_path, "empty", "X = 1\n")
    with pytest.raises(ConfigError, match='neither a "Default" WorkerEntrypoint class nor an "on_fetch"'):
        workers.load(empty)
    with pytest.raises(ConfigError, match="does not exist"):
        workers.load(tmp_path / "nope.py")


def test_module_object_and_dotted_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("inline_worker")

    async def on_fetch(request: Request) -> FastbindResponse:
        return FastbindResponse("inline")

    module.on_fetch = on_fetch  # type: ignore[attr-defined]
    assert callable(workers.load(module))
    write_module(tmp_path, "dotted_worker", """
        from fastbind import WorkerEntrypoint

        class Default(WorkerEntrypoint):
            pass
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    handler = workers.load("dotted_worker")
    assert isinstance(handler, type) and issubclass(handler, FastbindEntrypoint)


def test_same_file_loads_once_and_same_names_stay_apart(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    source = """
        from workers import WorkerEntrypoint

        class Default(WorkerEntrypoint):
            pass
    """
    first = write_module(tmp_path / "a", "entry", source)
    second = write_module(tmp_path / "b", "entry", source)
    assert workers.load(first) is workers.load(first)
    assert workers.load(first) is not workers.load(second)


@pytest.mark.parametrize("signature", ["request", "request, env", "request, env, ctx", "*args"])
@pytest.mark.parametrize("kind", ["async def", "def"])
def test_on_fetch_arities_and_sync(core: Any, run: Any, tmp_path: Path, signature: str, kind: str) -> None:
    name = f"arity_{len(signature)}_{kind.replace(' ', '_')}"
    path = write_module(tmp_path, name, f"""
        from workers import Response

        {kind} on_fetch({signature}):
            return Response("ok", 202)
    """)
    rt = Runtime()
    rt.add_worker("w", workers.load(path))
    assert serve(run, rt, "w", Request("https://e/"))[:2] == (202, "ok")


def test_sync_fetch_method_and_context_names(core: Any, run: Any) -> None:
    done: list[str] = []

    async def later() -> None:
        done.append("wait_until ran")

    class Callee(workers.WorkerEntrypoint):
        def fetch(self, request: Request) -> FastbindResponse:  # type: ignore[override]
            self.ctx.waitUntil(later())
            return workers.Response(str(self.ctx.props.get("role")), HTTPStatus.ACCEPTED)

    class Caller(workers.WorkerEntrypoint):
        async def fetch(self, request: Request) -> FastbindResponse:
            assert isinstance(self.ctx, workers.Context)
            assert self.ctx.depth == 1 and self.ctx.invocation is not None
            return await self.env.CALLEE.fetch(request)

    rt = Runtime()
    rt.add_worker("caller", Caller, services={"CALLEE": service("callee", props={"role": "ro"})})
    rt.add_worker("callee", Callee)

    async def go() -> tuple[int, str]:
        resp = await rt.dispatch("caller", Request("https://e/"))
        text = await resp.text()
        for _ in range(5):  # let the wait_until task run
            await asyncio.sleep(0)
        return resp.status, text

    assert run(go()) == (202, "ro")
    assert done == ["wait_until ran"]


def test_named_entrypoint_of_a_loaded_file_over_rpc(core: Any, run: Any, tmp_path: Path) -> None:
    todo = write_module(tmp_path, "todo_app", """
        from workers import WorkerEntrypoint, Response

        class AdminEntrypoint(WorkerEntrypoint):
            async def create_user(self, username):
                return "created " + username

        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                return Response("Hello from my to do app")
    """)
    admin = write_module(tmp_path, "admin_app", """
        from workers import WorkerEntrypoint, Response

        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                return Response(await self.env.ADMIN.create_user("aNewUser"))
    """)
    rt = Runtime()
    rt.add_worker("todo-app", workers.load(todo))
    rt.add_worker(
        "admin-app", workers.load(admin),
        services={"ADMIN": service("todo-app", entrypoint="AdminEntrypoint")},
    )
    assert serve(run, rt, "admin-app", Request("https://e/"))[:2] == (200, "created aNewUser")


# -- the module itself ---------------------------------------------------------------


def test_install_aliases_and_refuses_to_shadow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "workers", raising=False)
    assert workers.install() is workers
    import workers as aliased  # type: ignore[import-not-found]

    assert aliased is workers and aliased.Response is workers.Response
    assert workers.install() is workers  # idempotent
    monkeypatch.setitem(sys.modules, "workers", types.ModuleType("workers"))
    with pytest.raises(ImportError, match="will not replace it"):
        workers.install()


def test_response_takes_the_python_workers_signature() -> None:
    resp = workers.Response("gone", HTTPStatus.GONE, "Gone Away", {"x-a": "1"})
    assert (resp.status, resp.status_text, resp.headers.get("x-a")) == (410, "Gone Away", "1")
    assert isinstance(resp, FastbindResponse)
    built = workers.Response.json({"a": 1}, 201)
    assert (built.status, built.body, built.headers.get("content-type")) == (
        201, b'{"a": 1}', "application/json",
    )
    assert workers.Response.from_json([1], headers={"content-type": "text/x"}).headers.get_all(
        "content-type"
    ) == ["text/x"]
    moved = workers.Response.redirect("https://example.com/", HTTPStatus.MOVED_PERMANENTLY)
    assert (type(moved), moved.status, moved.headers.get("location")) == (
        workers.Response, 301, "https://example.com/",
    )
    with pytest.raises(ValueError):
        workers.Response(None, 99)


def test_response_json_reads_an_instance(run: Any) -> None:
    assert run(workers.Response('{"k": [1]}').json()) == {"k": [1]}


def test_request_is_fastbinds_own() -> None:
    assert workers.Request is Request
    assert workers.handler(len) is len


def test_what_needs_cloudflare_is_named() -> None:
    with pytest.raises(AttributeError, match='does not provide "FormData": it needs the Cloudflare runtime'):
        workers.FormData  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        workers.nothing  # noqa: B018


def test_fetch_is_the_global_outbound_fetch() -> None:
    fetch_module = pytest.importorskip("fastbind.outbound.fetch")
    assert workers.fetch is fetch_module.fetch
