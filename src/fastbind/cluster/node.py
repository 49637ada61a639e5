"""One node of fastbind processes: what the parent prepares, and what each process joins.

``fastbind serve`` makes a ``NodeSetup`` before it forks (``--workers N``): the cluster
secret, the run folder where the processes' unix sockets live, the storage shards (moved
when N changed), and the membership of the cluster (``[cluster]`` in the config). Each
process then ``join``s with its slot: its shard of the storage, the key that signs and
checks hops, and the Forwarder that sends the calls of objects it does not own to their
owner. With DNS membership, each process resolves the name again every ``refresh_s``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..durable.extension import DurableObjects
from ..errors import ConfigError
from ..outbound.hop import SECRET_ENV, HopKey, key_from_env
from ..outbound.remote import RemoteBindings
from .forward import Forwarder
from .members import Membership, Node, Remembered, resolve_dns
from .placement import Placement, calls_path, socket_path
from .shards import prepare_shards, shard_dir

if TYPE_CHECKING:
    from ..runtime import Runtime

__all__ = ("ClusterConfig", "NodeSetup", "DEFAULT_REFRESH_S", "DEFAULT_FORGET_S")

logger = logging.getLogger("fastbind.cluster")

DEFAULT_REFRESH_S = 10.0
DEFAULT_FORGET_S = 600.0  # a pod rescheduled with its volume is back well within it


@dataclass(frozen=True)
class ClusterConfig:
    """The ``[cluster]`` table: the nodes listed, or a DNS name that lists them."""

    nodes: tuple[Node, ...] = ()
    dns: str | None = None
    port: int | None = None  # dns: the peers' port (None: the port this node serves)
    scheme: str = "http"  # dns: how the peers are reached
    refresh_s: float = DEFAULT_REFRESH_S  # dns: how often the name is resolved again
    forget_s: float = DEFAULT_FORGET_S  # dns: how long a node the name stopped listing stays a member

    def membership(self, served_port: int) -> Membership:
        """The membership now (a DNS name is resolved: blocking)."""
        if self.dns is None:
            return Membership(self.nodes)
        return Membership(resolve_dns(self.dns, self.port or served_port, self.scheme))


class NodeSetup:
    """What the processes of one node share, prepared by the parent before it forks."""

    def __init__(
        self, *, slots: int, node: str | None = None, cluster: ClusterConfig | None = None,
        durable_dir: str | os.PathLike[str] | None = None, port: int = 0,
    ) -> None:
        if (node is None) != (cluster is None):
            raise ConfigError(
                "--node NAME names this node of the [cluster] in the config file: give both, or neither."
            )
        self.slots = slots
        self.node = node
        self.cluster = cluster
        self.port = port
        key = key_from_env()
        if key is None and cluster is not None:
            raise ConfigError(
                f"a [cluster] needs {SECRET_ENV} (the same random string on every node): its "
                "nodes sign the calls they make to each other with it."
            )
        # The processes of one node trust each other with a secret of their own if none is set.
        self.key = key if key is not None else (HopKey(secrets.token_bytes(32)) if slots > 1 else None)
        self.membership: Membership | None = None
        if cluster is not None:
            self.membership = cluster.membership(port)
            if self.membership.node(node) is None:  # type: ignore[arg-type]
                raise ConfigError(
                    f'--node "{node}" is not one of the cluster\'s nodes: {", ".join(self.membership.names())}.'
                )
        self.durable_dir = None if durable_dir is None else Path(durable_dir)
        if self.durable_dir is not None:
            try:
                prepare_shards(self.durable_dir, slots)
            except OSError as exc:
                raise ConfigError(f"--durable-dir {self.durable_dir}: {exc}") from None
        self.run_dir = tempfile.mkdtemp(prefix="fastbind-") if slots > 1 else None

    @property
    def routed(self) -> bool:
        """Whether objects are spread over several processes (so calls are forwarded)."""
        return self.slots > 1 or self.membership is not None

    def sockets(self, slot: int) -> dict[str, str]:
        """``serve``'s options for the unix sockets slot ``slot`` listens on (none alone)."""
        if self.run_dir is None:
            return {}
        return {"unix_path": socket_path(self.run_dir, slot), "calls_path": calls_path(self.run_dir, slot)}

    def join(self, runtime: Runtime, slot: int) -> Forwarder | None:
        """Make ``runtime`` (in the process of slot ``slot``) one of the node's processes."""
        if self.key is not None:
            runtime.extension(RemoteBindings).key = self.key
        durable = runtime.extension(DurableObjects)
        if self.durable_dir is not None:
            durable.move_storage(shard_dir(self.durable_dir, slot))
        if not self.routed:
            return None
        assert self.key is not None
        placement = Placement(self.slots, slot, self.run_dir, self.membership, self.node)
        forwarder = Forwarder(placement, self.key)
        durable.router = forwarder
        runtime.add_closer(forwarder.aclose)
        return forwarder

    def watcher(self, runtime: Runtime, forwarder: Forwarder | None) -> Callable[[], Any] | None:
        """What keeps a DNS membership fresh in a process: a coroutine function to run as a
        task once its loop runs, or None when the membership is static."""
        cluster = self.cluster
        if forwarder is None or cluster is None or cluster.dns is None:
            return None

        remembered = Remembered(cluster.forget_s)
        assert self.membership is not None
        remembered.update(self.membership.nodes, time.monotonic())

        async def refresh() -> None:
            while True:
                await asyncio.sleep(cluster.refresh_s)
                try:
                    listed = await asyncio.to_thread(cluster.membership, self.port)
                except ConfigError as exc:
                    logger.warning("cluster membership not refreshed: %s", exc)
                    continue
                membership = Membership(remembered.update(listed.nodes, time.monotonic()))
                if membership != forwarder.placement.membership:
                    adopt(runtime, forwarder, membership)

        return refresh

    def close(self) -> None:
        """Remove the run folder (the parent, once every process has ended)."""
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)


def adopt(runtime: Runtime, forwarder: Forwarder, membership: Membership) -> None:
    """Use ``membership`` from now on: the objects this process no longer owns are let go
    (their calls in progress finish; the next ones go to the new owner)."""
    placement = forwarder.placement
    old = placement.membership
    if placement.node is not None and membership.node(placement.node) is None:
        logger.error('cluster membership changed to %s without this node ("%s"); keeping %s',
                     ", ".join(membership.names()), placement.node, old)
        return
    logger.warning("cluster membership changed: %s (was %s)", ", ".join(membership.names()),
                   ", ".join(old.names()) if old is not None else "none")
    forwarder.use_membership(membership)
    evicted = 0
    for ns in runtime.extension(DurableObjects).namespaces:
        evicted += ns._evict_unless(lambda oid: placement.is_here(oid.raw))
    if evicted:
        logger.warning("%d Durable Objects now belong to other nodes and were let go here", evicted)
