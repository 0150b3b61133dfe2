"""Debian's headless Chromium driven by Playwright (``executable_path``: no browser download), offline, for the e2e
tests.

``open_page`` starts Chromium with a fresh profile: host names resolve nowhere (127.0.0.1 excepted) and every
proxied request goes to a ``Recorder`` that answers 403 and remembers the request line. The ``Page`` it yields acts
as a person through Playwright (``page.tab``: clicks, typing) and records through a DevTools session on the same tab
what the page asked for (``Network.requestWillBeSent``), what the browser refused to load (``Network.loadingFailed``,
e.g. a Content-Security-Policy block) and the console's errors.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from playwright.async_api import CDPSession, async_playwright
from playwright.async_api import Page as Tab

ARTIFACTS = Path(__file__).resolve().parents[2] / "var" / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

BROWSER_SERVICES = (
    "accounts.google.com",
    "update.googleapis.com",
    "clients2.google.com",
    ".gvt1.com",
    "passwordsleakcheck-pa.googleapis.com",
)
"""Chromium's own background calls (sign-in, component updates, network time, the leak check of a password typed
into a login form), which no flag fully silences; they
are refused like everything else, and the page's own requests are checked through DevTools as well."""


def browser_service(request_line: str) -> bool:
    """Whether a proxy request line (``CONNECT host:443 HTTP/1.1``, ``GET http://host/ HTTP/1.1``) is Chromium's
    own background call rather than the page's."""
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

    def page_asked(self) -> list[str]:
        """What reached the proxy, less Chromium's own background calls: requests that tried to leave 127.0.0.1."""
        return [line for line in self.asked if not browser_service(line)]


class Page:
    """One tab: Playwright's ``tab`` for a person's actions, a DevTools session for commands and what is recorded."""

    def __init__(self, tab: Tab, devtools: CDPSession, recorder: Recorder) -> None:
        self.tab = tab
        self.devtools = devtools
        self.recorder = recorder
        self.requests: list[str] = []
        """Every URL the page asked for, in order (redirects included)."""
        self.failed: list[tuple[str, str]] = []
        """``(url, reason)`` of each load that failed: ``blockedReason`` (``csp``, ...) or the network error."""
        self.statuses: list[tuple[str, int]] = []
        """``(url, HTTP status)`` of each response the page got, redirects included, in order."""
        self.console: list[str] = []
        """Console and browser-log errors and warnings."""
        self._urls: dict[str, str] = {}

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.devtools.send(method, params)
        return result

    def listen(self) -> None:
        """Feed the DevTools events this page records to ``_event``."""
        for method in EVENTS:
            self.devtools.on(method, lambda params, method=method: self._event({"method": method, "params": params}))

    def _event(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if "redirectResponse" in params:
                self.statuses.append((params["redirectResponse"]["url"], params["redirectResponse"]["status"]))
            self._urls[params["requestId"]] = url
            self.requests.append(url)
        elif method == "Network.responseReceived":
            self.statuses.append((params["response"]["url"], params["response"]["status"]))
        elif method == "Network.loadingFailed":
            url = self._urls.get(params["requestId"], "?")
            self.failed.append((url, params.get("blockedReason") or params.get("errorText", "")))
        elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
            self.console.append(params["entry"]["text"])
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning"):
            self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))

    async def evaluate(self, expression: str) -> Any:
        """The expression's value in the page (promises awaited); an exception in it is an error here."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, until: Callable[[Any], bool] = bool, within: float = 60) -> Any:
        """Evaluate ``expression`` every half second until ``until`` holds for its value (or ``within`` seconds have
        passed); its last value either way."""
        deadline = time.monotonic() + within
        while True:
            value = await self.evaluate(expression)
            if until(value) or time.monotonic() > deadline:
                return value
            await asyncio.sleep(0.5)

    async def navigate(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def settle(self, seconds: float = 1) -> None:
        """Let the last paint (and any late request) happen, and read the events they bring."""
        await asyncio.sleep(seconds)
        await self.evaluate("1")

    async def screenshot(self, name: str) -> Path:
        """The whole page as ``var/artifacts/<name>``."""
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    async def cookies(self, url: str) -> list[dict[str, Any]]:
        """The browser's cookies for ``url``, HttpOnly ones included (``Network.getCookies``)."""
        cookies: list[dict[str, Any]] = (await self.call("Network.getCookies", urls=[url]))["cookies"]
        return cookies

    async def csp_blocked(self) -> list[tuple[str, str]]:
        """``(blocked URL, directive)`` for each load the current document's Content-Security-Policy refused."""
        return [(url, directive) for url, directive in await self.evaluate("window.__cspBlocked || []")]

    def outside(self, *origins: str) -> list[str]:
        """The URLs the page asked for that are not under ``origins`` (nor ``about:``, ``data:``, ``blob:``)."""
        return [url for url in self.requests if not url.startswith((*origins, "about:", "data:", "blob:"))]


EVENTS = (
    "Network.requestWillBeSent",
    "Network.responseReceived",
    "Network.loadingFailed",
    "Log.entryAdded",
    "Runtime.consoleAPICalled",
)

_RECORD_CSP = """window.__cspBlocked = [];
document.addEventListener('securitypolicyviolation',
    (e) => window.__cspBlocked.push([e.blockedURI, e.effectiveDirective]));"""
"""Run in every document before its own scripts: what its Content-Security-Policy refused, which Chromium blocks
before any request is made (so neither the network events nor the proxy see it)."""

CHROMIUM_FLAGS = (  # besides Playwright's own (headless, no sandbox, automation)
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
    "SigninInterceptBubble,DIPS,Translate,AutofillServerCommunication,PasswordLeakDetection",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


@contextlib.asynccontextmanager
async def open_page(
    workdir: Path, window: tuple[int, int] = (1280, 1600), flags: tuple[str, ...] = ()
) -> AsyncIterator[Page]:
    """Chromium (its profile under ``workdir``, ``flags`` added to ``CHROMIUM_FLAGS``) with one blank tab, its
    network and page events on; the recorder behind its proxy. Playwright stops Chromium afterwards."""
    assert CHROMIUM is not None, "Debian's chromium is required (deploy/dev/test installs it)"
    recorder = Recorder()
    proxy = await asyncio.start_server(recorder.handle, "127.0.0.1", 0)
    proxy_port = proxy.sockets[0].getsockname()[1]
    try:
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                workdir / "profile",
                executable_path=CHROMIUM,
                headless=True,
                args=[*CHROMIUM_FLAGS, *flags],
                proxy={"server": f"http://127.0.0.1:{proxy_port}", "bypass": "127.0.0.1"},  # all else: refused
                viewport={"width": window[0], "height": window[1]},
            )
            try:
                tab = context.pages[0] if context.pages else await context.new_page()
                page = Page(tab, await context.new_cdp_session(tab), recorder)
                page.listen()
                for domain in ("Network", "Page", "Log", "Runtime"):
                    await page.call(f"{domain}.enable")
                await page.call("Page.addScriptToEvaluateOnNewDocument", source=_RECORD_CSP)
                yield page
            finally:
                await context.close()
    finally:
        proxy.close()
        await proxy.wait_closed()
