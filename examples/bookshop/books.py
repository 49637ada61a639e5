"""The books Worker: a JSON API over an in-memory catalogue (one per process)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastbind import Request, Response

_BOOKS: dict[int, dict[str, Any]] = {
    1: {"id": 1, "title": "The Left Hand of Darkness", "author": "Ursula K. Le Guin"},
    2: {"id": 2, "title": "Invisible Cities", "author": "Italo Calvino"},
    3: {"id": 3, "title": "The Periodic Table", "author": "Primo Levi"},
}


async def on_fetch(request: Request, env: Any, ctx: Any) -> Response:
    url = urlsplit(request.url)
    parts = url.path.strip("/").split("/")  # ["api", "books", id?]
    if parts[:2] != ["api", "books"] or len(parts) > 3:
        return Response.json({"error": f"no such endpoint: {url.path}"}, status=404)
    if len(parts) == 2:
        if request.method == "GET":
            return list_books(parse_qs(url.query).get("author", [None])[0])
        if request.method == "POST":
            return await add_book(request)
        return _not_allowed("GET, POST")
    try:
        book_id = int(parts[2])
    except ValueError:
        return Response.json({"error": f"not a book id: {parts[2]!r}"}, status=400)
    if request.method == "GET":
        book = _BOOKS.get(book_id)
        if book is None:
            return Response.json({"error": f"no book {book_id}"}, status=404)
        return Response.json(book)
    if request.method == "DELETE":
        if request.headers.get("x-role") != "admin":
            return Response.json({"error": "only an admin may delete books"}, status=403)
        if _BOOKS.pop(book_id, None) is None:
            return Response.json({"error": f"no book {book_id}"}, status=404)
        return Response(None, status=204)
    return _not_allowed("GET, DELETE")


def list_books(author: str | None) -> Response:
    books = [b for b in _BOOKS.values() if author is None or b["author"] == author]
    return Response.json({"books": books, "count": len(books)})


async def add_book(request: Request) -> Response:
    try:
        data = await request.json()
    except ValueError:
        return Response.json({"error": "the body must be JSON"}, status=400)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("title", "author")):
        return Response.json({"error": 'send {"title": "...", "author": "..."}'}, status=422)
    book_id = max(_BOOKS, default=0) + 1
    book = _BOOKS[book_id] = {
        "id": book_id, "title": data["title"], "author": data["author"],
        "added_by": request.headers.get("x-user"),
    }
    return Response.json(book, status=201, headers={"location": f"/api/books/{book_id}"})


def _not_allowed(allow: str) -> Response:
    return Response.json({"error": "method not allowed"}, status=405, headers={"allow": allow})
