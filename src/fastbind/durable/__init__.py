"""Durable Objects: one live, single-threaded, stateful object per id, with SQLite storage.

A Worker declares ``add_worker(..., durable_objects={"ROOMS": Room})``; its env then
holds ``env.ROOMS``, a DurableObjectNamespace (``namespace.py`` has the rules and the
decisions behind them). The Runtime knows Durable Objects only through the extension
in ``extension.py``.
"""

from .declarations import check_declarations, namespace_specs_from_config
from .extension import DurableObjects
from .ids import DurableObjectId
from .namespace import (
    BLOCK_CONCURRENCY_TIMEOUT_S,
    DurableObject,
    DurableObjectNamespace,
    DurableObjectState,
)
from .storage import DurableObjectStorage
from .stub import SUBREQUEST_KIND, DurableObjectStub

__all__ = (
    "DurableObject",
    "DurableObjectId",
    "DurableObjectNamespace",
    "DurableObjectState",
    "DurableObjectStorage",
    "DurableObjectStub",
    "DurableObjects",
    "BLOCK_CONCURRENCY_TIMEOUT_S",
    "SUBREQUEST_KIND",
    "check_declarations",
    "namespace_specs_from_config",
)
