"""The gateway: routes by path, asks AUTH who is calling, forwards to BOOKS or PAGES."""

from __future__ import annotations

from urllib.parse import urlsplit

from fastbind import Request, Response, WorkerEntrypoint


class Gateway(WorkerEntrypoint):
    async def fetch(self, request: Request) -> Response:
        path = urlsplit(request.url).path
        if path.startswith("/api/"):
            return await self.api(request)
        if path == "/whoami":
            auth: Response = await self.env.AUTH.fetch(request.url, headers=request.headers)
            if not auth.ok:
                return auth
            return Response.json({"user": auth.headers.get("x-user"), "role": auth.headers.get("x-role")})
        # Everything else is the public site; the request (and its body) is passed on as it is.
        response: Response = await self.env.PAGES.fetch(request)
        return response

    async def api(self, request: Request) -> Response:
        # Only the headers go to AUTH, so the body is still ours to forward.
        auth: Response = await self.env.AUTH.fetch(request.url, headers=request.headers)
        if not auth.ok:
            return auth
        headers = request.headers.copy()
        headers.set("x-user", auth.headers.get("x-user") or "")
        headers.set("x-role", auth.headers.get("x-role") or "reader")
        # Request(request, headers=...) hands the body over without a copy.
        response: Response = await self.env.BOOKS.fetch(Request(request, headers=headers))
        response.headers.set("x-served-by", "books")
        return response
