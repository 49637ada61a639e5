"""Outbound HTTP: the global ``fetch()``, remote bindings and pass-through to an origin.

Each plugs into the Runtime as an extension (``fastbind.extension``): the client's
session and timeout (``client.py``), ``fastbind.remote(url)`` bindings (``remote.py``)
and ``Runtime(origin=...)`` (``passthrough.py``).
"""

from .client import OutboundClient
from .fetch import MAX_REDIRECTS, fetch
from .passthrough import PassThrough
from .remote import RemoteBindings, RemoteFetcher

__all__ = ("fetch", "MAX_REDIRECTS", "OutboundClient", "PassThrough", "RemoteBindings", "RemoteFetcher")
