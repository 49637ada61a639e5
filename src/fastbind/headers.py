"""Headers: the Fetch API's case-insensitive, ordered, multi-valued header list."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Union

__all__ = ("Headers", "HeadersInit", "TEXT_TYPE", "TEXT_ITEMS")

HeadersInit = Union["Headers", Mapping[str, str], Iterable[tuple[str, str]], None]

# The Fetch standard's type for a body given as a string ("extract a body"), and a
# header list holding only it: the headers of a message made with a str body and no
# headers share it (``Headers(TEXT_ITEMS)``) until their first write copies it.
TEXT_TYPE = ("content-type", "text/plain;charset=UTF-8")
TEXT_ITEMS = [TEXT_TYPE]

# RFC 9110 token characters: what a header name (and a method) may hold.
TOKEN_CHARS = _TOKEN = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_FORBIDDEN_IN_VALUE = ("\r", "\n", "\0")
_WS = " \t"


# Names already checked, as given -> lower-cased. Checking a name character by
# character costs more than the rest of a header; Workers use a handful of names, so
# they are checked once. Bounded: names that clients invent cannot grow it.
_CHECKED_NAMES: dict[str, str] = {}
_CHECKED_NAMES_MAX = 512


def _check_name(name: object) -> str:
    if type(name) is str:
        known = _CHECKED_NAMES.get(name)
        if known is not None:
            return known
    elif isinstance(name, str):
        name = str(name)
    else:
        raise TypeError(f"Header name must be str, not {type(name).__name__}")
    # Checked before lower(): some non-ASCII letters lower-case to ASCII (U+212A -> "k").
    if not name or not _TOKEN.issuperset(name):
        raise ValueError(f"Invalid header name: {name!r}")
    lname = name.lower()
    if len(_CHECKED_NAMES) < _CHECKED_NAMES_MAX:
        _CHECKED_NAMES[name] = lname
    return lname


def _lookup_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"Header name must be str, not {type(name).__name__}")
    return name.lower()


def _check_value(name: str, value: object) -> str:
    if type(value) is not str:
        if isinstance(value, str):
            value = str(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        else:
            raise TypeError(
                f"Header {name!r} value must be str, not {type(value).__name__}"
            )
    for ch in _FORBIDDEN_IN_VALUE:
        if ch in value:
            raise ValueError(f"Invalid header value for {name!r}: {value!r}")
    return value.strip(_WS)


def decode_raw_headers(headers: Headers) -> list[tuple[str, str]]:
    """Decode raw headers now, at their first read, and return their items: latin-1,
    names lower-cased. The compiled core installs its own, with the same results."""
    names = _RAW_NAMES
    items: list[tuple[str, str]] = []
    for raw_name, raw_value in headers._raw or ():
        name = names.get(raw_name)
        if name is None:
            name = raw_name.decode("latin-1").lower()
            if len(names) < _CHECKED_NAMES_MAX:
                names[raw_name] = name
        items.append((name, raw_value.decode("latin-1")))
    headers._items = items
    headers._raw = None
    headers._shared = False
    return items


_RAW_NAMES: dict[bytes, str] = {}
_decode: Callable[[Headers], list[tuple[str, str]]] = decode_raw_headers


def use_raw_decoder(decoder: Callable[[Headers], list[tuple[str, str]]]) -> None:
    """Decode raw headers with ``decoder`` from now on (the compiled core's, at its import)."""
    global _decode
    _decode = decoder


class Headers:
    """Case-insensitive header list that keeps order and repeated names.

    Names are stored lower-cased, as the Fetch API exposes them; values keep their
    case. Items are immutable tuples, so copies share one list until either side
    writes (copy-on-write): forwarding a request through a binding copies nothing.

    Headers that arrive as raw bytes pairs (fastbind.embed, the server) stay raw
    (``_items`` is None, ``_raw`` holds the pairs) until first read: a Worker that
    never reads them, or forwards them, or returns them in its response, decodes
    nothing.
    """

    __slots__ = ("_items", "_shared", "_raw")

    _items: list[tuple[str, str]] | None
    _shared: bool
    _raw: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...] | None

    def __init__(self, init: HeadersInit = None) -> None:
        if init is None:
            self._items = []
            self._shared = False
            return
        if init is TEXT_ITEMS:  # a str body's headers (body.py): the list shared, copied on write
            self._items = TEXT_ITEMS
            self._shared = True
            return
        items: list[tuple[str, str]] = []
        self._items = items
        self._shared = False
        if type(init) is Headers:
            items.extend(init._read())
            return
        if type(init) is dict:
            # The common case, Response(..., headers={...}): plain str names and values
            # are checked inline; anything else takes the general path below.
            names = _CHECKED_NAMES
            for name, value in init.items():
                lname = names.get(name) if type(name) is str else None
                if (
                    lname is not None and type(value) is str
                    and "\r" not in value and "\n" not in value and "\0" not in value
                ):
                    items.append((lname, value.strip(_WS)))
                else:
                    lname = _check_name(name)
                    items.append((lname, _check_value(lname, value)))
            return
        pairs = init.items() if isinstance(init, Mapping) else init
        try:
            iterator = iter(pairs)
        except TypeError:
            raise TypeError(
                f"Headers init must be a mapping or pairs, not {type(init).__name__}"
            ) from None
        for pair in iterator:
            if isinstance(pair, (str, bytes)) or len(pair) != 2:
                raise TypeError(f"Header pair must be (name, value), not {pair!r}")
            name = _check_name(pair[0])
            items.append((name, _check_value(name, pair[1])))

    def copy(self) -> Headers:
        new = Headers.__new__(Headers)
        new._items = self._items
        new._shared = self._shared = True
        if self._items is None:
            new._raw = self._raw  # immutable pairs: both decode their own when read
        return new

    def _read(self) -> list[tuple[str, str]]:
        items = self._items
        return items if items is not None else _decode(self)

    def _writable(self) -> list[tuple[str, str]]:
        items = self._items
        if items is None:
            return _decode(self)
        if self._shared:
            items = self._items = items.copy()
            self._shared = False
        return items

    def get(self, name: str, default: str | None = None) -> str | None:
        lname = _lookup_name(name)
        items = self._items
        if items is None:
            items = _decode(self)
        found = [v for n, v in items if n == lname]
        if not found:
            return default
        return found[0] if len(found) == 1 else ", ".join(found)

    def get_all(self, name: str) -> list[str]:
        lname = _lookup_name(name)
        return [v for n, v in self._read() if n == lname]

    def has(self, name: str) -> bool:
        lname = _lookup_name(name)
        items = self._items
        if items is None:
            items = _decode(self)
        return any(n == lname for n, _ in items)

    def set(self, name: str, value: str) -> None:
        lname = _check_name(name)
        value = _check_value(lname, value)
        items = self._writable()
        for i, (n, _) in enumerate(items):
            if n == lname:
                items[i] = (lname, value)
                self._items = [
                    it for j, it in enumerate(items) if j <= i or it[0] != lname
                ]
                return
        items.append((lname, value))

    def append(self, name: str, value: str) -> None:
        lname = _check_name(name)
        value = _check_value(lname, value)
        self._writable().append((lname, value))

    def delete(self, name: str) -> None:
        lname = _lookup_name(name)
        self._items = [it for it in self._read() if it[0] != lname]
        self._shared = False

    def keys(self) -> Iterator[str]:
        seen: set[str] = set()
        for n, _ in self._read():
            if n not in seen:
                seen.add(n)
                yield n

    def items(self) -> list[tuple[str, str]]:
        return list(self._read())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.has(name)

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __setitem__(self, name: str, value: str) -> None:
        self.set(name, value)

    def __delitem__(self, name: str) -> None:
        self.delete(name)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._read().copy())

    def __len__(self) -> int:
        items = self._items
        return len(items if items is not None else self._raw)  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return self._read() == other._read()
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self._read()!r})"
