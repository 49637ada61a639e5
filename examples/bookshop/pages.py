"""The pages Worker: a static-ish site with ETags, so that browsers revalidate cheaply."""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

from fastbind import Request, Response, WorkerEntrypoint

_STYLE = b"body { font: 16px/1.5 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; }\n"
_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{site}</title><link rel="stylesheet" href="/static/style.css"></head>
<body>
<h1>{site}</h1>
<p>The catalogue is at <a href="/api/books">/api/books</a> (send <code>Authorization: Bearer demo-token</code>).</p>
</body>
</html>
"""


class Pages(WorkerEntrypoint):
    async def fetch(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response("method not allowed\n", status=405, headers={"allow": "GET, HEAD"})
        path = urlsplit(request.url).path
        if path in ("/", "/index.html"):
            body = _PAGE.format(site=self.env.SITE).encode()
            return _static(request, body, "text/html; charset=utf-8", "no-cache")
        if path == "/static/style.css":
            return _static(request, _STYLE, "text/css; charset=utf-8", "public, max-age=3600")
        return Response("not found\n", status=404, headers={"content-type": "text/plain; charset=utf-8"})


def _static(request: Request, body: bytes, content_type: str, cache: str) -> Response:
    etag = '"' + hashlib.blake2s(body, digest_size=8).hexdigest() + '"'
    headers = {"etag": etag, "cache-control": cache}
    if request.headers.get("if-none-match") == etag:
        return Response(None, status=304, headers=headers)
    return Response(body, headers={**headers, "content-type": content_type})
