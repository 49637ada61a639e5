"""Where this process stands: its node of the cluster, its slot of the node, and its peers.

A node runs ``slots`` processes (``fastbind serve --workers N``), each listening on a
unix socket of the node's run folder as well as on the shared port. An object's owner
is first a node (rendezvous over the member names), then a slot of that node
(rendezvous over the slot numbers): a call that starts anywhere reaches it in at most
two hops, over HTTP between nodes and over the unix socket inside one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .members import Membership, Node, owner_index, slot_keys

__all__ = ("Placement", "Owner", "socket_path", "calls_path")


def socket_path(run_dir: str | os.PathLike[str], slot: int) -> str:
    """The unix socket where slot ``slot`` of a node serves HTTP (fetch calls, WebSockets)."""
    return str(Path(run_dir) / f"slot-{slot}.sock")


def calls_path(run_dir: str | os.PathLike[str], slot: int) -> str:
    """The unix socket of slot ``slot``'s call channel (RPC calls: channel.py)."""
    return str(Path(run_dir) / f"slot-{slot}.calls.sock")


@dataclass(frozen=True, slots=True)
class Owner:
    """Where one object lives: a node (None: this one) and a slot of it."""

    node: Node | None
    slot: int


@dataclass(slots=True)
class Placement:
    """This process's place: ``slot`` of ``slots`` on node ``node`` of ``membership``.

    Without a membership the node is alone (``--workers N`` on one machine).
    """

    slots: int
    slot: int
    run_dir: str | None
    membership: Membership | None = None
    node: str | None = None
    _keys: tuple[bytes, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.slot < self.slots:
            raise ValueError(f"slot {self.slot} is not one of 0..{self.slots - 1}")
        self._keys = slot_keys(self.slots)

    @property
    def fingerprint(self) -> str | None:
        return None if self.membership is None else self.membership.fingerprint

    def slot_of(self, raw: bytes) -> int:
        """The slot of this node that owns ``raw`` (when this node owns it)."""
        return 0 if self.slots == 1 else owner_index(raw, self._keys)

    def owner(self, raw: bytes) -> Owner:
        """Where the object whose id's bytes are ``raw`` lives."""
        membership = self.membership
        if membership is not None:
            node = membership.owner(raw)
            if node.name != self.node:
                return Owner(node, 0)
        return Owner(None, self.slot_of(raw))

    def is_here(self, raw: bytes) -> bool:
        """Whether the object lives in this very process."""
        owner = self.owner(raw)
        return owner.node is None and owner.slot == self.slot
