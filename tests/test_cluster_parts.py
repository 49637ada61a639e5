"""The parts of a cluster on their own: hop signatures, RPC values on the wire, who owns
an object, storage shards when the number of processes changes, the [cluster] table."""

from __future__ import annotations

import asyncio
import datetime
import time
from pathlib import Path
from typing import Any

import pytest

from fastbind import ConfigError, DurableObject, Request, Response, Runtime, SubrequestDepthError
from fastbind.cluster import wire
from fastbind.cluster.forward import Forwarder
from fastbind.cluster.members import Membership, Node, Remembered, owner_index, slot_keys
from fastbind.cluster.placement import Owner, Placement
from fastbind.cluster.shards import MANIFEST, prepare_shards, shard_dir
from fastbind.config import read_config
from fastbind.durable.ids import IdMaker
from fastbind.outbound.hop import DEPTH, Hop, HopKey, HopRefused, path_of, without_hop

KEY = HopKey("parts tests: a secret of enough bytes")


# -- hop headers ------------------------------------------------------------------------------


def test_a_signed_hop_reads_back_and_any_change_is_refused() -> None:
    hop = Hop(3, "ab" * 16, 12.5, "w%2FC/" + "0" * 64, "increment", "f" * 16)
    headers = KEY.sign(hop, "POST", "/x?y=1")
    assert KEY.verify("POST", "/x?y=1", headers) == hop
    for method, path, changed in (
        ("GET", "/x?y=1", headers),
        ("POST", "/x?y=2", headers),
        ("POST", "/x?y=1", [(n, "2" if n == DEPTH else v) for n, v in headers]),
    ):
        with pytest.raises(HopRefused, match="does not match"):
            KEY.verify(method, path, changed)
    with pytest.raises(HopRefused, match="differs from this server's"):
        HopKey("another secret of enough bytes").verify("POST", "/x?y=1", headers)
    with pytest.raises(HopRefused, match="no fastbind-signature"):
        KEY.verify("POST", "/x?y=1", [(DEPTH, "1")])
    stale = KEY.sign(hop, "POST", "/x", now=time.time() - 3600)
    with pytest.raises(HopRefused, match="away from this server's clock"):
        KEY.verify("POST", "/x", stale)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        HopKey("short")
    assert without_hop(headers + [("accept", "*/*")]) == [("accept", "*/*")]
    assert path_of("https://h:1/a/b?c#d") == "/a/b?c" and path_of("http://h") == "/"


# -- RPC values on the wire -------------------------------------------------------------------


def test_a_membership_change_lets_go_only_of_the_nodes_that_left_or_moved() -> None:
    a, b = Node("a", "http://127.0.0.1:8787"), Node("b", "http://fastbind-1.fastbind")
    c = Node("c", "https://[::1]")
    forwarder = Forwarder(Placement(1, 0, None, node="a"), HopKey("parts tests: a secret of enough bytes"))
    forwarder.use_membership(Membership([a, b, c]))
    to_b, to_c = forwarder._pool(Owner(b, 0)), forwarder._pool(Owner(c, 0))
    # A url without a port means the scheme's.
    assert (to_b._host, to_b._port, to_c._host, to_c._port) == ("fastbind-1.fastbind", 80, "::1", 443)
    forwarder.use_membership(Membership([a, b, Node("c", "https://[::2]")]))
    assert forwarder._pool(Owner(b, 0)) is to_b  # kept: calls on it go on
    assert forwarder._pool(Owner(c, 0)) is not to_c  # moved: a pool for its new address


def test_values_cross_the_wire_as_the_same_types(run: Any) -> None:
    values = [
        None, True, 0, -(2**70), 1.25, float("inf"), "é", b"\x00\xff", bytearray(b"ab"), (1, (2,)), [1, [2]],
        {"a": 1}, {"$": "not a tag"}, {1: "one", (2, 3): None}, {1, 2}, frozenset({"x"}), 1 + 2j,
        datetime.datetime(2026, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc), datetime.date(2026, 5, 6),
    ]

    async def go() -> list[Any]:
        return [wire.decode(await wire.encode(v)) for v in values]

    back = run(go())
    assert back == values and [type(v) for v in back] == [type(v) for v in values]
    assert run(_roundtrip(memoryview(b"mv"))) == b"mv"

    async def messages() -> tuple[Any, Any, bytes]:
        async def stream() -> Any:
            yield b"a"
            yield b"b"
        request = Request("https://e.com/p", method="POST", headers={"x": "1"}, body=stream())
        decoded = wire.decode(await wire.encode([request, Response("r", status=202), stream()]))
        return decoded[0], decoded[1], b"".join([c async for c in decoded[2]])

    request, response, streamed = run(messages())
    assert (request.method, request.url, request.headers.get("x")) == ("POST", "https://e.com/p", "1")
    assert run(request.bytes()) == b"ab" and response.status == 202 and run(response.text()) == "r"
    assert streamed == b"ab"
    with pytest.raises(TypeError, match="Cannot pass a value of type object"):
        run(wire.encode(object()))


async def _roundtrip(value: Any) -> Any:
    return wire.decode(await wire.encode(value))


def test_exceptions_cross_the_wire_with_their_class_and_details() -> None:
    error = SubrequestDepthError(chain=("a", "b"), target="c", limit=32)
    back = wire.decode_exception(wire.encode_exception(error), "Durable Object X")
    assert type(back) is SubrequestDepthError and str(back) == str(error)
    assert (back.chain, back.target, back.limit) == (("a", "b"), "c", 32)
    assert repr(wire.decode_exception(wire.encode_exception(KeyError("k")), "X")) == "KeyError('k')"

    class Local(Exception):  # not reachable by its name in another process
        pass

    other = wire.decode_exception(wire.encode_exception(Local("gone")), "Durable Object X")
    assert "Local: gone" in str(other) and "raised in Durable Object X" in other.__notes__[0]


# -- who owns an object -----------------------------------------------------------------------


def test_rendezvous_spreads_ids_and_moves_few_when_a_member_joins() -> None:
    raws = [i.to_bytes(4, "big") * 8 for i in range(3000)]
    two = [owner_index(raw, slot_keys(2)) for raw in raws]
    three = [owner_index(raw, slot_keys(3)) for raw in raws]
    assert 0.45 < two.count(0) / len(raws) < 0.55
    moved = [(a, b) for a, b in zip(two, three) if a != b]
    assert all(b == 2 for _, b in moved)  # only to the new member, never between old ones
    assert 0.28 < len(moved) / len(raws) < 0.39

    nodes = [Node("a", "http://10.0.0.1:1"), Node("b", "http://10.0.0.2:1")]
    first, moved_address = Membership(nodes), Membership([nodes[0], Node("b", "http://10.9.9.9:2")])
    assert first.fingerprint == moved_address.fingerprint  # names own objects, not addresses
    assert [first.owner(r).name for r in raws[:50]] == [moved_address.owner(r).name for r in raws[:50]]
    assert Membership(nodes[::-1]).fingerprint == first.fingerprint
    assert Node.parse("http://fastbind-0.fastbind.ns.svc:8787", "x").name == "fastbind-0"
    assert Node.parse("http://10.0.0.7:8787", "x").name == "10.0.0.7:8787"
    with pytest.raises(ConfigError, match="two nodes named"):
        Membership([nodes[0], nodes[0]])


# -- storage shards -----------------------------------------------------------------------------


class Keeper(DurableObject):
    async def put(self, value: int) -> None:
        await self.state.storage.put("v", value)
        self.state.storage.sql.exec("CREATE TABLE IF NOT EXISTS t (v INTEGER)")
        self.state.storage.sql.exec("INSERT INTO t VALUES (?)", value)
        await self.state.storage.set_alarm(4_000_000_000_000)

    async def alarm(self) -> None:
        pass

    async def get(self) -> tuple[Any, Any, Any]:
        row = self.state.storage.sql.exec("SELECT v FROM t").one()
        return await self.state.storage.get("v"), row["v"], await self.state.storage.get_alarm()


async def _shard(directory: Path, names: list[str], put: bool) -> dict[str, Any]:
    """Put (or read) each named object's value in the storage at ``directory``."""
    rt = Runtime(durable_dir=directory)
    seen: dict[str, Any] = {}

    async def worker(request: Request, env: Any, ctx: Any) -> Response:
        for name in names:
            stub = env.KEEP.get_by_name(name)
            if put:
                await stub.put(int(name[1:]))
            else:
                seen[name] = await stub.get()
        return Response("ok")

    rt.add_worker("w", worker, durable_objects={"KEEP": Keeper})
    await rt.dispatch("w", Request("http://t/"))
    await rt.aclose()
    return seen


def test_storage_moves_to_the_shard_of_each_objects_new_slot(tmp_path: Path, run: Any) -> None:
    names = [f"n{i}" for i in range(40)]
    run(_shard(tmp_path, names, put=True))
    ids = {n: IdMaker("w/Keeper", "KEEP").from_name(n).raw for n in names}  # the ids the Runtime makes

    for slots in (3, 2, 1):
        moved = prepare_shards(tmp_path, slots)
        assert moved > 0
        assert (tmp_path / MANIFEST).read_text().strip() == f'{{"slots": {slots}}}'
        for slot in range(slots):
            mine = [n for n in names if owner_index(ids[n], slot_keys(slots)) == slot]
            seen = run(_shard(shard_dir(tmp_path, slot), mine, put=False))
            assert seen == {n: (int(n[1:]), int(n[1:]), 4_000_000_000_000) for n in mine}
        assert prepare_shards(tmp_path, slots) == 0  # done: the same count moves nothing
    assert not (tmp_path / "shard-1").exists() and not (tmp_path / "shard-2").exists()


# -- the [cluster] table ----------------------------------------------------------------------


@pytest.mark.parametrize(("table", "message"), [
    ('nodes = []', '"nodes" must be a non-empty array'),
    ('nodes = ["ftp://x"]', "a node's url is http(s)://host:port"),
    ('nodes = [{ name = "a", url = "http://x:1" }, { name = "a", url = "http://y:1" }]', 'two nodes named "a"'),
    ('nodes = [{ url = "http://x:1" }]', "needs a name"),
    ('dns = "x"\nnodes = ["http://x:1"]', 'needs "nodes" (a list of the nodes) or "dns"'),
    ('dns = "x"\nrefresh_s = 0', '"refresh_s" must be seconds'),
    ('dns = "x"\nforget_s = -1', '"forget_s" must be seconds'),
    ('nodes = ["http://x:1"]\nforget_s = 60', '"forget_s" goes with "dns"'),
    ('nodes = ["http://x:1"]\nport = 1', '"port" goes with "dns"'),
    ('dsn = "x"', 'unknown key "dsn"; did you mean "dns"?'),
])
def test_cluster_table_errors_name_the_key(tmp_path: Path, table: str, message: str) -> None:
    config = tmp_path / "fastbind.toml"
    config.write_text(f'[cluster]\n{table}\n\n[[workers]]\nname = "w"\nmain = "m:w"\n')
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        read_config(config)
    assert str(info.value).startswith(str(config))


def test_cluster_table_reads_nodes_and_dns(tmp_path: Path) -> None:
    config = tmp_path / "fastbind.toml"
    config.write_text('[cluster]\nnodes = ["http://fastbind-0.svc:8787", { name = "b", url = "https://10.0.0.2:9" }]\n'
                      '\n[[workers]]\nname = "w"\nmain = "m:w"\n')
    cluster = read_config(config).cluster
    assert cluster is not None
    assert [(n.name, n.url) for n in cluster.nodes] == [("fastbind-0", "http://fastbind-0.svc:8787"),
                                                        ("b", "https://10.0.0.2:9")]
    config.write_text('[cluster]\ndns = "localhost"\nport = 9000\n\n[[workers]]\nname = "w"\nmain = "m:w"\n')
    cluster = read_config(config).cluster
    assert cluster is not None and cluster.dns == "localhost"
    membership = asyncio.run(asyncio.to_thread(cluster.membership, 1))
    assert membership.nodes and all(n.url.endswith(":9000") for n in membership.nodes)


def test_a_node_the_name_stops_listing_stays_a_member_for_forget_s() -> None:
    a, b, b_moved = Node("a", "http://10.0.0.1:1"), Node("b", "http://10.0.0.2:1"), Node("b", "http://10.0.0.9:1")
    remembered = Remembered(forget_s=60)
    assert remembered.update([a, b], now=0) == [a, b]
    assert remembered.update([a], now=30) == [a, b]  # b is down, not gone: its objects stay its own
    assert Membership(remembered.update([a], now=59)) == Membership([a, b])
    assert remembered.update([a, b_moved], now=70) == [a, b_moved]  # back at another address
    assert remembered.update([a], now=131) == [a]  # gone for longer than forget_s: it left
