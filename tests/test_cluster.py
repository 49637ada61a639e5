"""Durable Objects across processes and machines, with `fastbind serve` started for real.

``--workers 2``: each id has one owner process, the other forwards to it; a killed owner
is restarted with its storage. Two nodes on loopback ports in one ``[cluster]``: an id
lives on one node only, a loop through remote bindings stops at depth 32, hop headers
without the secret are refused, and a node that is down is reported, not replaced.
Every process is stopped in a fixture's teardown; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from served import Served, Servers

APP = Path(__file__).resolve().parent / "cluster_app"
TIMEOUT = 20.0
SECRET = "cluster tests: a secret long enough"


@pytest.fixture
def serve() -> Iterator[Servers]:
    env = {"PYTHONPATH": os.pathsep.join([str(APP), os.environ.get("PYTHONPATH", "")])}
    with Servers(APP / "fastbind.toml", env=env, entry="gateway", scheme="http", timeout=TIMEOUT + 10) as start:
        yield start


async def _get_all(base: str, paths: list[str], clients: int = 50, fresh: bool = False) -> list[tuple[int, str]]:
    """GET every path, ``clients`` at a time on as many connections (new ones if ``fresh``)."""
    connector = aiohttp.TCPConnector(limit=clients, force_close=fresh)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
        gate = asyncio.Semaphore(clients)

        async def one(path: str) -> tuple[int, str]:
            # An increment is a POST: aiohttp sends an idempotent method again, once, when a
            # kept-alive connection is closed under it, and the first may have counted.
            method = "POST" if path.startswith("/inc/") else "GET"
            async with gate, session.request(method, base + path) as response:
                return response.status, await response.text()

        return await asyncio.gather(*[one(p) for p in paths])


def get_all(base: str, paths: list[str], clients: int = 50, fresh: bool = False) -> list[tuple[int, str]]:
    return asyncio.run(_get_all(base, paths, clients, fresh))


def test_workers_2_keep_one_object_per_id(serve: Servers, tmp_path: Path) -> None:
    server = serve("--workers", "2", "--durable-dir", str(tmp_path / "data"))
    assert len(server.children) == 2
    # Both processes take connections, and each sees every object in the same one process.
    landed = get_all(server.url, ["/pid/x"] * 60, clients=10, fresh=True)
    assert {int(body) for _, body in landed} == set(server.children)
    where = get_all(server.url, [f"/where/n{i % 20}" for i in range(200)], clients=20, fresh=True)
    owner: dict[str, set[int]] = {}
    for i, (status, body) in enumerate(where):
        assert status == 200
        owner.setdefault(f"n{i % 20}", set()).add(int(body))
    assert all(len(pids) == 1 for pids in owner.values())
    assert {pid for pids in owner.values() for pid in pids} == set(server.children)  # ids spread

    answers = get_all(server.url, ["/inc/one"] * 1000)
    assert [status for status, _ in answers] == [200] * 1000
    assert sorted(int(body) for _, body in answers) == list(range(1, 1001))  # one at a time, none lost
    answers = get_all(server.url, [f"/inc/id{i % 100}" for i in range(1000)])
    assert [status for status, _ in answers] == [200] * 1000
    counts = get_all(server.url, [f"/get/id{i}" for i in range(100)] + ["/get/one"])
    assert [int(body) for _, body in counts] == [10] * 100 + [1000]
    assert server.stop() == 0


def test_a_killed_owner_is_restarted_with_what_it_acknowledged(serve: Servers, tmp_path: Path) -> None:
    server = serve("--workers", "2", "--durable-dir", str(tmp_path / "data"))
    ((_, pid_text),) = get_all(server.url, ["/where/k"])
    victim = int(pid_text)
    assert victim in server.children

    async def hammer() -> tuple[int, int]:
        acknowledged = attempted = 0
        connector = aiohttp.TCPConnector(limit=50)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
            async def client(number: int) -> None:
                nonlocal acknowledged, attempted
                for i in range(20):
                    if number == 0 and i == 10:
                        os.kill(victim, signal.SIGKILL)  # mid-run, while the others keep calling
                    attempted += 1
                    try:
                        async with s.post(server.url + "/inc/k") as response:  # (not sent again by aiohttp)
                            if response.status == 200:
                                await response.read()
                                acknowledged += 1
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        pass  # a connection to the killed process, or a call it took down: not acknowledged
            await asyncio.gather(*[client(n) for n in range(50)])  # 1,000 increments
        return acknowledged, attempted

    acknowledged, attempted = asyncio.run(hammer())
    server.wait_for_log(f"worker process {victim} was killed by signal 9; starting a new one in its slot")
    deadline = time.monotonic() + TIMEOUT
    while True:  # the new process of the slot serves the object again, from its storage
        ((status, body),) = get_all(server.url, ["/get/k"])
        if status == 200:
            break
        assert time.monotonic() < deadline, body
        time.sleep(0.1)
    assert acknowledged <= int(body) <= attempted
    ((_, where),) = get_all(server.url, ["/where/k"])
    assert int(where) != victim
    assert server.stop() == 0


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def _node_config(folder: Path, name: str, ports: dict[str, int], other: str) -> Path:
    nodes = ", ".join(f'{{ name = "{n}", url = "http://127.0.0.1:{p}" }}' for n, p in ports.items())
    path = folder / f"{name}.toml"
    path.write_text(
        "[cluster]\n"
        f"nodes = [{nodes}]\n\n"
        "[[workers]]\n"
        'name = "gateway"\n'
        'main = "cluster_app_workers:gateway"\n'
        'durable_objects = [{ binding = "COUNTERS", class_name = "Counter" }]\n'
        f'services = [{{ binding = "OTHER", url = "http://127.0.0.1:{ports[other]}" }}]\n'
    )
    return path


@pytest.fixture
def two_nodes(serve: Servers, tmp_path: Path) -> tuple[Served, Served]:
    ports = dict(zip("ab", _free_ports(2)))
    env = {"FASTBIND_CLUSTER_SECRET": SECRET}
    a = serve("--node", "a", "--workers", "2",
              config=_node_config(tmp_path, "a", ports, "b"), env=env, port=ports["a"])
    b = serve("--node", "b", config=_node_config(tmp_path, "b", ports, "a"), env=env, port=ports["b"])
    return a, b


def test_two_nodes_keep_each_object_on_one_node(two_nodes: tuple[Served, Served]) -> None:
    a, b = two_nodes
    names = [f"o{i}" for i in range(12)]
    via_a = get_all(a.url, [f"/where/{n}" for n in names] * 3, fresh=True)
    via_b = get_all(b.url, [f"/where/{n}" for n in names])
    assert {s for s, _ in via_a + via_b} == {200}
    homes = {n: {int(body)} for n, (_, body) in zip(names, via_b)}
    for n, (_, body) in zip(names * 3, via_a):
        homes[n].add(int(body))
    assert all(len(pids) == 1 for pids in homes.values())  # one live object per id, wherever asked
    node_b_pid = int(get_all(b.url, ["/pid/x"])[0][1])
    on_b = {n for n, pids in homes.items() if pids == {node_b_pid}}
    assert 0 < len(on_b) < len(names)  # the ids are shared between the nodes

    counted = get_all(a.url, ["/inc/shared"] * 100) + get_all(b.url, ["/inc/shared"] * 100)
    assert sorted(int(body) for _, body in counted) == list(range(1, 201))


def test_a_loop_through_two_nodes_stops_at_depth_32(two_nodes: tuple[Served, Served]) -> None:
    a, b = two_nodes
    ((status, body),) = get_all(a.url, ["/loop/x"])
    assert status == 200, body
    match = re.fullmatch(r"stopped at depth 32 on (\d+) pipeline ([0-9a-f]{32})", body)
    assert match, body
    # Depth 32 is reached on node b (odd depths run on a, even ones on b).
    assert int(match[1]) == int(get_all(b.url, ["/pid/x"])[0][1])


def test_hop_headers_without_the_secret_are_refused(two_nodes: tuple[Served, Served]) -> None:
    a, _ = two_nodes
    for headers in (
        [("fastbind-depth", "1"), ("fastbind-pipeline", "p")],
        [("fastbind-depth", "1"), ("fastbind-pipeline", "p"),
         ("fastbind-signature", f"t={int(time.time())},v1={'0' * 64}")],
    ):
        with socket.create_connection(("127.0.0.1", a.port), timeout=TIMEOUT) as sock:
            extra = "".join(f"{n}: {v}\r\n" for n, v in headers)
            sock.sendall(f"GET /loop/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}\r\n".encode())
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        head, _, text = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 403 "), reply
        assert b"fastbind-error: refused" in head
        assert b"refused" in text


def test_a_node_that_is_down_fails_its_objects_calls(two_nodes: tuple[Served, Served]) -> None:
    a, b = two_nodes
    names = [f"d{i}" for i in range(12)]
    node_b_pid = int(get_all(b.url, ["/pid/x"])[0][1])
    homes = get_all(a.url, [f"/where/{n}" for n in names])
    on_b = [n for n, (_, body) in zip(names, homes) if int(body) == node_b_pid]
    on_a = [n for n in names if n not in on_b]
    assert on_b and on_a
    assert b.stop() == 0
    answers = get_all(a.url, [f"/inc/{n}" for n in on_b + on_a])
    for status, body in answers[:len(on_b)]:
        assert status == 503
        assert 'lives on node "b"' in body and "never a second copy" in body
    assert [s for s, _ in answers[len(on_b):]] == [200] * len(on_a)  # a's own objects go on
