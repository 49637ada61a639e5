"""fastbind.toml (docs/design.md, "The config file"): what it builds, every error it reports, `fastbind check`."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fastbind import ConfigError, Limits, Request, Runtime
from fastbind.bindings import RemoteBinding, ServiceBinding
from fastbind.cli import main as cli_main
from fastbind.config import binding_cycles, load_config, read_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

AUTH = """
from fastbind import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(None, headers={"x-user": self.env.USER, "x-role": self.ctx.props.get("role", "")})

class Admin(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(None, headers={"x-user": "admin", "x-role": self.ctx.props.get("role", "")})
"""

GATEWAY = """
from fastbind import Response

async def gateway(request, env, ctx):
    auth = await env.AUTH.fetch(request)
    admin = await env.ADMIN.fetch(request.url)
    return Response.json({
        "user": auth.headers.get("x-user"), "admin_role": admin.headers.get("x-role"),
        "mode": env.MODE, "tags": env.TAGS,
    })
"""


@pytest.fixture(autouse=True)
def import_state(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Undo what loading a config does to the import system: sys.path entries, modules."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    roots = (str(tmp_path_factory.getbasetemp()), str(EXAMPLES))
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(roots):
            del sys.modules[name]


Project = Callable[..., Path]


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """Write ``fastbind.toml`` and modules into a fresh folder; returns the config's path."""

    def write(config: str, **modules: str) -> Path:
        for name, source in modules.items():
            path = tmp_path / (name.replace(".", "/") + ".py")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source))
        config_path = tmp_path / "fastbind.toml"
        config_path.write_text(textwrap.dedent(config))
        return config_path

    return write


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


# -- what a config builds ------------------------------------------------------------------


def test_a_config_builds_a_runtime_with_limits_vars_and_bindings(core: Any, run: Any, project: Project) -> None:
    path = project(
        """
        [limits]
        depth = 4
        subrequests = 20
        wait_until_s = 1.5

        [[workers]]
        name = "gateway"
        main = "gw:gateway"
        vars = { MODE = "prod", TAGS = ["a", "b"] }
        services = [
          { binding = "AUTH", service = "auth" },
          { binding = "ADMIN", service = "auth", entrypoint = "Admin", props = { role = "ro" } },
          { binding = "ORIGIN", url = "https://origin.example.com/base" },
        ]

        [[workers]]
        name = "auth"
        main = "authmod:Default"
        vars = { USER = "alice" }
        """,
        gw=GATEWAY, authmod=AUTH,
    )
    rt = load_config(path)
    assert isinstance(rt, Runtime) and rt.implementation == core.IMPLEMENTATION
    assert rt.workers == ("gateway", "auth")
    assert rt.limits == Limits(depth=4, subrequests=20, wait_until_s=1.5)

    async def go() -> Any:
        response = await rt.dispatch("gateway", Request("https://example.com/"))
        return await response.json()

    assert run(go()) == {"user": "alice", "admin_role": "ro", "mode": "prod", "tags": ["a", "b"]}
    config = read_config(path)
    assert config.entry == "gateway"
    assert config.workers[0].services == {
        "AUTH": ServiceBinding("auth"),
        "ADMIN": ServiceBinding("auth", "Admin", {"role": "ro"}),
        "ORIGIN": RemoteBinding("https://origin.example.com/base"),
    }


def test_runtime_from_config(core: Any, run: Any) -> None:
    rt = Runtime.from_config(EXAMPLES / "fastbind.toml")
    assert rt.workers == ("gateway", "auth", "books", "pages")

    async def go() -> tuple[int, Any]:
        request = Request("http://shop.test/api/books/2", headers={"authorization": "Bearer demo-token"})
        response = await rt.dispatch("gateway", request)
        return response.status, await response.json()

    assert run(go()) == (200, {"id": 2, "title": "Invisible Cities", "author": "Italo Calvino"})


def test_main_is_imported_beside_the_config_from_any_working_directory(
    core: Any, run: Any, project: Project, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = project(
        """
        [[workers]]
        name = "app"
        main = "shop.app:handler"
        """,
        **{
            "shop.__init__": "",
            "shop.app": """
                from .util import greeting          # relative import inside a package
                from siblinghelper import SUFFIX    # a module beside the config file
                from fastbind import Response

                async def handler(request, env, ctx):
                    return Response(greeting() + SUFFIX)
            """,
            "shop.util": "def greeting():\n    return 'hello'\n",
            "siblinghelper": "SUFFIX = '!'\n",
        },
    )
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    rt = load_config(os.path.relpath(path))

    async def go() -> str:
        return await (await rt.dispatch("app", Request("http://x/"))).text()

    assert run(go()) == "hello!"


def test_main_in_python_workers_style(core: Any, run: Any, project: Project) -> None:
    # "module" picks Default or on_fetch as Cloudflare does; "file.py" loads the file.
    path = project(
        """
        [[workers]]
        name = "a"
        main = "pw_default"
        services = [{ binding = "B", service = "b" }]

        [[workers]]
        name = "b"
        main = "src/entry.py"
        """,
        pw_default="""
            from workers import WorkerEntrypoint, Response

            class Default(WorkerEntrypoint):
                async def fetch(self, request):
                    inner = await self.env.B.fetch(request)
                    return Response("a+" + await inner.text())
        """,
        **{"src.entry": "from workers import Response\n\nasync def on_fetch(request):\n    return Response('b')\n"},
    )
    rt = load_config(path)

    async def go() -> str:
        return await (await rt.dispatch("a", Request("http://x/"))).text()

    assert run(go()) == "a+b"


# -- every error names the file, the Worker and the key -------------------------------------------

WORKER = '[[workers]]\nname = "w"\nmain = "okmod:handler"\n'
OK_MODULE = "from fastbind import Response\n\nasync def handler(request, env, ctx):\n    return Response('ok')\n"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("[[workers]\nname = 1", "invalid TOML: "),
        ("nmae = 1\n" + WORKER, 'the top level has an unknown key "nmae"; expected one of: limits, workers'),
        ("worker = []\n" + WORKER, 'the top level has an unknown key "worker"; did you mean "workers"?'),
        ("limits = 3\n" + WORKER, "[limits] must be a table, not an integer."),
        ("[limits]\ndeph = 3\n" + WORKER, '[limits] has an unknown key "deph"; did you mean "depth"?'),
        ("[limits]\ndepth = 0\n" + WORKER, "[limits] depth must be a positive int, not 0."),
        ("[limits]\nwait_until_s = 'long'\n" + WORKER, "[limits] wait_until_s must be a "),
        ("", "no Workers are defined; add a [[workers]] table."),
        ("workers = []", "no Workers are defined; add a [[workers]] table."),
        ("[workers]\nname = 'w'", '"workers" must be an array of tables ([[workers]]), not a table.'),
        ("[[workers]]\nmain = 'okmod:handler'", 'Worker #1 has no "name".'),
        ("[[workers]]\nname = 7\nmain = 'okmod:handler'", 'Worker #1 "name" must be a non-empty string, not an integer.'),
        (WORKER + WORKER, 'Worker "w" is defined twice.'),
        (WORKER + "mian = 'x'\n", 'Worker "w" has an unknown key "mian"; did you mean "main"?'),
        ("[[workers]]\nname = 'w'", 'Worker "w" has no "main" (e.g. main = "w:Default").'),
        ("[[workers]]\nname = 'w'\nmain = ['x']", 'Worker "w" "main" must be a non-empty string, not an array.'),
        (WORKER + "vars = ['x']\n", 'Worker "w" "vars" must be a table, not an array.'),
        (WORKER + "services = { AUTH = 'auth' }\n", 'Worker "w" "services" must be an array of tables, not a table.'),
        (WORKER + "services = ['auth']\n",
         'Worker "w" services[0] must be a table such as { binding = "AUTH", service = "auth" }, not a string'),
        (WORKER + "services = [{ service = 'w' }]\n",
         'Worker "w" services[0] has no "binding" (the name the Worker uses, e.g. "AUTH").'),
        (WORKER + "services = [{ binding = 'A-B', service = 'w' }]\n",
         'Worker "w" services[0] "binding" must be an identifier string, not \'A-B\'.'),
        (WORKER + "services = [{ binding = 'A', service = 'w' }, { binding = 'A', service = 'w' }]\n",
         'Worker "w" binding "A" is defined twice.'),
        (WORKER + "vars = { A = 1 }\nservices = [{ binding = 'A', service = 'w' }]\n",
         'Worker "w" defines "A" both as a binding and a var.'),
        (WORKER + "services = [{ binding = 'A' }]\n",
         'Worker "w" binding "A" needs "service" (a Worker of this file) or "url" (a Worker served elsewhere).'),
        (WORKER + "services = [{ binding = 'A', service = 'w', url = 'http://x' }]\n",
         'Worker "w" binding "A" has both "service" and "url"; give one of them.'),
        (WORKER + "services = [{ binding = 'A', service = 'w', entrypont = 'E' }]\n",
         'Worker "w" binding "A" has an unknown key "entrypont"; did you mean "entrypoint"?'),
        (WORKER + "services = [{ binding = 'A', url = 'http://x', props = {} }]\n",
         'Worker "w" binding "A" (a remote binding) has an unknown key "props"; expected one of: binding, url'),
        (WORKER + "services = [{ binding = 'A', url = 'ftp://x' }]\n",
         'Worker "w" binding "A" "url" must be an http:// or https:// URL, not \'ftp://x\'.'),
        (WORKER + "services = [{ binding = 'A', url = 'http://' }]\n",
         'Worker "w" binding "A" "url" is not a valid URL: \'http://\'.'),
        (WORKER + "services = [{ binding = 'A', service = 3 }]\n",
         'Worker "w" binding "A" "service" must be a Worker name (a string), not an integer.'),
        (WORKER + "services = [{ binding = 'A', service = 'w', entrypoint = 'no such' }]\n",
         'Worker "w" binding "A" "entrypoint" must be a class name (a string), not \'no such\'.'),
        (WORKER + "services = [{ binding = 'A', service = 'w', props = 'ro' }]\n",
         'Worker "w" binding "A" "props" must be a table, not a string'),
    ],
)
def test_shape_errors(project: Project, config: str, message: str) -> None:
    path = project(config, okmod=OK_MODULE)
    error = config_error(path)
    assert error.startswith(f"{path}: "), error
    assert message in error


def test_the_binding_error_of_the_contract(project: Project) -> None:
    path = project(
        """
        [[workers]]
        name = "gateway"
        main = "okmod:handler"
        services = [{ binding = "AUTH", service = "auth" }]
        """,
        okmod=OK_MODULE,
    )
    assert config_error(path) == (
        f'{path}: Worker "gateway" binding "AUTH" refers to a service "auth", but no such service is defined.'
    )


def test_the_error_names_the_file_as_given(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    path = project('[[workers]]\nname = "gateway"\nmain = "okmod:handler"\nservices = [{ binding = "AUTH", service = "auth" }]\n',
                   okmod=OK_MODULE)
    monkeypatch.chdir(path.parent)
    with pytest.raises(ConfigError, match=r'^fastbind\.toml: Worker "gateway" binding "AUTH" refers to'):
        load_config("fastbind.toml")


def test_unknown_named_entrypoint(project: Project) -> None:
    path = project(
        """
        [[workers]]
        name = "gateway"
        main = "okmod:handler"
        services = [{ binding = "AUTH", service = "auth", entrypoint = "Nope" }]

        [[workers]]
        name = "auth"
        main = "okmod:handler"
        """,
        okmod=OK_MODULE,
    )
    assert config_error(path) == (
        f'{path}: Worker "gateway" binding "AUTH" refers to service "auth" with a named entrypoint '
        '"Nope", but "auth" has no such named entrypoint.'
    )


@pytest.mark.parametrize(
    ("main", "modules", "message"),
    [
        ("missingmod:handler", {}, 'main "missingmod:handler": no module named "missingmod" (looked in '),
        ("okmod:nothere", {"okmod": OK_MODULE}, 'main "okmod:nothere": module "okmod" has no attribute "nothere".'),
        ("okmod:", {"okmod": OK_MODULE}, 'main "okmod:" must be "module:attribute", e.g. "w:Default".'),
        ("ok-mod:x", {}, 'main "ok-mod:x" must be "module:attribute", e.g. "w:Default".'),
        ("broken:handler", {"broken": "1 / 0\n"},
         'main "broken:handler": importing broken failed: ZeroDivisionError: division by zero'),
        ("needsdep:handler", {"needsdep": "import not_installed_anywhere\n"},
         "main \"needsdep:handler\": importing needsdep failed: ModuleNotFoundError: No module named 'not_installed_anywhere'"),
        ("notaworker:VALUE", {"notaworker": "VALUE = 42\n"},
         'Worker "w" main "notaworker:VALUE" is not a Worker: it must name a WorkerEntrypoint subclass '
         "or an async function (request, env, ctx)."),
        ("plainmod", {"plainmod": "X = 1\n"},
         'main "plainmod": Python Worker module "plainmod" defines neither a "Default" WorkerEntrypoint '
         'class nor an "on_fetch" function'),
        ("nofile.py", {}, 'main "nofile.py": no such file '),
    ],
)
def test_main_errors(project: Project, main: str, modules: dict[str, str], message: str) -> None:
    path = project(f'[[workers]]\nname = "w"\nmain = "{main}"\n', **modules)
    error = config_error(path)
    assert error.startswith(f'{path}: Worker "w" '), error
    assert message in error


def test_a_module_of_the_same_name_imported_elsewhere_is_not_taken_silently(
    project: Project, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = tmp_path_factory.mktemp("other")
    (other / "samename.py").write_text("X = 1\n")
    sys.path.insert(0, str(other))
    __import__("samename")
    path = project('[[workers]]\nname = "w"\nmain = "samename:handler"\n', samename=OK_MODULE)
    error = config_error(path)
    assert 'a different module "samename" is already imported (from ' in error
    assert "rename one of the two." in error


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=rf"^{missing}: cannot read the config file: No such file or directory\.$"):
        load_config(missing)


def test_errors_come_before_any_worker_code_runs(project: Project, tmp_path: Path) -> None:
    # The shape of the whole file is checked before the first main is imported.
    marker = tmp_path / "imported"
    path = project(
        f'[[workers]]\nname = "w"\nmain = "sideeffect:handler"\n\n[[workers]]\nname = 5\nmain = "x:y"\n',
        sideeffect=f"open({str(marker)!r}, 'w').close()\n" + OK_MODULE,
    )
    with pytest.raises(ConfigError, match='Worker #2 "name"'):
        load_config(path)
    assert not marker.exists()


# -- the binding graph: cycles and `fastbind check` -------------------------------------------------


def test_binding_cycles(project: Project) -> None:
    path = project(
        """
        [[workers]]
        name = "a"
        main = "okmod:handler"
        services = [{ binding = "B", service = "b" }, { binding = "LEAF", service = "leaf" }]
        [[workers]]
        name = "b"
        main = "okmod:handler"
        services = [{ binding = "A", service = "a" }, { binding = "LEAF", service = "leaf" }]
        [[workers]]
        name = "leaf"
        main = "okmod:handler"
        services = [{ binding = "SELF", service = "leaf" }, { binding = "FAR", url = "https://far.example" }]
        """,
        okmod=OK_MODULE,
    )
    assert binding_cycles(read_config(path)) == {("a", "B"), ("b", "A"), ("leaf", "SELF")}


def test_check_prints_the_binding_graph(capsys: pytest.CaptureFixture[str]) -> None:
    config = EXAMPLES / "fastbind.toml"
    assert cli_main(["check", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f'{config}: OK, 4 Workers; "gateway" is served by default.',
        "gateway  (bookshop.gateway:Gateway)",
        "  AUTH -> auth",
        "  BOOKS -> books",
        "  PAGES -> pages",
        "auth  (bookshop.auth:Auth)",
        "books  (bookshop.books:on_fetch)",
        "pages  (bookshop.pages:Pages)",
    ]


def test_check_marks_cycles_and_reports_errors(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    path = project(
        """
        [[workers]]
        name = "a"
        main = "okmod:handler"
        services = [
          { binding = "SELF", service = "a" },
          { binding = "ADMIN", service = "a", entrypoint = "Admin", props = { role = "ro" } },
          { binding = "FAR", url = "https://far.example" },
        ]
        """,
        okmod=OK_MODULE + "\nfrom fastbind import WorkerEntrypoint\n\nclass Admin(WorkerEntrypoint):\n    pass\n",
    )
    assert cli_main(["check", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:5] == [
        "a  (okmod:handler)",
        "  SELF -> a  (cycle)",
        '  ADMIN -> a entrypoint Admin props {"role": "ro"}  (cycle)',
        "  FAR -> https://far.example  (remote)",
    ]
    path.write_text('[[workers]]\nname = "a"\nmain = "okmod:handler"\nservices = [{ binding = "X", service = "x" }]\n')
    assert cli_main(["check", str(path)]) == 1
    assert capsys.readouterr().err == (
        f'fastbind: {path}: Worker "a" binding "X" refers to a service "x", but no such service is defined.\n'
    )



def test_check_suggests_a_misspelt_service_and_entrypoint(project: Project, capsys: Any) -> None:
    path = project(
        """
        [[workers]]
        name = "gateway"
        main = "okmod:handler"
        services = [{ binding = "AUTH", service = "auht" }]

        [[workers]]
        name = "auth"
        main = "okmod:handler"
        """,
        okmod=OK_MODULE + "\nfrom fastbind import WorkerEntrypoint\n\nclass Admin(WorkerEntrypoint):\n    pass\n",
    )
    assert cli_main(["check", str(path)]) == 1
    assert capsys.readouterr().err == (
        f'fastbind: {path}: Worker "gateway" binding "AUTH" refers to a service "auht", but no such service '
        'is defined. Did you mean "auth"?\n'
    )
    path.write_text(path.read_text().replace('service = "auht" }', 'service = "auth", entrypoint = "Admn" }'))
    assert cli_main(["check", str(path)]) == 1
    assert capsys.readouterr().err == (
        f'fastbind: {path}: Worker "gateway" binding "AUTH" refers to service "auth" with a named entrypoint '
        '"Admn", but "auth" has no such named entrypoint. Did you mean "Admin"?\n'
    )

ROOMS_MODULE = '''
from fastbind import DurableObject, Response


class Room(DurableObject):
    async def fetch(self, request):
        n = (await self.state.storage.get("n") or 0) + 1
        await self.state.storage.put("n", n)
        return Response(str(n))


async def on_fetch(request, env, ctx):
    return await env.ROOMS.get(env.ROOMS.id_from_name("lobby")).fetch(request)
'''


def test_durable_objects_declared_in_a_config(tmp_path, run) -> None:
    from fastbind import Request, Runtime

    (tmp_path / "cfg_rooms.py").write_text(ROOMS_MODULE)
    cfg = tmp_path / "fastbind.toml"
    cfg.write_text(
        '[[workers]]\nname = "chat"\nmain = "cfg_rooms:on_fetch"\n'
        'durable_objects = [{ binding = "ROOMS", class_name = "Room" }]\n'
    )
    rt = Runtime.from_config(cfg)

    async def main():
        out = []
        for _ in range(3):
            out.append(await (await rt.dispatch("chat", Request("https://x/"))).text())
        await rt.aclose()
        return out

    assert run(main()) == ["1", "2", "3"]


def test_an_unknown_durable_object_class_is_a_config_error(tmp_path) -> None:
    import pytest

    from fastbind import ConfigError, Runtime

    (tmp_path / "cfg_rooms2.py").write_text(ROOMS_MODULE)
    cfg = tmp_path / "fastbind.toml"
    cfg.write_text(
        '[[workers]]\nname = "chat"\nmain = "cfg_rooms2:on_fetch"\n'
        'durable_objects = [{ binding = "ROOMS", class_name = "Lobby" }]\n'
    )
    with pytest.raises(ConfigError, match=r'fastbind.toml: Worker "chat".*Lobby'):
        Runtime.from_config(cfg)
