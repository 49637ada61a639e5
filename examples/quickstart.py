"""Two Workers in one process: a gateway calls an auth Worker through a service binding."""

import asyncio
from typing import Any

from fastbind import Request, Response, Runtime, WorkerEntrypoint


class Auth(WorkerEntrypoint):  # class style: one instance per invocation
    async def fetch(self, request: Request) -> Response:
        if request.headers.get("authorization") != "Bearer secret":
            return Response("unauthorized", status=401)
        return Response(None, headers={"x-user": "42"})

    async def roles(self, user_id: int) -> list[str]:  # RPC: await env.AUTH.roles(42)
        return ["reader"]


async def gateway(request: Request, env: Any, ctx: Any) -> Response:  # function style
    # Passing a Request hands its body on (no copy): pass a clone to read the body here too.
    auth: Response = await env.AUTH.fetch(request.clone())  # runs Auth in place, at depth 2
    if not auth.ok:
        return auth
    roles = await env.AUTH.roles(42)
    note = await request.text()
    return Response.json({"user": auth.headers.get("x-user"), "roles": roles, "mode": env.MODE, "note": note})


async def main() -> None:
    rt = Runtime(on_pipeline_end=lambda report: print("ledger:", *report.subrequests))
    rt.add_worker("gateway", gateway, services={"AUTH": "auth"}, vars={"MODE": "prod"})
    rt.add_worker("auth", Auth)
    request = Request("https://example.com/me", method="POST", body="hello",
                      headers={"authorization": "Bearer secret"})
    response = await rt.dispatch("gateway", request)
    print(response.status, await response.json())


if __name__ == "__main__":
    asyncio.run(main())
