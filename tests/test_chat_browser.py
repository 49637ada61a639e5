"""The chat example in a real browser: headless Chromium opens the page in two tabs, one
sends a message, the other shows it. Chromium is driven through its DevTools protocol
(a WebSocket; the websockets library's client). Skipped where Chromium is not installed
(.ci/run installs Debian's package and sets FASTBIND_REQUIRE_BROWSER=1, under which
a missing Chromium is an error)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, Any

import pytest

websockets = pytest.importorskip("websockets", reason="the websockets library is not installed")
from websockets.asyncio.client import connect  # noqa: E402

from served import Served  # noqa: E402

CHAT = Path(__file__).resolve().parent.parent / "examples" / "chat" / "fastbind.toml"
BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
T = 20.0

if BROWSER is None and os.environ.get("FASTBIND_REQUIRE_BROWSER") == "1":  # CI: never skip
    raise RuntimeError("FASTBIND_REQUIRE_BROWSER=1 but Chromium is not installed (apt-get install chromium)")
pytestmark = pytest.mark.skipif(BROWSER is None, reason="Chromium is not installed (apt-get install chromium)")


class DevTools:
    """A minimal client of Chromium's DevTools protocol: commands, answers by id."""

    def __init__(self, socket: Any) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    async def call(self, method: str, session: str | None = None, **params: Any) -> Any:
        number = next(self._ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        await self._socket.send(json.dumps(message))
        while True:  # events come in between; only the answer is waited for
            answer = json.loads(await asyncio.wait_for(self._socket.recv(), T))
            if answer.get("id") == number:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    async def open_tab(self, url: str) -> str:
        target = (await self.call("Target.createTarget", url=url))["targetId"]
        return str((await self.call("Target.attachToTarget", targetId=target, flatten=True))["sessionId"])

    async def evaluate(self, session: str, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", session, expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def wait_for(self, session: str, expression: str) -> Any:
        for _ in range(int(T / 0.05)):
            value = await self.evaluate(session, expression)
            if value:
                return value
            await asyncio.sleep(0.05)
        raise AssertionError(f"never true in the page: {expression}")


def devtools_endpoint(stderr: IO[bytes], seconds: float) -> str:
    """The DevTools endpoint Chromium prints on its stderr, waited for ``seconds`` at most."""
    deadline = time.monotonic() + seconds
    seen = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stderr, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0 and selector.select(left):
            chunk = os.read(stderr.fileno(), 65536)
            if not chunk:
                break
            seen += chunk
            found = re.search(rb"DevTools listening on (ws://\S+)", seen)
            if found:
                return found[1].decode()
    raise AssertionError(f"Chromium did not start its DevTools endpoint; it wrote: {seen[-2000:]!r}")


def test_two_tabs_of_the_chat_page_see_each_others_messages(tmp_path: Path) -> None:
    server = Served(CHAT, timeout=T)
    browser = None
    try:
        browser = subprocess.Popen(
            [BROWSER, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-port=0", f"--user-data-dir={tmp_path / 'profile'}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        assert browser.stderr is not None
        endpoint = devtools_endpoint(browser.stderr, T)

        async def main() -> str:
            async with connect(endpoint, max_size=None) as socket:
                tools = DevTools(socket)
                page = f"{server.url}/?room=browsers&user="
                ada, bob = await tools.open_tab(page + "ada"), await tools.open_tab(page + "bob")
                for tab in (ada, bob):
                    await tools.wait_for(tab, "document.body.dataset.connected === 'yes'")
                await tools.evaluate(ada, """
                    document.getElementById('text').value = 'hello from ada';
                    document.getElementById('form').requestSubmit();""")
                text = await tools.wait_for(
                    bob, "document.getElementById('log').innerText.includes('ada: hello from ada')"
                    " && document.getElementById('log').innerText")
                await tools.call("Browser.close")
                return str(text)

        text = asyncio.run(asyncio.wait_for(main(), 60))
        assert "ada: hello from ada" in text and "bob joined" in text
    finally:
        if browser is not None and browser.poll() is None:
            browser.send_signal(signal.SIGTERM)
            try:
                browser.wait(timeout=T)
            except subprocess.TimeoutExpired:
                browser.kill()
                browser.wait()
        if browser is not None and browser.stderr is not None:
            browser.stderr.close()
        server.close()
