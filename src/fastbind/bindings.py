"""Declarations of service bindings: what ``services={...}`` of a Worker may hold."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ("ServiceBinding", "RemoteBinding", "service", "remote", "normalize_binding")


@dataclass(frozen=True)
class ServiceBinding:
    """A binding to a Worker of the same Runtime, optionally a named entrypoint."""

    service: str
    entrypoint: str | None = None
    props: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RemoteBinding:
    """A binding to a Worker served elsewhere: its fetch is an outbound fetch."""

    url: str


def service(
    name: str, *, entrypoint: str | None = None, props: Mapping[str, Any] | None = None
) -> ServiceBinding:
    """Bind to Worker ``name`` (its default or a named entrypoint), with ``props``."""
    return ServiceBinding(name, entrypoint, dict(props or {}))


def remote(url: str) -> RemoteBinding:
    """Bind to a Worker served at ``url`` (another fastbind process, or any origin)."""
    from .request import check_url

    return RemoteBinding(check_url(url).rstrip("/"))


def normalize_binding(worker: str, binding: str, spec: Any) -> ServiceBinding | RemoteBinding:
    from .errors import ConfigError

    if isinstance(spec, str):
        return ServiceBinding(spec)
    if isinstance(spec, (ServiceBinding, RemoteBinding)):
        return spec
    raise ConfigError(
        f'Worker "{worker}" binding "{binding}" must name a service (str), '
        f"fastbind.service(...) or fastbind.remote(...), not {type(spec).__name__}."
    )
