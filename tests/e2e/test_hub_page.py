"""A researcher's path through the hub in a real browser (Playwright driving Debian's headless Chromium, offline:
tests/e2e/browser.py).

They log in with their gateway password, fill the options form (their workspace, CPUs, memory, time), get
JupyterLab from their Slurm job through the hub's proxy, open a terminal from the launcher and type a command in it
(its output, read from the page, names the Slurm job and the POSIX user that ``squeue`` shows, and the persistent
code directory), and stop the server from the
hub's home page: the Slurm job ends and the environment is stopped. Nothing the pages load leaves 127.0.0.1.
Screenshots: ``var/artifacts/hub-form.png``, ``hub-jupyterlab.png``, ``hub-terminal.png``, ``hub-home.png``.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest
from playwright.async_api import Error as PlaywrightError

from tests.e2e.browser import open_page
from tests.integration.hub.conftest import Hub, gateway_env, hub, hub_env, hub_ports, make_workspace
from tests.integration.slurm.conftest import WS, Cluster, Gateway, PosixUserFactory
from tests.waiting import eventually_async as eventually

__all__ = ["gateway_env", "hub", "hub_env", "hub_ports"]

pytestmark = pytest.mark.e2e

MARK = "RGPU-TERMINAL"


LAUNCHER_TERMINAL = ".jp-LauncherCard[data-category=Other][title*=terminal i]"
TERMINAL_INPUT = ".jp-Terminal .xterm-helper-textarea"


SCREEN_READER_MODE = """(async (base) => {
  const xsrf = decodeURIComponent((document.cookie.match(/(?:^|; )_xsrf=([^;]*)/) || [])[1] || '');
  const answer = await fetch(base + '/lab/api/settings/@jupyterlab/terminal-extension:plugin', {
    method: 'PUT', headers: {'X-XSRFToken': xsrf, 'Content-Type': 'application/json'},
    body: JSON.stringify({raw: JSON.stringify({screenReaderMode: true})}),
  });
  return answer.status;
})"""
"""The person's JupyterLab setting Terminal > Screen Reader Mode: xterm then keeps its rows as text in the page (it
draws them on a canvas otherwise), where the test reads what the command printed."""


async def test_log_in_spawn_from_the_form_use_the_terminal_and_stop_from_home(
    hub: Hub, gateway: Gateway, posix_user: PosixUserFactory, slurm_account: str, slurm_cluster: Cluster, tmp_path: Any
) -> None:
    name = posix_user()
    mine = {"Authorization": f"Bearer {gateway.token(name)}"}
    http = httpx.AsyncClient(base_url=gateway.url, timeout=30)
    make_workspace(gateway, name, slurm_account, slug="lab")
    server = f"/user/{name}/lab/"

    with gateway.worker():
        async with open_page(tmp_path) as page:
            tab = page.tab
            await tab.goto(f"{hub.url}/hub/login")
            await tab.fill("#username_input", name)
            await tab.fill("#password_input", f"{name}-password")
            await tab.click("#login_submit")
            await tab.wait_for_url(lambda url: "/hub/login" not in url, timeout=30_000)

            await tab.goto(f"{hub.url}/hub/spawn/{name}/lab")
            options = await tab.eval_on_selector_all("select[name=workspace] option", "(os) => os.map((o) => o.value)")
            assert options == ["lab"], options
            await tab.select_option("select[name=workspace]", "lab")
            for field, value in {"cpus": "1", "mem_gib": "1", "time_minutes": "30"}.items():
                await tab.fill(f"#spawn_form [name={field}]", value)
            await page.screenshot("hub-form.png")
            await tab.click("#spawn_form button[type=submit]")

            # JupyterLab, from the session's job, through the hub's proxy
            try:
                await tab.wait_for_selector(LAUNCHER_TERMINAL, timeout=240_000)
            except PlaywrightError as error:
                raise AssertionError(f"no JupyterLab launcher at {tab.url}: {error}\n{hub.log_tail()}") from None
            assert tab.url.startswith(hub.url + server), tab.url
            await page.settle(1)
            await page.screenshot("hub-jupyterlab.png")

            # a terminal from the launcher (screen reader mode on), and a command typed in it
            assert await page.evaluate(f"{SCREEN_READER_MODE}({json.dumps(server.rstrip('/'))})") == 204
            await tab.reload()
            await tab.click(LAUNCHER_TERMINAL, timeout=60_000)
            await tab.wait_for_selector(TERMINAL_INPUT, timeout=60_000)
            await tab.focus(TERMINAL_INPUT)
            await tab.keyboard.type(f'echo "{MARK[:4]}""{MARK[4:]} $SLURM_JOB_ID $USER $GEMINI_CODE"')
            await tab.keyboard.press("Enter")
            printed = await page.wait_for(
                "document.querySelector('.jp-Terminal .xterm-accessibility-tree')?.innerText",
                until=lambda text: bool(re.search(MARK + r" \d+ \S+ \S+", text or "")),
                within=30,
            )
            await page.settle(1)
            await page.screenshot("hub-terminal.png")

            view = await http.get(f"{WS}/lab/environments", params={"name": "lab"}, headers=mine)
            (environment,) = view.json()["items"]
            slurm_id = environment["session"]["slurm_job_id"]
            found = re.search(MARK + r" (\d+) (\S+) (\S+)", printed)
            assert found, printed
            assert found.groups() == (str(slurm_id), name, found[3]) and found[3].endswith("/code"), found.groups()
            assert environment["state"] == "running" and environment["session"]["hub"] is True, environment
            queue = await asyncio.to_thread(slurm_cluster.run, "squeue", "-h", "-j", str(slurm_id), "-o", "%i %u %T")
            assert queue.split() == [str(slurm_id), name, "RUNNING"], queue

            # stopped from the hub's home page
            await tab.goto(f"{hub.url}/hub/home")
            row = "tr[data-server-name=lab]"
            await tab.wait_for_selector(f"{row} .stop-server:not(.hidden)", timeout=30_000)
            await page.screenshot("hub-home.png")
            await tab.click(f"{row} .stop-server")
            await tab.wait_for_selector(f"{row} .start-server:not(.hidden)", timeout=90_000)
            asked, outside = page.recorder.page_asked(), page.outside(hub.url)

        async def job_gone() -> bool:
            return str(slurm_id) not in await asyncio.to_thread(slurm_cluster.run, "squeue", "-h", "-o", "%i")

        async def environment_stopped() -> dict[str, Any] | None:
            view = (await http.get(f"{WS}/lab/environments/{environment['id']}", headers=mine)).json()
            return view if view["state"] == "stopped" else None

        await eventually(job_gone, 60)
        stopped = await eventually(environment_stopped, 60)
    await http.aclose()
    assert stopped["session"]["slurm_job_id"] == slurm_id
    assert outside == [], f"the pages asked for {outside}"
    assert asked == [], f"requests tried to leave 127.0.0.1: {asked}"
