"""The API docs page in a real browser (Debian's headless Chromium over the DevTools protocol), offline.

Everything beyond 127.0.0.1 is refused: host names resolve nowhere and every proxied request goes to a recorder
that answers 403. The page must render the API's operations from the gateway's own files; a screenshot is kept
under ``var/artifacts/docs-page.png`` (a pytest run's artefact).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.integration.slurm.conftest import free_port

ARTIFACTS = Path(__file__).resolve().parents[2] / "var" / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def gateway_url(tmp_path: Path) -> Iterator[str]:
    """``remotegpu serve`` on a fresh SQLite database; stopped by PID."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTEGPU_")}
    env.update(REMOTEGPU_DATABASE_URL=f"sqlite:///{tmp_path}/docs.db", XDG_CONFIG_HOME=str(tmp_path))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "serve.log").open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)], env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(10)


BROWSER_SERVICES = ("accounts.google.com", "update.googleapis.com", "clients2.google.com", ".gvt1.com")
"""Chromium's own background calls (sign-in, component updates, network time), which no flag fully silences; they
are refused like everything else, and the page's own requests are checked through DevTools as well."""


def _browser_service(request_line: str) -> bool:
    target = request_line.split(" ")[1] if " " in request_line else request_line
    host = target.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    return any(host == s or (s.startswith(".") and host.endswith(s)) for s in BROWSER_SERVICES)


class Recorder:
    """A proxy that lets nothing through and remembers what was asked of it."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        self.asked.append(line.decode(errors="replace").strip())
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, int]]:
    rec = Recorder()
    server = await asyncio.start_server(rec.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield rec, port
    finally:
        server.close()
        await server.wait_closed()


class DevTools:
    def __init__(self, socket: Any) -> None:
        self.socket = socket
        self.next_id = 0
        self.requests: list[str] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(await self.socket.recv())
            if message.get("method") == "Network.requestWillBeSent":
                self.requests.append(message["params"]["request"]["url"])
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result


async def test_docs_page_renders_offline(gateway_url: str, recorder: tuple[Recorder, int], tmp_path: Path) -> None:
    assert CHROMIUM is not None, "Debian's chromium is required (deploy/dev/test installs it)"
    rec, proxy_port = recorder
    profile = tmp_path / "profile"
    browser = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--no-pings",
        "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,MediaRouter,AccountConsistency,"
        "SigninInterceptBubble,DIPS,Translate,AutofillServerCommunication",
        "--window-size=1280,1600",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--proxy-server=http://127.0.0.1:{proxy_port}",
        "about:blank",
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "chromium.log").open("wb"),
    )
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(150):
            if port_file.exists() and port_file.read_text().count("\n") >= 1:
                break
            await asyncio.sleep(0.2)
        devtools_port = int(port_file.read_text().split()[0])
        async with httpx.AsyncClient() as http:
            targets = (await http.get(f"http://127.0.0.1:{devtools_port}/json/list", timeout=5)).json()
        page_ws = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        async with websockets.connect(page_ws, max_size=64 * 2**20, proxy=None) as socket:
            tools = DevTools(socket)
            await tools.call("Network.enable")
            await tools.call("Page.enable")
            await tools.call("Page.navigate", url=f"{gateway_url}/schema")
            rendered = 0.0
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                result = await tools.call(
                    "Runtime.evaluate", expression="document.querySelectorAll('.opblock').length", returnByValue=True
                )
                rendered = float(result["result"].get("value") or 0)
                if rendered >= 20:
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(1)  # let the last paint (and any late request) happen
            titles = await tools.call(
                "Runtime.evaluate",
                expression="[...document.querySelectorAll('.opblock-summary-path')].map(e => e.textContent)",
                returnByValue=True,
            )
            shot = await tools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "docs-page.png").write_bytes(base64.b64decode(shot["data"]))
    finally:
        browser.terminate()
        await asyncio.wait_for(browser.wait(), 10)
    paths = {p.replace("\u200b", "") for p in titles["result"]["value"]}
    assert rendered >= 20, f"Swagger UI rendered {rendered} operations; see {ARTIFACTS / 'docs-page.png'}"
    assert "/api/v1/workspaces/{ws}/jobs/{job_id}/cancel" in paths, sorted(paths)
    outside = [url for url in tools.requests if not url.startswith((gateway_url, "about:", "data:"))]
    assert outside == [], f"the page asked for {outside}"
    page_asked = [line for line in rec.asked if not _browser_service(line)]
    assert page_asked == [], f"requests tried to leave 127.0.0.1: {page_asked}"
    assert (ARTIFACTS / "docs-page.png").stat().st_size > 10_000
