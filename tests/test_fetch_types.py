"""Request, Response and Headers: the Fetch API contract (docs/design.md, "The Fetch API types")."""

from __future__ import annotations

import pytest

from fastbind import Headers, Request, Response
from fastbind.errors import BODY_USED_MESSAGE


async def agen(*chunks: bytes):
    for chunk in chunks:
        yield chunk


def test_relative_url_is_rejected() -> None:
    with pytest.raises(TypeError, match=r"^Invalid URL: /login$"):
        Request("/login")
    for bad in ("example.com/x", "https://", "", "http://a b/", "http://h:65536/", "http://[::1/"):
        with pytest.raises(TypeError, match="Invalid URL"):
            Request(bad)


def test_request_defaults_and_override() -> None:
    r = Request("https://example.com/a?b=1", headers={"X-A": "1"})
    assert (r.url, r.method, r.body, r.body_used) == ("https://example.com/a?b=1", "GET", None, False)
    r2 = Request(r, method="post", body=b"x")
    assert r2.method == "POST" and r2.url == r.url and r2.headers.get("x-a") == "1"
    assert r.body_used is False  # no body taken from r


def test_request_from_request_takes_its_body() -> None:
    body = b"payload"
    r = Request("https://e.com/", method="PUT", body=body)
    r2 = Request(r)
    assert r2.body is body and r.body_used
    with pytest.raises(TypeError, match="Body has already been used"):
        Request(r)


def test_get_with_body_is_rejected() -> None:
    with pytest.raises(TypeError, match="GET method cannot have a body"):
        Request("https://e.com/", body=b"x")


def test_body_types(run) -> None:
    async def main() -> None:
        mv = memoryview(b"abc")
        assert await Request("https://e/", method="POST", body=mv).bytes() == b"abc"
        assert await Request("https://e/", method="POST", body="hé").text() == "hé"
        assert await Request("https://e/", method="POST", body=bytearray(b"[1]")).json() == [1]
        assert await Response(agen(b"a", b"b")).text() == "ab"
        assert await Response(None).bytes() == b""
        b = b"same"
        assert await Response(b).bytes() is b

    run(main())
    for bad in (1, 2.0, object(), [b"x"], {"a": 1}):
        with pytest.raises(TypeError, match="body must be"):
            Response(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="body must be"):
            Request("https://e/", method="POST", body=bad)  # type: ignore[arg-type]


def test_body_can_be_read_once(run) -> None:
    async def main() -> None:
        r = Response(b"x")
        assert await r.text() == "x"
        assert r.body_used
        with pytest.raises(TypeError) as info:
            await r.bytes()
        assert str(info.value) == BODY_USED_MESSAGE

    run(main())


def test_clone_tees_streams(run) -> None:
    async def main() -> None:
        r = Response(agen(b"a", b"b", b"c"))
        c = r.clone()
        assert await c.bytes() == b"abc"
        assert await r.bytes() == b"abc"

    run(main())


def test_status_range() -> None:
    for status in (199, 600, 0, -1, "200", 200.0, True):
        with pytest.raises(ValueError):
            Response(status=status)  # type: ignore[arg-type]
    assert Response(status=599).ok is False
    assert Response(status=204).ok is True


def test_response_json_and_redirect(run) -> None:
    async def main() -> None:
        r = Response.json({"a": [1, 2]}, status=201, headers={"x-k": "v"})
        assert r.status == 201 and r.headers.get("content-type") == "application/json"
        assert await r.json() == {"a": [1, 2]}
        rd = Response.redirect("https://e.com/next", 307)
        assert rd.status == 307 and rd.headers.get("location") == "https://e.com/next"
        with pytest.raises(ValueError):
            Response.redirect("https://e.com/", 200)

    run(main())


def test_headers_semantics() -> None:
    h = Headers([("Set-Cookie", "a=1"), ("X-A", "1")])
    h.append("set-cookie", "b=2")
    assert h.get("SET-COOKIE") == "a=1, b=2"
    assert h.get_all("set-cookie") == ["a=1", "b=2"]
    assert "x-a" in h and h.has("X-A") and h.get("missing") is None
    h.set("Set-Cookie", "c=3")
    assert h.get_all("set-cookie") == ["c=3"]
    assert list(h) == [("set-cookie", "c=3"), ("x-a", "1")]
    h.delete("X-A")
    assert "x-a" not in h
    assert Headers({"A": " padded "}).get("a") == "padded"


@pytest.mark.parametrize("bad", ["a\r\nb", "a\nb", "a\rb", "a\0b"])
def test_headers_reject_crlf_nul(bad: str) -> None:
    with pytest.raises(ValueError):
        Headers({"x": bad})
    with pytest.raises(ValueError):
        Headers({bad: "x"})
    h = Headers()
    with pytest.raises(ValueError):
        h.set("x", bad)
    with pytest.raises(ValueError):
        h.append(bad, "x")


def test_headers_reject_wrong_types() -> None:
    with pytest.raises(TypeError):
        Headers(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Headers({"x": object()})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        Headers(["ab"])  # type: ignore[list-item]


def test_str_enum_methods_and_item_assignment() -> None:
    import http

    assert Request("https://e/", method=http.HTTPMethod.POST, body=b"x").method == "POST"
    h = Headers()
    h["X-A"] = "1"
    assert h["x-a"] == "1"
    del h["X-A"]
    assert "x-a" not in h


def test_missing_binding_error_is_one_class(core) -> None:
    from fastbind.errors import MissingBindingError

    env = core.Env("w", {"A": 1})
    with pytest.raises(MissingBindingError):
        env.B  # noqa: B018
    with pytest.raises(MissingBindingError):
        env["B"]


def test_header_names_checked_once_are_still_checked_exactly() -> None:
    # A name is checked once and remembered; what is remembered must not let a bad
    # value, another spelling or a look-alike name through, and the memory is bounded.
    from fastbind import headers as headers_module

    class Name(str):
        pass

    for _ in range(2):  # the second time, every name below comes from the memory
        h = Headers({"Content-Type": "a/b", "x-id": " 7\t"})
        assert h.items() == [("content-type", "a/b"), ("x-id", "7")]
        h.append(Name("X-Sub"), "1")
        assert h.get("x-sub") == "1"
        with pytest.raises(ValueError, match="Invalid header value"):
            Headers({"Content-Type": "a\r\nb"})
        with pytest.raises(ValueError, match="Invalid header name"):
            Headers({"content type": "x"})
        with pytest.raises(ValueError, match="Invalid header name"):
            Headers({"\u212aey": "x"})  # KELVIN SIGN lower-cases to an ASCII "k"
        with pytest.raises(TypeError, match="value must be str"):
            Headers({"content-type": None})
    for i in range(2 * headers_module._CHECKED_NAMES_MAX):
        Headers({f"x-made-up-{i}": "1"})
    assert len(headers_module._CHECKED_NAMES) <= headers_module._CHECKED_NAMES_MAX
    assert Headers({"x-made-up-999999": "1"}).get("X-Made-Up-999999") == "1"
