"""The auth Worker: checks the bearer token and says who the caller is in x-user."""

from __future__ import annotations

from fastbind import Request, Response, WorkerEntrypoint


class Auth(WorkerEntrypoint):
    async def fetch(self, request: Request) -> Response:
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        user = self.env.TOKENS.get(token) if scheme.lower() == "bearer" else None
        if user is None:
            return Response.json(
                {"error": "a valid bearer token is required"},
                status=401,
                headers={"www-authenticate": 'Bearer realm="bookshop"'},
            )
        role = "admin" if user in self.env.ADMINS else "reader"
        return Response(None, status=204, headers={"x-user": user, "x-role": role})
