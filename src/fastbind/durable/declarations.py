"""Declarations of Durable Object namespaces, in code and in a config file, checked."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from ..errors import ConfigError

__all__ = ("check_declarations", "namespace_specs_from_config")

_SHAPE = '[{ binding = "ROOMS", class_name = "Room" }]'


def check_declarations(worker: str, durable_objects: Mapping[str, Any] | None) -> dict[str, type]:
    """``add_worker(durable_objects=...)`` checked: binding names to classes."""
    if durable_objects is None:
        return {}
    if not isinstance(durable_objects, Mapping):
        raise ConfigError(
            f'Worker "{worker}" durable_objects must map binding names to classes, '
            f"not {type(durable_objects).__name__}."
        )
    declared = {}
    for binding, cls in durable_objects.items():
        if not isinstance(binding, str) or not binding:
            raise ConfigError(
                f'Worker "{worker}" has a Durable Object binding with an invalid name {binding!r}.'
            )
        if not isinstance(cls, type):
            raise ConfigError(
                f'Worker "{worker}" Durable Object binding "{binding}" must be a class, '
                f"built as cls(state, env), not {cls!r}."
            )
        declared[binding] = cls
    return declared


def namespace_specs_from_config(
    worker_name: str, entries: Any, module: ModuleType | str, *, source: str | None = None
) -> dict[str, type]:
    """The ``durable_objects`` argument of ``add_worker`` for a Worker of a config file.

    ``entries`` is the Worker's ``durable_objects = [{ binding = "ROOMS", class_name =
    "Room" }]``; each class is looked up in ``module``, the module of the Worker's
    ``main`` (or its import name). Errors are ConfigErrors naming the Worker and the
    binding, prefixed with ``source`` (the file) when it is given.
    """
    worker = f'{source}: Worker "{worker_name}"' if source else f'Worker "{worker_name}"'
    if not isinstance(entries, list):
        raise ConfigError(
            f"{worker} durable_objects must be a list like {_SHAPE}, not {type(entries).__name__}."
        )
    if isinstance(module, str):
        try:
            module = importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(
                f'{worker} Durable Object classes live in module "{module}", which cannot be '
                f"imported: {exc}"
            ) from exc
    declared: dict[str, type] = {}
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise ConfigError(
                f"{worker} durable_objects entry {number} must be a table like {_SHAPE}."
            )
        if "script_name" in entry:
            raise ConfigError(
                f"{worker} durable_objects entry {number} names script_name; a namespace is "
                "declared by the Worker whose module defines the class."
            )
        unknown = sorted(set(entry) - {"binding", "class_name"})
        if unknown:
            raise ConfigError(
                f"{worker} durable_objects entry {number} has unknown keys {', '.join(unknown)}; "
                "expected binding and class_name."
            )
        binding, class_name = entry.get("binding"), entry.get("class_name")
        if not isinstance(binding, str) or not binding:
            raise ConfigError(
                f"{worker} durable_objects entry {number} needs a binding name "
                "(a non-empty string)."
            )
        if not isinstance(class_name, str) or not class_name:
            raise ConfigError(
                f'{worker} Durable Object binding "{binding}" needs a class_name '
                "(a non-empty string)."
            )
        if binding in declared:
            raise ConfigError(f'{worker} declares the Durable Object binding "{binding}" twice.')
        cls = getattr(module, class_name, None)
        if not isinstance(cls, type):
            raise ConfigError(
                f'{worker} Durable Object binding "{binding}" refers to class "{class_name}", '
                f'but module "{module.__name__}" has no such class.'
            )
        declared[binding] = cls
    return declared
