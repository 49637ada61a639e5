"""Durable Object ids: 64 hex digits, derived from a name or random, tagged with their namespace."""

from __future__ import annotations

import hashlib
import secrets

__all__ = ("DurableObjectId", "IdMaker")

_BODY = 24  # bytes that name the object: a hash of its name, or random
_TAG = 8  # bytes that tie the id to its namespace, so a foreign id is caught
_HEX = 2 * (_BODY + _TAG)


class DurableObjectId:
    """Names one object of one namespace; ``str(id)`` is 64 hex digits.

    Ids from ``id_from_name`` carry that ``name``; equal ids name the same object.
    """

    __slots__ = ("_raw", "_namespace", "name")

    def __init__(self, raw: bytes, namespace: str, name: str | None = None) -> None:
        self._raw = raw
        self._namespace = namespace
        self.name = name

    @property
    def raw(self) -> bytes:
        """The id's 32 bytes, as storage keys rows by."""
        return self._raw

    @property
    def namespace(self) -> str:
        """The namespace that made the id: "<worker>/<class name>"."""
        return self._namespace

    def __str__(self) -> str:
        return self._raw.hex()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DurableObjectId):
            return NotImplemented
        return self._raw == other._raw and self._namespace == other._namespace

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        named = f" name={self.name!r}" if self.name is not None else ""
        return f"<DurableObjectId {self._raw.hex()}{named}>"


class IdMaker:
    """Makes and checks the ids of the namespace called ``namespace`` ("<worker>/<class>").

    The tag is a hash, not a secret: it catches an id pasted into the wrong namespace or
    mistyped, as Cloudflare's ``idFromString`` does, not a forged one.
    """

    __slots__ = ("_namespace", "_key", "_label")

    def __init__(self, namespace: str, label: str) -> None:
        self._namespace = namespace
        self._key = namespace.encode()
        self._label = label  # names the namespace in errors

    @property
    def namespace(self) -> str:
        """The namespace's name: "<worker>/<class>"."""
        return self._namespace

    def _make(self, body: bytes, name: str | None = None) -> DurableObjectId:
        tag = hashlib.sha256(b"fastbind id tag\0" + self._key + b"\0" + body).digest()[:_TAG]
        return DurableObjectId(body + tag, self._namespace, name)

    def from_name(self, name: str) -> DurableObjectId:
        if not isinstance(name, str):
            raise TypeError(f"id_from_name() takes a str, not {type(name).__name__}")
        encoded = name.encode("utf-8", "surrogatepass")
        body = hashlib.sha256(b"fastbind id name\0" + self._key + b"\0" + encoded).digest()
        return self._make(body[:_BODY], name)

    def of_raw(self, raw: bytes, name: str | None = None) -> DurableObjectId:
        """The id whose bytes are ``raw`` (read back from this namespace's storage)."""
        return DurableObjectId(raw, self._namespace, name)

    def unique(self) -> DurableObjectId:
        return self._make(secrets.token_bytes(_BODY))

    def from_string(self, value: str) -> DurableObjectId:
        if not isinstance(value, str):
            raise TypeError(f"id_from_string() takes a str, not {type(value).__name__}")
        try:
            raw = bytes.fromhex(value) if len(value) == _HEX else b""
        except ValueError:
            raw = b""
        if not raw:
            raise ValueError(
                f"Invalid Durable Object id {value!r}: an id is {_HEX} hexadecimal digits, "
                "as str(id) gives."
            )
        oid = self._make(raw[:_BODY])
        if oid._raw != raw:
            raise ValueError(
                f'Durable Object id "{value}" is not an id of namespace {self._label}: it was '
                "made by another namespace, or mistyped."
            )
        return oid

    def check(self, oid: object, binding: str) -> DurableObjectId:
        """``oid`` if it is an id of this namespace, else TypeError or ValueError."""
        if not isinstance(oid, DurableObjectId):
            raise TypeError(
                f"{binding}.get() takes a DurableObjectId, not {type(oid).__name__}; make "
                "one with id_from_name(), id_from_string() or new_unique_id()"
            )
        if oid._namespace != self._namespace:
            raise ValueError(
                f'{binding}.get() was given id "{oid}" of namespace {oid._namespace}, '
                f"not of {self._label}"
            )
        return oid
