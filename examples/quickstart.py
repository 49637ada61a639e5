"""Two bound Workers: a gateway that asks an auth Worker who the user is."""

from __future__ import annotations

from typing import Any

import uvloop

from fastbind import Request, Response, Runtime, WorkerEntrypoint


class Auth(WorkerEntrypoint):
    async def fetch(self, request: Request) -> Response:
        token = request.headers.get("authorization", "")
        if token != "Bearer secret":
            return Response("unauthorized", status=401)
        return Response(None, headers={"x-user": "42"})


async def gateway(request: Request, env: Any, ctx: Any) -> Response:
    auth: Response = await env.AUTH.fetch(request)
    if not auth.ok:
        return auth
    return Response.json({"user": auth.headers.get("x-user"), "mode": env.MODE})


def build() -> Runtime:
    rt = Runtime(on_pipeline_end=lambda report: print("ledger:", *report.subrequests))
    rt.add_worker("gateway", gateway, services={"AUTH": "auth"}, vars={"MODE": "demo"})
    rt.add_worker("auth", Auth)
    return rt


async def main() -> None:
    rt = build()
    request = Request("https://example.com/me", headers={"authorization": "Bearer secret"})
    response = await rt.dispatch("gateway", request)
    print(response.status, await response.json())


if __name__ == "__main__":
    uvloop.run(main())
