"""Declarations: a Worker as ``add_worker`` received it, and what its ``services`` may hold."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .request import check_url

__all__ = ("ServiceBinding", "RemoteBinding", "WorkerSpec", "service", "remote", "normalize_binding")


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


@dataclass(slots=True)
class WorkerSpec:
    """One Worker as declared: its handler, bindings and vars, and what extensions read
    (``options``: ``durable_objects``)."""

    name: str
    handler: Any
    services: dict[str, Any]
    vars: dict[str, Any]
    entrypoints: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)


def service(
    name: str, *, entrypoint: str | None = None, props: Mapping[str, Any] | None = None
) -> ServiceBinding:
    """Bind to Worker ``name`` (its default or a named entrypoint), with ``props``."""
    return ServiceBinding(name, entrypoint, dict(props or {}))


def remote(url: str) -> RemoteBinding:
    """Bind to a Worker served at ``url`` (another fastbind process, or any origin)."""
    return RemoteBinding(check_url(url).rstrip("/"))


def normalize_binding(worker: str, binding: str, spec: Any) -> ServiceBinding | RemoteBinding:
    if isinstance(spec, str):
        return ServiceBinding(spec)
    if isinstance(spec, (ServiceBinding, RemoteBinding)):
        return spec
    raise ConfigError(
        f'Worker "{worker}" binding "{binding}" must name a service (str), '
        f"fastbind.service(...) or fastbind.remote(...), not {type(spec).__name__}."
    )
