"""``ctx.props``: the props of the binding that made the call, read-only, as keys and attributes.

``ctx.props["clientId"]`` and ``ctx.props.clientId`` read the same value, as
Cloudflare's ``ctx.props`` object does in JavaScript (and its JsProxy in Python
Workers); writing either way raises TypeError. The props are copied when the binding
is made, so the caller's dict changing later changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ("Props", "EMPTY_PROPS", "props_of")


class Props(Mapping[str, Any]):
    """A read-only mapping whose keys are also attributes."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_data", dict(data or ()))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(f"ctx.props has no {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError("ctx.props is read-only")

    def __delattr__(self, name: str) -> None:
        raise TypeError("ctx.props is read-only")

    def __setitem__(self, key: str, value: Any) -> None:
        raise TypeError("ctx.props is read-only")

    def __delitem__(self, key: str) -> None:
        raise TypeError("ctx.props is read-only")

    def __repr__(self) -> str:
        return f"Props({self._data!r})"


EMPTY_PROPS = Props()


def props_of(props: Mapping[str, Any] | None) -> Props:
    """The Props a binding or a child call hands its callee."""
    return EMPTY_PROPS if not props else Props(props)
