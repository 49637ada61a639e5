"""Customer "acme": a function Worker."""

from typing import Any

from fastbind import Request, Response


async def fetch(request: Request, env: Any, ctx: Any) -> Response:
    return Response(f"Welcome to Acme, on the {env.PLATFORM} platform.\n")
