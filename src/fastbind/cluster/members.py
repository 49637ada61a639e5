"""Who owns an object: rendezvous hashing over the nodes of a cluster and the slots of a node.

An object's owner is a pure function of its id and of the member list: each member
(a node's name, or a process slot's number) gets a score from a keyed hash of the id,
and the highest score owns it. Every process that has the same list picks the same
owner, with no message exchanged; a member joining or leaving moves only the objects
whose highest score was, or becomes, that member's. docs/scaling.md says what follows.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from yarl import URL

from ..errors import ConfigError

__all__ = ("Node", "Membership", "Remembered", "owner_index", "slot_keys", "resolve_dns")


def owner_index(raw: bytes, keys: Sequence[bytes]) -> int:
    """The index of the member of ``keys`` (each a member's hash key) that owns ``raw``."""
    best = 0
    best_score = b""
    for index, key in enumerate(keys):
        score = hashlib.blake2b(raw, digest_size=8, key=key).digest()
        if score > best_score:
            best, best_score = index, score
    return best


def slot_keys(slots: int) -> tuple[bytes, ...]:
    """The hash keys of the process slots 0..slots-1 of one node."""
    return tuple(f"fastbind slot {slot}".encode() for slot in range(slots))


def _node_key(name: str) -> bytes:
    return hashlib.sha256(b"fastbind node\0" + name.encode()).digest()


@dataclass(frozen=True, slots=True)
class Node:
    """One node of a cluster: its name (what ownership hashes) and where it serves."""

    name: str
    url: str

    @classmethod
    def parse(cls, entry: object, where: str) -> Node:
        """A node from a config entry: ``{ name = "a", url = "http://..." }`` or a URL,
        whose name is then its host's first label (or ``host:port`` for an address)."""
        if isinstance(entry, dict):
            unknown = sorted(set(entry) - {"name", "url"})
            if unknown:
                raise ConfigError(f"{where} has unknown keys {', '.join(unknown)}; expected name and url.")
            name, url = entry.get("name"), entry.get("url")
            if not isinstance(name, str) or not name or any(c.isspace() for c in name):
                raise ConfigError(f"{where} needs a name (a string without spaces), not {name!r}.")
        else:
            name, url = None, entry
        if not isinstance(url, str):
            raise ConfigError(f'{where} must be a URL such as "http://10.0.0.1:8787" or a table '
                              f'{{ name = "a", url = "http://..." }}, not {url!r}.')
        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host or parsed.raw_path not in ("", "/"):
            raise ConfigError(f"{where}: a node's url is http(s)://host:port with no path, not {url!r}.")
        if name is None:
            name = _name_of(parsed.host, parsed.port)
        return cls(name, f"{parsed.scheme}://{parsed.raw_authority}")


def _name_of(host: str, port: int | None) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.split(".", 1)[0]
    return f"{host}:{port}"


class Membership:
    """The nodes of a cluster, by name, and the owner of each object among them."""

    __slots__ = ("nodes", "fingerprint", "_keys", "_by_name")

    def __init__(self, nodes: Sequence[Node]) -> None:
        by_name: dict[str, Node] = {}
        for node in nodes:
            if node.name in by_name:
                raise ConfigError(f'the cluster has two nodes named "{node.name}"')
            by_name[node.name] = node
        if not by_name:
            raise ConfigError("the cluster has no nodes")
        self.nodes = tuple(sorted(by_name.values(), key=lambda n: n.name))
        self._by_name = by_name
        self._keys = tuple(_node_key(n.name) for n in self.nodes)
        # Ownership depends on the names alone: a node whose address changes keeps its objects.
        names = "\n".join(n.name for n in self.nodes)
        self.fingerprint = hashlib.sha256(names.encode()).hexdigest()[:16]

    def node(self, name: str) -> Node | None:
        return self._by_name.get(name)

    def owner(self, raw: bytes) -> Node:
        """The node that owns the object whose id's bytes are ``raw``."""
        if len(self.nodes) == 1:
            return self.nodes[0]
        return self.nodes[owner_index(raw, self._keys)]

    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Membership) and self.nodes == other.nodes

    def __hash__(self) -> int:
        return hash(self.nodes)

    def __repr__(self) -> str:
        return f"<Membership {', '.join(self.names())} ({self.fingerprint})>"


class Remembered:
    """The nodes a DNS name lists, and those it stopped listing less than ``forget_s`` ago.

    A headless Service drops a pod that is not ready or is being replaced; taken at its
    word, the pod's objects would start on other nodes, without their storage, and move
    back when it returns. Kept for ``forget_s``, the pod is a node that is down: its
    objects' calls fail until it is back. Only a node gone for longer leaves.
    """

    __slots__ = ("forget_s", "_seen")

    def __init__(self, forget_s: float) -> None:
        self.forget_s = forget_s
        self._seen: dict[str, tuple[Node, float]] = {}

    def update(self, listed: Sequence[Node], now: float) -> list[Node]:
        """The members after the name listed ``listed`` at ``now`` (monotonic seconds)."""
        for node in listed:
            self._seen[node.name] = (node, now)
        for name, (_, seen) in list(self._seen.items()):
            if now - seen > self.forget_s:
                del self._seen[name]
        return [node for node, _ in self._seen.values()]


def resolve_dns(name: str, port: int, scheme: str = "http") -> list[Node]:
    """The nodes a DNS name lists (a Kubernetes headless Service: one address per pod).

    Each address is named by its reverse record's first label (a StatefulSet's pod
    name, ``fastbind-0``), or by the address itself when it has none. Blocking: call it
    from a thread when a loop runs.
    """
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f'[cluster] dns = "{name}" cannot be resolved: {exc}') from None
    nodes = []
    for address in sorted({str(info[4][0]) for info in infos}):
        try:
            host = socket.gethostbyaddr(address)[0]
            node_name = host.split(".", 1)[0] if host and not _is_address(host) else address
        except OSError:
            node_name = address
        where = f"[{address}]" if ":" in address else address
        nodes.append(Node(node_name, f"{scheme}://{where}:{port}"))
    return nodes


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
