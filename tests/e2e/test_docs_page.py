"""The API docs page in a real browser (Debian's headless Chromium over the DevTools protocol), offline.

Everything beyond 127.0.0.1 is refused: host names resolve nowhere and every proxied request goes to a recorder
that answers 403 (tests/e2e/browser.py). The page must render the API's operations from the gateway's own files; a
screenshot is kept under ``var/artifacts/docs-page.png`` (a pytest run's artefact).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.browser import open_page
from tests.integration.slurm.conftest import free_port

pytestmark = pytest.mark.e2e


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


async def test_docs_page_renders_offline(gateway_url: str, tmp_path: Path) -> None:
    async with open_page(tmp_path) as page:
        await page.navigate(f"{gateway_url}/schema")
        rendered = await page.wait_for("document.querySelectorAll('.opblock').length", until=lambda n: n >= 20)
        await page.settle()
        titles = await page.evaluate("[...document.querySelectorAll('.opblock-summary-path')].map(e => e.textContent)")
        shot = await page.screenshot("docs-page.png")
    paths = {p.replace("\u200b", "") for p in titles}
    assert rendered >= 20, f"Swagger UI rendered {rendered} operations; see {shot}"
    assert "/api/v1/workspaces/{ws}/jobs/{job_id}/cancel" in paths, sorted(paths)
    assert page.outside(gateway_url) == [], f"the page asked for {page.outside(gateway_url)}"
    assert page.recorder.page_asked() == [], f"requests tried to leave 127.0.0.1: {page.recorder.page_asked()}"
    assert shot.stat().st_size > 10_000
