"""Cloudflare-style Python Workers, unchanged, bound together in one fastbind Runtime.

``greeter.py``, ``echo.py`` and ``gateway.py`` are written as the Python Workers
documentation writes them (``from workers import ...``); ``counter.py`` is Cloudflare's
Durable Object counter example ("Build a counter", its Python tab), as it is there.
This script is their ``wrangler.toml``: it loads each main module, declares the vars,
the service bindings and the Durable Object namespace (``COUNTERS``, class ``Counter``),
and sends each one request per route.

    python examples/python_workers/run.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvloop

from fastbind import Request, Runtime, workers

HERE = Path(__file__).resolve().parent


def build() -> Runtime:
    rt = Runtime()
    rt.add_worker("greeter", workers.load(HERE / "greeter.py"), vars={"GREETING": "Howdy"})
    rt.add_worker("echo", workers.load(HERE / "echo.py"), vars={"MODE": "demo"})
    rt.add_worker(
        "gateway",
        workers.load(HERE / "gateway.py"),
        services={"GREETER": "greeter", "ECHO": "echo"},
    )
    counter = workers.load(HERE / "counter.py")
    counter_module = sys.modules[counter.__module__]
    rt.add_worker("counter", counter, durable_objects={"COUNTERS": counter_module.Counter})
    return rt


async def main() -> None:
    rt = build()
    requests = [
        Request("https://example.com/greet?name=Ada"),
        Request("https://example.com/echo", method="POST", body=b'{"n": 1}'),
        Request("https://example.com/rpc"),
    ]
    for request in requests:
        response = await rt.dispatch("gateway", request)
        print(request.method, request.url, "->", response.status, await response.text())
    for path in ("/increment?name=A", "/increment?name=A", "/decrement?name=A", "/?name=A"):
        request = Request("https://example.com" + path)
        response = await rt.dispatch("counter", request)
        print(request.method, request.url, "->", response.status, await response.text())


if __name__ == "__main__":
    uvloop.run(main())
