"""The request a Worker sees is a function of the bytes alone, not of how they were split.

Each entry of a corpus of valid and invalid requests (pipelined pairs among them) is sent
to one `fastbind serve` (tests/split_app: a Worker that answers with the method, URL,
headers and body it saw) in one write, then split in two at every byte offset, then one
byte per write, and the pipelined pairs and chunked bodies also in three at every two
offsets; every way must get the same answers (status and body; a 100 Continue,
sent or not depending on when the body came, is left out) as the one write. The client
half-closes after its last byte, so every connection ends as soon as it is answered.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from served import Served

APP = Path(__file__).resolve().parent / "split_app" / "fastbind.toml"
MAX_HEAD = 512
MAX_BODY = 600
SERVER_ARGS = ["--max-header-size", str(MAX_HEAD), "--max-body", str(MAX_BODY),
               "--read-timeout", "30", "--keep-alive-timeout", "5", "--write-timeout", "10"]
PARALLEL = 48
GAP_S = 0.001  # between the writes of one connection: the server reads them apart
DEADLINE_S = 20.0
# Three-way splits: longer gaps, so that the server reads the pieces apart however busy
# (were two read as one, that split would only be one already tried), more at once.
THREE_WAY_PARALLEL = 256
THREE_WAY_GAP_S = 0.02

H = b"Host: t\r\n"


def get(path: bytes = b"/", *lines: bytes, method: bytes = b"GET") -> bytes:
    return method + b" " + path + b" HTTP/1.1\r\n" + H + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


def post(body: bytes, path: bytes = b"/p", method: bytes = b"POST") -> bytes:
    return method + b" " + path + b" HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % len(body) + body


def chunked(*chunks: bytes, path: bytes = b"/c", method: bytes = b"POST", trailer: bytes = b"") -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n" + trailer + b"\r\n"
    return method + b" " + path + b" HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + body


def headers_of(total: int) -> list[bytes]:
    """Header lines that make a head count exactly ``total`` against --max-header-size."""
    lines, left = [], total - 2 - (len(b"host") + 1 + 4)  # the target "/h", and Host: t
    while left > 0:
        value = min(left - 6, 200)  # "x-NN" + value + 4
        lines.append(b"x-%02d: " % len(lines) + b"v" * value)
        left -= 4 + value + 4
    return lines


CORPUS: dict[str, bytes] = {
    # valid
    "get": get(),
    "get-query-headers": get(b"/a/b?x=1&y=%20z", b"Accept: */*", b"X-Multi: one", b"X-Multi: two"),
    "post-length": post(b"hello=world&x=1"),
    "post-body-ends-in-letters": post(b"abc def ghi"),
    "post-empty": post(b""),
    "put-chunked": chunked(b"hello ", b"world", method=b"PUT"),
    "chunked-extension": b"POST /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5;name=value\r\nhello\r\n0\r\n\r\n",
    "chunked-trailer": chunked(b"data", trailer=b"X-Trailer: yes\r\n"),
    "head": get(b"/h", method=b"HEAD"),
    "delete": get(b"/d", method=b"DELETE"),
    "options-star": b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
    "unknown-method": get(b"/pot", method=b"BREW"),
    "unknown-after-known-prefix": get(b"/x", method=b"PDELETE"),
    "known-method-and-more": get(b"/x", method=b"GETX"),
    "m-search": get(b"*", method=b"M-SEARCH"),
    "http-1.0-no-host": b"GET /old HTTP/1.0\r\n\r\n",
    "http-1.0-keep-alive-pair": b"GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\n",
    "absolute-form": b"GET http://example.com:8080/abs?q=1 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n",
    "non-ascii-target": b"GET /caf\xc3\xa9?q=\xff HTTP/1.1\r\nHost: t\r\n\r\n",
    # Within the limit only because the blanks before a value do not count.
    "blanks-around-value": get(b"/ows", *headers_of(MAX_HEAD - 13), b"X-Pad:" + b" " * 300 + b"v\t \t"),
    "head-at-the-limit": get(b"/h", *headers_of(MAX_HEAD)),
    "expect-continue": b"POST /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
    "get-with-dropped-body": b"GET /g HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    "leading-empty-lines": b"\r\n\r\n" + get(b"/after-blank"),
    "upgrade-then-get": get(b"/u", b"Connection: upgrade", b"Upgrade: websocket") + get(b"/next"),
    # pipelined pairs
    "pair-get-get": get(b"/1") + get(b"/2"),
    "pair-post-get": post(b"body") + get(b"/2"),
    "pair-chunked-unknown": chunked(b"abc") + get(b"/2", method=b"BREW"),
    "pair-get-prefix-unknown": get(b"/1") + get(b"/2", method=b"PDELETE"),
    "pair-letters-body-unknown": post(b"xyzP") + get(b"/2", method=b"PATCHY"),
    "pair-post-http09": post(b"ab") + b"GET /nine\r\n",
    "pair-get-malformed": get(b"/ok") + b"GET /bad HTTP/1.1\r\nHost t\r\n\r\n",
    "pair-get-over-limit": get(b"/ok") + get(b"/big", *headers_of(MAX_HEAD + 1)),
    # invalid
    "http-0.9": b"GET /nine\r\n",
    "http-0.9-version": b"GET /x HTTP/0.9\r\nHost: t\r\n\r\n",
    "http-2": b"GET /x HTTP/2.0\r\nHost: t\r\n\r\n",
    "no-host": b"GET / HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "bad-host": b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "length-and-chunked": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two-lengths": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
    "gzip-chunked-one-line": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "gzip-chunked-two-lines": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "chunked-twice": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "head-over-limit": get(b"/h", *headers_of(MAX_HEAD + 1)),
    "target-over-limit": get(b"/" + b"t" * MAX_HEAD),
    "body-over-limit": post(b"x" * (MAX_BODY + 1)),
    "chunked-over-limit": chunked(b"y" * 300, b"z" * 301),
    "chunked-get-over-limit": chunked(b"y" * 300, b"z" * 301, method=b"GET"),
    "bad-chunk-size": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : t\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n",
    "method-too-long": get(b"/", method=b"B" * 70),
    "cr-in-value": b"GET / HTTP/1.1\r\nHost: t\r\nX: a\rb\r\n\r\n",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    proc = Served(APP, SERVER_ARGS, tmp_path_factory.mktemp("splits") / "server.log")
    try:
        yield proc
        proc.assert_alive()
    finally:
        proc.kill()


def answers(data: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each response in ``data``; a 100 Continue is left out."""
    found, pos = [], 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        assert end >= 0, f"an unfinished response head: {data[pos:pos + 200]!r}"
        lines = data[pos:end].split(b"\r\n")
        status = int(lines[0].split()[1])
        fields = dict(line.lower().split(b": ", 1) for line in lines[1:])
        pos = end + 4
        if status == 100:
            continue
        if b"content-length" in fields:
            body = data[pos:pos + int(fields[b"content-length"])]  # none after HEAD
        else:  # the server sends no other framing to these requests
            body = b""
        pos += len(body)
        found.append((status, body))
    return found


async def send(
    port: int, pieces: list[bytes], limit: asyncio.Semaphore, gap: float = GAP_S
) -> list[tuple[int, bytes]]:
    """Send ``pieces`` one write each, ``gap`` seconds apart, half-close, and read (all
    along) until the server closes."""
    async with limit:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        received = asyncio.ensure_future(read_all(reader))
        try:
            for i, piece in enumerate(pieces):
                if i:
                    await asyncio.sleep(gap)
                if received.done():
                    break  # refused and closed: the rest would not be read
                writer.write(piece)
                await writer.drain()
            else:
                writer.write_eof()
        except (ConnectionError, OSError):
            pass  # refused before it was all sent: what was answered is read
        data = await received
        writer.close()
        return answers(data)


async def read_all(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    try:
        while chunk := await reader.read(65536):
            chunks.append(chunk)
    except ConnectionError:
        pass
    return b"".join(chunks)


def test_every_split_gets_the_answers_of_one_write(server: Served) -> None:
    assert len(CORPUS) >= 40
    assert sum(name.startswith("pair-") for name in CORPUS) >= 5

    async def main() -> list[str]:
        limit = asyncio.Semaphore(PARALLEL)
        names = list(CORPUS)
        whole = await asyncio.wait_for(asyncio.gather(*(send(server.port, [CORPUS[n]], limit) for n in names)), 10)
        expected = dict(zip(names, whole))
        jobs, labels = [], []
        for name in names:
            data = CORPUS[name]
            for cut in range(1, len(data)):
                jobs.append(send(server.port, [data[:cut], data[cut:]], limit))
                labels.append(f"{name} split at {cut}")
            jobs.append(send(server.port, [data[i:i + 1] for i in range(len(data))], limit))
            labels.append(f"{name} one byte per write")
        results = await asyncio.wait_for(asyncio.gather(*jobs), DEADLINE_S)
        return [
            f"{label}: {got!r} != {expected[label.split(' ')[0]]!r}"
            for label, got in zip(labels, results) if got != expected[label.split(" ")[0]]
        ] + [f"{name}: no answer in one write" for name in names if not expected[name]]

    differences = uvloop.run(main())
    assert not differences, "\n".join(differences[:20])


def test_every_three_way_split_of_a_pair_or_a_chunked_body_gets_the_answers_of_one_write(server: Served) -> None:
    # Two reads' worth of state carried over: where a head's last line was cut, then
    # where in the body after it the next read ended (a read ending in a head's last
    # line, the next inside a chunked body, once lost the first and refused what came next).
    names = [name for name, data in CORPUS.items()
             if (name.startswith("pair-") or b"chunked" in data) and len(data) < 120]
    assert len(names) >= 10

    async def main() -> list[str]:
        limit = asyncio.Semaphore(THREE_WAY_PARALLEL)
        whole = await asyncio.wait_for(asyncio.gather(*(send(server.port, [CORPUS[n]], limit) for n in names)), 10)
        expected = dict(zip(names, whole))
        jobs, labels = [], []
        for name in names:
            data = CORPUS[name]
            for a, b in itertools.combinations(range(1, len(data)), 2):
                jobs.append(send(server.port, [data[:a], data[a:b], data[b:]], limit, THREE_WAY_GAP_S))
                labels.append((name, a, b))
        results = await asyncio.wait_for(asyncio.gather(*jobs), 6 * DEADLINE_S)
        return [
            f"{name} split at {a} and {b}: {got!r} != {expected[name]!r}"
            for (name, a, b), got in zip(labels, results) if got != expected[name]
        ]

    differences = uvloop.run(main())
    assert not differences, "\n".join(differences[:20])
