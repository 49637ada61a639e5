"""One suite, two implementations: every test that takes ``core`` runs on both."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from fastbind import core as cores

CORES = [pytest.param(cores.twin, id="py")]
if cores.compiled is not None:
    CORES.insert(0, pytest.param(cores.compiled, id="c"))
elif not cores.NO_EXTENSIONS:
    CORES.insert(0, pytest.param(None, id="c", marks=pytest.mark.skip("compiled core not built")))


@pytest.fixture(params=CORES)
def core(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The core implementation under test; Runtimes built in the test use it.

    After the test, every counter that must return to zero is checked.
    """
    module = request.param
    monkeypatch.setattr(cores, "impl", module)
    yield module
    assert module.live_counts() == {"pipelines": 0, "invocations": 0, "tasks": 0}


@pytest.fixture
def run() -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """Run a coroutine to its end on a fresh uvloop loop (asyncio's with FASTBIND_LOOP=asyncio)."""

    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        if os.environ.get("FASTBIND_LOOP") == "asyncio":
            return asyncio.run(asyncio.wait_for(coro, 30))
        import uvloop

        return uvloop.run(asyncio.wait_for(coro, 30))

    return runner


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak tests run only when asked for (``-m soak``)."""
    if "soak" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="a soak test: run with -m soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
