"""Env of the pure twin: what one Worker can reach, its bindings and vars, read-only."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import MissingBindingError

__all__ = ("Env",)


class Env:
    """Attribute and item access to one Worker's bindings and vars.

    Built once per Worker when the Runtime resolves its bindings; every invocation
    of that Worker shares it. Values live in the instance ``__dict__`` so that
    ``env.AUTH`` is a plain attribute load on the hot path.
    """

    __slots__ = ("_fastbind_worker", "__dict__")

    def __init__(self, worker: str, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_fastbind_worker", worker)
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise MissingBindingError(
            f'Worker "{self._fastbind_worker}" has no binding or var named "{name}".'
        )

    def __getitem__(self, name: str) -> Any:
        try:
            return self.__dict__[name]
        except KeyError:
            raise MissingBindingError(
                f'Worker "{self._fastbind_worker}" has no binding or var named "{name}".'
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f'The env of Worker "{self._fastbind_worker}" is read-only')

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f'The env of Worker "{self._fastbind_worker}" is read-only')

    def __contains__(self, name: object) -> bool:
        return name in self.__dict__

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.__dict__))

    def __len__(self) -> int:
        return len(self.__dict__)

    def get(self, name: str, default: Any = None) -> Any:
        return self.__dict__.get(name, default)

    def __repr__(self) -> str:
        return f"<Env of {self._fastbind_worker!r}: {', '.join(self.__dict__)}>"
