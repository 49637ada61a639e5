"""Property tests: every input to the Fetch API types and the config loader works or raises the documented error."""

from __future__ import annotations

import asyncio
import json
import math
import string
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import ada_url
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastbind import ConfigError, Headers, Limits, Request, Response, Runtime
from fastbind.errors import BODY_USED_MESSAGE
from fastbind.request import check_url
from fastbind.url import _already_canonical

# Seeded and bounded: the same examples every run, the whole file in a few seconds.
FAST = settings(
    derandomize=True, database=None, deadline=None, max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(FAST, max_examples=40)  # examples that write and import a config file

TOKEN = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
FORBIDDEN_IN_VALUE = "\r\n\0"
KNOWN_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH")
# The only non-ASCII character whose lower() is ASCII: KELVIN SIGN -> "k". A check made
# after lower() would let it through.
KELVIN = "\u212a"


def complete(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on a fresh loop; a reader that hangs fails the test instead of the run."""
    return asyncio.run(asyncio.wait_for(coro, 5))


async def stream(chunks: list[Any]) -> AsyncIterator[Any]:
    for chunk in chunks:
        yield chunk


# -- strategies ------------------------------------------------------------------------------

# Characters that matter to HTTP framing and to the checks: CR, LF, NUL, controls,
# separators, non-ASCII (İ lower-cases to two characters, the Kelvin sign to "k") and tokens.
_TRICKY = "\r\n\0\t \x0b\x7f:;,\"()<>@[]{}/\\=?é\u0130ß\U0001f600" + KELVIN
tricky_text = st.text(alphabet=st.sampled_from(_TRICKY) | st.characters(codec="utf-8"), max_size=40)
token = st.text(alphabet=sorted(TOKEN), min_size=1, max_size=30)
huge = st.integers(min_value=10_000, max_value=300_000).map(lambda n: "v" * n)
header_name = token | tricky_text
header_value = st.text(max_size=60) | tricky_text | huge
not_text = st.none() | st.booleans() | st.binary(max_size=8) | st.lists(st.integers(), max_size=2) | st.builds(object)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


# -- Headers ---------------------------------------------------------------------------------


def _valid_name(name: str) -> bool:
    return bool(name) and all(c in TOKEN for c in name)


@FAST
@given(name=header_name, value=header_value)
def test_a_header_pair_is_stored_as_given_or_refused_with_value_error(name: str, value: str) -> None:
    name_ok = _valid_name(name)
    value_ok = not any(c in value for c in FORBIDDEN_IN_VALUE)
    if name_ok and value_ok:
        headers = Headers([(name, value)])
        assert list(headers) == [(name.lower(), value.strip(" \t"))]
        assert headers.get(name.upper()) == value.strip(" \t") and name in headers
        return
    for build in (lambda: Headers({name: value}), lambda: Headers().append(name, value),
                  lambda: Headers().set(name, value)):
        with pytest.raises(ValueError, match="Invalid header (name|value)"):
            build()


def test_a_non_ascii_name_that_lowercases_to_ascii_is_refused() -> None:
    with pytest.raises(ValueError, match="Invalid header name"):
        Headers([(KELVIN + "-id", "1")])


def test_a_non_ascii_scheme_that_lowercases_to_ascii_is_refused() -> None:
    with pytest.raises(TypeError, match="Invalid URL"):
        Request(KELVIN + "ey:x")


@FAST
@given(value=not_text | st.floats() | st.integers())
def test_a_header_value_of_another_type_is_type_error_or_its_number(value: Any) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        assert Headers({"x-n": value}).get("x-n") == str(value)
    else:
        with pytest.raises(TypeError, match="'x-n' value must be str"):
            Headers({"x-n": value})


@FAST
@given(name=not_text.filter(lambda v: not isinstance(v, str)))
def test_a_header_name_of_another_type_is_type_error(name: Any) -> None:
    with pytest.raises(TypeError, match="Header name must be str"):
        Headers([(name, "v")])


@FAST
@given(init=not_text | st.integers() | st.lists(st.tuples(token), max_size=2) | st.lists(st.text(max_size=3), min_size=1, max_size=2))
def test_headers_init_of_the_wrong_shape_is_type_error(init: Any) -> None:
    if init is None or isinstance(init, (bytes, list)) and not init:  # nothing to iterate
        assert len(Headers(init)) == 0
        return
    with pytest.raises(TypeError):
        Headers(init)


def test_reading_a_header_by_a_name_of_another_type_is_type_error() -> None:
    with pytest.raises(TypeError):
        Headers().get(None)  # type: ignore[arg-type]


_ops = st.lists(
    st.tuples(st.sampled_from(["append", "set", "delete"]), st.sampled_from(["a", "B", "c-d", "A"]),
              st.text(alphabet="xyz \t", max_size=4)),
    max_size=25,
)


@FAST
@given(ops=_ops)
def test_headers_behave_as_an_ordered_list_of_lowercase_pairs(ops: list[tuple[str, str, str]]) -> None:
    headers, copy_before = Headers(), None
    model: list[tuple[str, str]] = []
    for i, (op, name, value) in enumerate(ops):
        lname, stripped = name.lower(), value.strip(" \t")
        if i == len(ops) // 2:
            copy_before = (headers.copy(), list(model))  # copy-on-write: later writes stay ours
        if op == "append":
            headers.append(name, value)
            model.append((lname, stripped))
        elif op == "set":
            headers.set(name, value)  # the first one replaced in place, the others dropped
            first = next((j for j, (n, _) in enumerate(model) if n == lname), None)
            if first is None:
                model.append((lname, stripped))
            else:
                model[first] = (lname, stripped)
                model = [p for j, p in enumerate(model) if j <= first or p[0] != lname]
        else:
            headers.delete(name)
            model = [p for p in model if p[0] != lname]
    assert list(headers) == model
    for name in ("a", "b", "c-d", "zz"):
        values = [v for n, v in model if n == name]
        assert headers.get_all(name.upper()) == values
        assert headers.get(name) == (", ".join(values) if values else None)
        assert headers.has(name) == bool(values)
    if copy_before is not None:
        assert list(copy_before[0]) == copy_before[1]


_raw_name = st.binary(min_size=1, max_size=6).map(lambda b: bytes(c % 128 or 65 for c in b)) | st.sampled_from(
    [b"Host", b"ACCEPT", b"user-agent", b"X-Caf\xe9", b"\xc0b", b"content-type"]
)
_raw_pairs = st.lists(st.tuples(_raw_name, st.binary(max_size=6)), min_size=1, max_size=6)
_READS: dict[str, Callable[[Headers], Any]] = {
    "list": list, "len": len, "items": lambda h: h.items(), "keys": lambda h: list(h.keys()),
    "get": lambda h: h.get("Host"), "get_all": lambda h: h.get_all("accept"),
    "has": lambda h: h.has("user-agent"), "contains": lambda h: "x-caf\xe9" in h,
    "repr": repr, "copy": lambda h: list(h.copy()), "init": lambda h: list(Headers(h)),
    "eq": lambda h: (h == h.copy(), h == Headers()),
}


@FAST
@given(pairs=_raw_pairs, first=st.sampled_from(sorted(_READS)), ops=_ops)
def test_raw_headers_read_as_their_decoded_items(
    pairs: list[tuple[bytes, bytes]], first: str, ops: list[tuple[str, str, str]]
) -> None:
    # Raw pairs stay raw until first read: whatever reads them first sees the decoded
    # items (latin-1, names lower-cased), and the C decoder gives what the Python one does.
    from fastbind import core as cores, headers as headers_module
    from fastbind.embed import raw_request

    model = [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in pairs]
    decoders = [headers_module.decode_raw_headers]
    if cores.compiled is not None:
        from fastbind.http import _raw

        decoders.append(_raw.decode_raw_headers)
    for decode in decoders:
        for given in (pairs, tuple(pairs)):
            raw = raw_request(b"GET", "http://h/", given).headers
            assert decode(raw) == model and raw._items == model and raw._raw is None
    eager, lazy = headers_module.Headers(), raw_request(b"GET", "http://h/", pairs).headers
    eager._items = list(model)
    assert _READS[first](lazy) == _READS[first](eager)
    for op, name, value in ops:
        getattr(lazy, op)(name, *([value] if op != "delete" else []))
        getattr(eager, op)(name, *([value] if op != "delete" else []))
    assert list(lazy) == list(eager) and lazy == eager


# -- Request: URL, method, body --------------------------------------------------------------

_SPECIAL = ("http", "https", "ws", "wss", "ftp")
well_formed_url = st.builds(
    "{}://{}{}".format,
    st.sampled_from(_SPECIAL),
    st.text(alphabet=string.ascii_lowercase + string.digits + ".-", min_size=1, max_size=20).filter(
        lambda h: h[0] not in "/?#"
    ),
    st.text(alphabet=string.ascii_letters + string.digits + "/?#%&=~._-é", max_size=30).map(lambda p: "/" + p),
)
any_url = well_formed_url | st.text(max_size=40) | st.builds(
    "{}{}{}".format, well_formed_url, st.sampled_from(["\r\n", "\0", " ", "\t", "\nx-a: 1"]), st.text(max_size=5)
)


@FAST
@given(url=any_url)
def test_a_url_is_its_standard_serialisation_or_refused_with_invalid_url(url: str) -> None:
    try:
        expected = ada_url.normalize_url(url)
    except ValueError:
        expected = None
    try:
        request = Request(url)
    except TypeError as exc:
        assert expected is None and str(exc) == f"Invalid URL: {url}"
        return
    assert request.url == expected
    assert Request(request.url).url == request.url  # the serialisation is its own
    assert not any(c in request.url for c in "\r\n\0 \t")


@FAST
@given(url=well_formed_url)
def test_a_well_formed_absolute_url_is_accepted(url: str) -> None:
    assert Request(url).url == ada_url.normalize_url(url)
    assert Response.redirect(url).headers.get("location") == Request(url).url


@FAST
@given(url=not_text.filter(lambda v: not isinstance(v, str)) | st.integers())
def test_a_url_of_another_type_is_type_error(url: Any) -> None:
    with pytest.raises(TypeError, match="Request URL must be str"):
        Request(url)


@FAST
@given(method=st.sampled_from(KNOWN_METHODS).map(str.lower) | token | tricky_text
       | not_text.filter(lambda v: v is not None))  # None means the default, GET
def test_a_method_is_a_token_normalised_or_type_error(method: Any) -> None:
    ok = isinstance(method, str) and _valid_name(method)
    if not ok:
        with pytest.raises(TypeError, match="Invalid HTTP method"):
            Request("https://example.com/", method=method)
        return
    expected = method.upper() if method.upper() in KNOWN_METHODS else method
    assert Request("https://example.com/", method=method).method == expected


body_bytes = st.binary(max_size=2_000)
body_kinds = st.sampled_from(["bytes", "bytearray", "memoryview", "str", "stream"])


def _make_body(kind: str, data: bytes) -> tuple[Any, bytes]:
    """A body object of ``kind`` and the bytes a reader must return for it."""
    if kind == "str":
        text = data.decode("latin-1")
        return text, text.encode()
    if kind == "stream":
        return stream([data[i : i + 100] for i in range(0, len(data), 100)]), data
    return {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}[kind](data), data


@FAST
@given(kind=body_kinds, data=body_bytes, owner=st.sampled_from(["request", "response"]))
def test_every_accepted_body_reads_back_once(kind: str, data: bytes, owner: str) -> None:
    body, expected = _make_body(kind, data)
    message = (Request("https://e.com/", method="POST", body=body) if owner == "request"
               else Response(body))
    assert message.body is body  # kept as given, never copied
    assert complete(message.bytes()) == expected and message.body_used
    for reader in (message.bytes, message.text, message.json, message.array_buffer):
        with pytest.raises(TypeError) as exc:
            complete(reader())
        assert str(exc.value) == BODY_USED_MESSAGE


@FAST
@given(kind=body_kinds, data=body_bytes)
def test_a_clone_reads_the_same_bytes_as_its_original(kind: str, data: bytes) -> None:
    body, expected = _make_body(kind, data)
    original = Request("https://e.com/", method="PUT", body=body)
    clone = original.clone()
    assert complete(clone.bytes()) == expected
    assert complete(original.bytes()) == expected


@FAST
@given(data=body_bytes)
def test_text_of_bytes_is_utf8_or_value_error(data: bytes) -> None:
    try:
        expected = data.decode()
    except UnicodeDecodeError:
        with pytest.raises(ValueError):
            complete(Response(data).text())
    else:
        assert complete(Response(data).text()) == expected


@FAST
@given(body=not_text.filter(lambda v: v is not None and not isinstance(v, (bytes, str))) | st.integers() | st.floats())
def test_a_body_of_another_type_is_type_error(body: Any) -> None:
    with pytest.raises(TypeError, match="Request body must be"):
        Request("https://e.com/", method="POST", body=body)
    with pytest.raises(TypeError, match="Response body must be"):
        Response(body)


@FAST
@given(chunks=st.lists(st.binary(max_size=5) | st.integers() | st.none(), min_size=1, max_size=4))
def test_a_stream_that_yields_something_else_than_bytes_is_type_error(chunks: list[Any]) -> None:
    response = Response(stream(chunks))
    if all(isinstance(c, bytes) for c in chunks):
        assert complete(response.bytes()) == b"".join(chunks)
    else:
        with pytest.raises(TypeError, match="must yield bytes"):
            complete(response.bytes())


@FAST
@given(method=st.sampled_from(["GET", "HEAD", "get", "head"]), kind=body_kinds, data=body_bytes)
def test_a_get_or_head_with_a_body_is_type_error(method: str, kind: str, data: bytes) -> None:
    body, _ = _make_body(kind, data)
    with pytest.raises(TypeError, match="method cannot have a body"):
        Request("https://e.com/", method=method, body=body)
    if kind == "stream":
        complete(body.aclose())


# -- Response: status, json, redirect --------------------------------------------------------


@FAST
@given(status=st.integers(-1_000, 2_000) | st.booleans() | st.floats() | st.text(max_size=4) | st.none())
def test_a_status_is_an_int_in_200_to_599_or_value_error(status: Any) -> None:
    if type(status) is int and 200 <= status <= 599:
        response = Response(None, status=status)
        assert response.status == status and response.ok == (status < 300)
    else:
        with pytest.raises(ValueError, match="status must be an int in 200..599"):
            Response(None, status=status)


@FAST
@given(status=st.sampled_from([204, 205, 304]), kind=body_kinds, data=body_bytes)
def test_a_null_body_status_with_a_body_is_type_error(status: int, kind: str, data: bytes) -> None:
    body, _ = _make_body(kind, data)
    with pytest.raises(TypeError, match="null body status"):
        Response(body, status=status)
    if kind == "stream":
        complete(body.aclose())


@FAST
@given(obj=json_values)
def test_response_json_round_trips_or_refuses_with_type_error(obj: Any) -> None:
    try:
        response = Response.json(obj)
    except TypeError:  # orjson.JSONEncodeError: only integers outside 64 bits here
        assert _has_big_int(obj)
        return
    assert response.headers.get("content-type") == "application/json"
    assert complete(response.json()) == obj


def _has_big_int(obj: Any) -> bool:
    if isinstance(obj, int) and not isinstance(obj, bool):
        return not -(2**63) <= obj < 2**64
    if isinstance(obj, list):
        return any(map(_has_big_int, obj))
    if isinstance(obj, dict):
        return any(map(_has_big_int, obj.values()))
    return False


@FAST
@given(status=st.integers(100, 999) | st.booleans())
def test_redirect_status_is_one_of_the_five_or_value_error(status: int) -> None:
    if status in (301, 302, 303, 307, 308) and type(status) is int:
        assert Response.redirect("https://e.com/", status).status == status
    else:
        with pytest.raises(ValueError, match="Redirect status must be one of"):
            Response.redirect("https://e.com/", status)


# -- Limits ----------------------------------------------------------------------------------

limit_value = (st.integers(-3, 40_000) | st.floats() | st.sampled_from([math.inf, -math.inf, math.nan])
               | st.booleans() | st.text(max_size=3) | st.none())


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@FAST
@given(field=st.sampled_from(["depth", "subrequests", "open_connections"]), value=limit_value)
def test_an_int_limit_is_a_positive_int_or_value_error(field: str, value: Any) -> None:
    if type(value) is int and value >= 1:
        assert getattr(Limits(**{field: value}), field) == value
    else:
        with pytest.raises(ValueError, match=f"Limits.{field} must be a positive int"):
            Limits(**{field: value})


@FAST
@given(value=limit_value)
def test_wait_until_s_is_a_finite_number_at_least_zero_or_value_error(value: Any) -> None:
    if _finite_number(value) and value >= 0:
        assert Limits(wait_until_s=value).wait_until_s == value
    else:
        with pytest.raises(ValueError, match="Limits.wait_until_s must be a number"):
            Limits(wait_until_s=value)


@FAST
@given(value=limit_value)
def test_cpu_ms_is_none_or_a_finite_number_from_zero_or_value_error(value: Any) -> None:
    if value is None or _finite_number(value) and value >= 0:
        assert Limits(cpu_ms=value).cpu_ms == value
    else:
        with pytest.raises(ValueError, match="Limits.cpu_ms must be a number"):
            Limits(cpu_ms=value)


@pytest.mark.parametrize("field", ["wait_until_s", "cpu_ms"])
def test_a_nan_limit_is_value_error(field: str) -> None:
    with pytest.raises(ValueError):
        Limits(**{field: math.nan})


def test_a_cpu_limit_is_refused_or_served_never_a_failing_dispatch(core: Any, run: Any) -> None:
    async def worker(request: Request, env: Any, ctx: Any) -> Response:
        return Response("ok")

    try:
        limits = Limits(cpu_ms=1e308)
    except ValueError:
        return
    runtime = Runtime(limits=limits)
    runtime.add_worker("w", worker)
    assert run(runtime.dispatch("w", Request("https://example.com/"))).status == 200


def test_measure_cpu_must_be_a_bool() -> None:
    with pytest.raises(ValueError):
        Limits(measure_cpu="no")  # type: ignore[arg-type]


# -- the config file -------------------------------------------------------------------------

WORKERS_MODULE = '''
from fastbind import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("class")

async def handler(request, env, ctx):
    return Response("function")

NOT_A_WORKER = 42
'''
VALID_MAINS = ("propworkers:Default", "propworkers:handler")


def toml_string(text: str) -> str:
    """A TOML basic string: quote, backslash and control characters escaped, the rest as is."""
    escaped = (
        "\\" + ch if ch in '"\\' else f"\\u{ord(ch):04x}" if ch < " " and ch != "\t" or ch == "\x7f" else ch
        for ch in text
    )
    return '"' + "".join(escaped) + '"'



def toml_value(value: Any) -> str:
    """``value`` as a TOML value: inline tables and arrays, so one line per key."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else "inf" if value > 0 else "-inf"
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def toml_document(config: dict[str, Any]) -> str:
    # Top-level keys only: `workers = [{...}]` reads the same as [[workers]] tables.
    return "".join(f"{toml_string(key)} = {toml_value(value)}\n" for key, value in config.items())


identifier = st.builds(str.__add__, st.sampled_from(string.ascii_uppercase),
                       st.text(alphabet=string.ascii_uppercase + string.digits + "_", max_size=6))
worker_name = st.text(alphabet=string.ascii_lowercase + "-é", min_size=1, max_size=8)
toml_scalar = st.booleans() | st.integers(-10, 10) | st.text(max_size=6) | st.floats(allow_nan=False)


@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(worker_name, min_size=1, max_size=4, unique=True))
    workers = []
    for name in names:
        worker: dict[str, Any] = {"name": name, "main": draw(st.sampled_from(VALID_MAINS))}
        vars_ = draw(st.dictionaries(identifier, toml_scalar, max_size=3))
        if vars_:
            worker["vars"] = vars_
        bindings = draw(st.lists(identifier.filter(lambda b: b not in vars_), max_size=3, unique=True))
        if bindings:
            worker["services"] = [{"binding": b, "service": draw(st.sampled_from(names))} for b in bindings]
        workers.append(worker)
    config: dict[str, Any] = {"workers": workers}
    limits = draw(st.fixed_dictionaries({}, optional={
        "depth": st.integers(1, 64), "subrequests": st.integers(1, 50_000),
        "wait_until_s": st.floats(0, 100, allow_nan=False),
    }))
    if limits:
        config["limits"] = limits
    return config


# One thing wrong in an otherwise valid config: each fault changes the config in place
# and returns a piece of text its ConfigError must hold.
Fault = Callable[[st.DrawFn, dict[str, Any], int], str]
FAULTS: dict[str, Fault] = {}


def fault(function: Fault) -> Fault:
    FAULTS[function.__name__.strip("_").replace("_", " ")] = function
    return function


@fault
def _no_name(draw: st.DrawFn, config: dict[str, Any], index: int) -> str:
    del config["workers"][index]["name"]
    return f'Worker #{index + 1} has no "name"'


@fault
def _no_main(draw: st.DrawFn, config: dict[str, Any], index: int) -> str:
    worker = config["workers"][index]
    del worker["main"]
    return f'Worker "{worker["name"]}" has no "main"'


@fault
def _name_of_a_wrong_type(draw: st.DrawFn, config: dict[str, Any], index: int) -> str:
    config["workers"][index]["name"] = draw(st.sampled_from([7, True, 1.5, [1], {"a": 1}, ""]))
    return f'Worker #{index + 1} "name" must be a non-empty string'


@fault
def _other_key_of_a_wrong_type(draw: st.DrawFn, config: dict[str, Any], index: int) -> str:
    worker = config["workers"][index]
    key, value = draw(st.sampled_from([
        ("main", 7), ("main", False), ("main", ["x"]), ("main", {"m": "x"}), ("main", "  "),
        ("vars", 7), ("vars", "x"), ("vars", [1]), ("services", 7), ("services", {"binding": "A"}),
    ]))
    worker[key] = value
    return f'Worker "{worker["name"]}" "{key}" must be'


@fault
def _service_entry_not_a_table(draw: st.DrawFn, config: dict[str, Any], index: int) -> str:
    worker = config["workers"][index]
    worker["services"] = [draw(st.sampled_from(["AUTH", 1, ["AUTH", "auth"]]))]
    return f'Worker "{worker["name"]}" services[0] must be a table'


@fault
def _unknown_worker_key(draw: st.DrawFn, config: dict[str, Any], index: int) -> str:
    config["workers"][index]["mian"] = "x"
    return 'has an unknown key "mian"; did you mean "main"?'


@fault
def _unknown_top_key(draw: st.DrawFn, config: dict[str, Any], index: int) -> str:
    config["worker"] = []
    return 'the top level has an unknown key "worker"; did you mean "workers"?'


@fault
def _unknown_service(draw: st.DrawFn, config: dict[str, Any], index: int) -> str:
    worker = config["workers"][index]
    worker.setdefault("services", []).append({"binding": "ghost_b", "service": "ghost"})
    return f'Worker "{worker["name"]}" binding "ghost_b" refers to a service "ghost", but no such service is defined.'


@fault
def _worker_defined_twice(draw: st.DrawFn, config: dict[str, Any], index: int) -> str:
    worker = config["workers"][index]
    config["workers"].append(dict(worker))
    return f'Worker "{worker["name"]}" is defined twice.'


@fault
def _binding_not_an_identifier(draw: st.DrawFn, config: dict[str, Any], index: int) -> str:
    worker = config["workers"][index]
    binding = draw(st.sampled_from(["not-an-identifier", "", "1A", 5]))
    worker.setdefault("services", []).append({"binding": binding, "service": worker["name"]})
    return '"binding" must be an identifier string'


@fault
def _main_module_missing(draw: st.DrawFn, config: dict[str, Any], index: int) -> str:
    config["workers"][index]["main"] = "no_such_module_zz:Default"
    return 'no module named "no_such_module_zz"'


@fault
def _main_attribute_missing(draw: st.DrawFn, config: dict[str, Any], index: int) -> str:
    config["workers"][index]["main"] = "propworkers:Missing"
    return 'has no attribute "Missing"'


@fault
def _main_not_a_worker(draw: st.DrawFn, config: dict[str, Any], index: int) -> str:
    config["workers"][index]["main"] = "propworkers:NOT_A_WORKER"
    return "is not a Worker"


@fault
def _limit_out_of_range_or_type(draw: st.DrawFn, config: dict[str, Any], index: int) -> str:
    key = draw(st.sampled_from(["depth", "subrequests", "open_connections", "wait_until_s", "cpu_ms"]))
    config.setdefault("limits", {})[key] = draw(st.sampled_from([-1, "8", True, [1]]))
    return f"[limits] {key} must be"


@fault
def _unknown_limit(draw: st.DrawFn, config: dict[str, Any], index: int) -> str:
    config.setdefault("limits", {})["dpeth"] = 3
    return '[limits] has an unknown key "dpeth"; did you mean "depth"?'


@fault
def _limits_not_a_table(draw: st.DrawFn, config: dict[str, Any], index: int) -> str:
    config["limits"] = draw(st.sampled_from([5, "x", [1]]))
    return "[limits] must be a table"


@fault
def _workers_not_an_array_of_tables(draw: st.DrawFn, config: dict[str, Any], index: int) -> str:
    config["workers"] = draw(st.sampled_from([5, "gateway", [1, 2], {"name": "x"}]))
    return '"workers" must be an array of tables'


@fault
def _no_workers(draw: st.DrawFn, config: dict[str, Any], index: int) -> str:
    config["workers"] = draw(st.sampled_from([[], None]))
    if config["workers"] is None:
        del config["workers"]
    return "no Workers are defined"


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str | bytes], Path]]:
    """Writes config files beside a module of Workers; undoes the imports they cause."""
    folder = tmp_path_factory.mktemp("configs")
    (folder / "propworkers.py").write_text(WORKERS_MODULE)
    saved_path = list(sys.path)
    count = iter(range(1_000_000))

    def write(content: str | bytes) -> Path:
        path = folder / f"config{next(count)}.toml"
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    yield write
    sys.path[:] = saved_path
    for name in [n for n, m in sys.modules.items() if str(getattr(m, "__file__", "") or "").startswith(str(folder))]:
        del sys.modules[name]


@SLOW
@given(config=valid_configs())
def test_a_valid_config_builds_its_workers(config_dir: Callable[[str], Path], config: dict[str, Any]) -> None:
    runtime = Runtime.from_config(config_dir(toml_document(config)))
    assert runtime.workers == tuple(w["name"] for w in config["workers"])
    for key, value in config.get("limits", {}).items():
        assert getattr(runtime.limits, key) == value


@pytest.mark.parametrize("fault_name", sorted(FAULTS))
@settings(SLOW, max_examples=8)
@given(data=st.data())
def test_a_config_with_one_fault_is_a_config_error_naming_it(
    config_dir: Callable[[str], Path], fault_name: str, data: st.DataObject
) -> None:
    config = data.draw(valid_configs())
    index = data.draw(st.integers(0, len(config["workers"]) - 1))
    expected = FAULTS[fault_name](data.draw, config, index)
    path = config_dir(toml_document(config))
    with pytest.raises(ConfigError) as exc:
        Runtime.from_config(path)
    message = str(exc.value)
    assert message.startswith(f"{path}: ") and expected in message, message


# A `main` that names no importable module: random text must never import whatever it spells.
unimportable_main = st.text(max_size=20).filter(
    lambda m: not all(p.isidentifier() for p in m.partition(":")[0].split(".")) and "/" not in m
    and not m.strip().endswith(".py")
)


@FAST
@given(content=st.text(max_size=200) | st.binary(max_size=200) | st.builds(
    "[[workers]]\nname = {}\nmain = {}\n{}".format,
    st.text(max_size=10).map(toml_string), (unimportable_main | st.sampled_from(VALID_MAINS)).map(toml_string),
    st.text(max_size=30),
))
def test_any_file_content_builds_or_is_a_config_error(config_dir: Callable[[str | bytes], Path], content: Any) -> None:
    path = config_dir(content)
    try:
        Runtime.from_config(path)
    except ConfigError as exc:
        assert str(exc).startswith(f"{path}: ")


def test_a_missing_or_unreadable_config_is_a_config_error(tmp_path: Path) -> None:
    for path in (tmp_path / "absent.toml", tmp_path):
        with pytest.raises(ConfigError, match="cannot read the config file"):
            Runtime.from_config(path)


url_tail = st.text(alphabet=st.sampled_from(list("ab/?#:@.% \t\r\n\0\x01\x7f\xa0\xe9-_~'^2eE")), max_size=12)
# URLs near the canonical shape the quick checks accept: lower-case hosts and dotted
# quads, ports, dot segments, %2e, characters that are encoded or not.
canonical_ish = st.builds(
    "{}://{}{}{}".format,
    st.sampled_from(["http", "https", "HTTP"]),
    st.sampled_from(["e", "example.com", "a.b-c.d", "xn--mnchen-3ya.de", "1.2.3.4", "255.0.0.1",
                     "256.1.1.1", "01.2.3.4", "1.2.3", "a.1", "a.", "Ex.com", "a_b.c"]),
    st.sampled_from(["", ":8080", ":80", ":443", ":0", ":65535", ":65536", ":080", ":"]),
    url_tail,
)


@given(prefix=st.sampled_from(["https://", "http://", "HTTPS://", "https:/", "http:", "ftp://", "h", ""]),
       tail=url_tail)
def test_check_url_is_the_full_parse_fast_path_or_not(prefix: str, tail: str) -> None:
    # check_url answers URLs already in the standard's form without its full parse; for
    # every URL it must give what the full parse gives: that form, or Invalid URL.
    url = prefix + tail
    try:
        expected: object = ada_url.normalize_url(url)
    except ValueError:
        expected = ("TypeError", f"Invalid URL: {url}")
    try:
        got: object = check_url(url)
    except TypeError as exc:
        got = ("TypeError", str(exc))
    assert got == expected


@given(url=canonical_ish)
def test_what_the_quick_check_accepts_the_full_parse_leaves_as_it_is(url: str) -> None:
    if _already_canonical(url):
        assert ada_url.normalize_url(url) == url


@settings(max_examples=30, deadline=None)
@given(urls=st.lists(canonical_ish, min_size=1, max_size=20))
def test_the_compiled_quick_check_gives_what_request_gives(urls: list[str]) -> None:
    # The compiled core builds a binding's Request for a URL in C when its quick check
    # (core/_url.pxd) accepts it: the URL must be what Request(url) makes of it.
    seen: list[str] = []

    async def leaf(request: Request, env: Any, ctx: Any) -> Response:
        seen.append(request.url)
        return Response(None)

    async def caller(request: Request, env: Any, ctx: Any) -> Response:
        for url in urls:
            try:
                await env.LEAF.fetch(url)
            except TypeError:
                seen.append("invalid")
        return Response(None)

    rt = Runtime()
    rt.add_worker("caller", caller, services={"LEAF": "leaf"})
    rt.add_worker("leaf", leaf)
    asyncio.run(rt.dispatch("caller", Request("https://e/")))
    expected = []
    for url in urls:
        try:
            expected.append(Request(url).url)
        except TypeError:
            expected.append("invalid")
    assert seen == expected
