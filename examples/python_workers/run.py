"""Three Cloudflare-style Python Workers, unchanged, bound together in one fastbind Runtime.

``greeter.py``, ``echo.py`` and ``gateway.py`` are written as the Python Workers
documentation writes them (``from workers import ...``). This script is the
``wrangler.toml`` of the three: it loads each main module, declares the vars and the
service bindings, and sends the gateway one request per route.

    python examples/python_workers/run.py
"""

from __future__ import annotations

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


if __name__ == "__main__":
    uvloop.run(main())
