"""A researcher opens their environment's TensorBoard in a real browser: a real ``remotegpu serve`` and worker,
the real TensorBoard in the session's job on the cluster, Debian's headless Chromium offline (tests/e2e/browser.py).

The owner opens ``{tensorboard_url}?token=<API token>``: the gateway sets its cookie and 303s to the page, and
TensorBoard renders the run's scalars, in its default Time Series dashboard and in the Scalars one, from the
gateway alone; what the gateway's Content-Security-Policy refuses never reaches the network. A workspace member who
is not the owner gets the gateway's 404 with their own token. Screenshots: ``var/artifacts/tensorboard-page.png``
(Time Series) and ``tensorboard-scalars.png``.
"""

from __future__ import annotations

import json
import pwd
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.environments.tensorboard import COOKIE
from tests.e2e.browser import open_page
from tests.integration.slurm.conftest import WS, Gateway, PosixUserFactory
from tests.integration.slurm.test_environments import Team
from tests.integration.slurm.test_environments_tensorboard import write_scalars
from tests.waiting import eventually

pytestmark = pytest.mark.e2e

WEBGL = ("--enable-unsafe-swiftshader",)
"""The Time Series charts draw with WebGL: software WebGL, which Chromium no longer falls back to unasked."""

DEEP = """
const deep = (node, selector) => {
  const found = [];
  for (const root of [node.shadowRoot, node].filter((r) => r && r.querySelectorAll)) {
    found.push(...root.querySelectorAll(selector));
    for (const e of root.querySelectorAll('*')) if (e.shadowRoot) found.push(...deep(e.shadowRoot, selector));
  }
  return found;
};
const text = (node) => {
  if (!node) return '';
  if (node.nodeType === Node.TEXT_NODE) return node.data;
  if (['STYLE', 'SCRIPT', 'TEMPLATE'].includes(node.nodeName)) return '';
  const children = [...(node.shadowRoot ? node.shadowRoot.childNodes : []), ...node.childNodes];
  return children.map(text).join(' ');
};
const words = (node) => text(node).replace(/\\s+/g, ' ').trim();
"""
"""Queries through shadow roots (TensorBoard's Scalars dashboard is Polymer web components, each in its own)."""

TIME_SERIES = (
    "(() => {"
    + DEEP
    + """
  const cards = deep(document, 'scalar-card').map((card) => {
    const chart = card.querySelector('line-chart');
    const box = chart ? chart.getBoundingClientRect() : {width: 0, height: 0};
    return {title: words(card.querySelector('tb-truncated-path')), width: box.width, height: box.height,
            surface: chart ? (chart.querySelector('canvas, svg path') || {}).localName || null : null,
            table: words(card.querySelector('scalar-card-data-table'))};
  });
  return {app: !!document.querySelector('tb-webapp'), href: location.href,
          runs: deep(document, 'runs-table tb-data-table-content-row').map(words), cards};
})()"""
)
"""The default dashboard (Time Series, Angular): the runs table, and each scalar card's title, chart and the data
table under it (the last step's value, read from the chart's data)."""

SCALARS = (
    "(() => {"
    + DEEP
    + """
  const dashboard = deep(document, 'tf-scalar-dashboard')[0];
  if (!dashboard) return {dashboard: false};
  const cards = deep(dashboard, 'tf-scalar-card').map((card) => ({
    title: words(deep(card, 'tf-card-heading')[0]),
    lines: deep(card, 'vz-line-chart2').flatMap((chart) => deep(chart, 'path.line'))
      .filter((p) => (p.getAttribute('d') || '').length > 10).length,
  }));
  return {dashboard: true, runs: words(deep(dashboard, 'tf-runs-selector')[0]), cards};
})()"""
)
"""The Scalars dashboard (Polymer): its runs selector, and each card's heading and drawn lines (Plottable SVG)."""

OUTSIDE_LOADS = """(() => {
  const sheet = document.createElement('link');  // what Polymer's Roboto loader appends, when not told to skip it
  sheet.rel = 'stylesheet'; sheet.crossOrigin = 'anonymous';
  sheet.href = 'https://fonts.googleapis.com/css?family=Roboto+Mono:400,700|Roboto:400,300';
  document.head.appendChild(sheet);
  const image = new Image(); image.src = 'https://www.gstatic.com/tensorboard/probe.png';
  return fetch('https://ui.perfetto.dev/probe').then(() => 'fetched', () => 'refused');
})()"""
"""Loads from elsewhere, as TensorBoard's own policy would allow them (Google's font and static hosts, perfetto)."""


@pytest.fixture
def team(gateway: Gateway, posix_user: PosixUserFactory, slurm_account: str, tmp_path: Path) -> Iterator[Team]:
    team = Team(gateway, posix_user, slurm_account, tmp_path)
    yield team
    for role in team.names:
        for env in team.env(role).json()["items"]:
            team.env(role, f"/{env['id']}", method="DELETE")
    team.http.close()


def time_series_ready(seen: dict[str, Any]) -> bool:
    return bool(
        seen["app"]
        and "run1" in seen["runs"]
        and any(
            c["title"] == "loss" and c["surface"] and c["width"] > 100 and c["height"] > 100 and "run1" in c["table"]
            for c in seen["cards"]
        )
    )


def scalars_ready(seen: dict[str, Any]) -> bool:
    return bool(
        seen["dashboard"]
        and "run1" in seen["runs"]
        and any(c["title"].startswith("loss") and c["lines"] >= 1 for c in seen["cards"])
    )


async def test_the_owner_sees_the_scalars_and_a_member_the_404(team: Team, gateway: Gateway, tmp_path: Path) -> None:
    owner = team.names["owner"]
    with gateway.worker():
        r = team.env("owner", method="POST", name="tb", cpus=1, mem_mib=1024, time_minutes=30, services=["tensorboard"])
        assert r.status_code == 201, r.text
        env_id = r.json()["id"]
        prefix = f"{WS}/lab/environments/{env_id}/tensorboard"
        view = eventually(lambda: (v := team.env("owner", f"/{env_id}").json())["tensorboard_url"] and v, 120)
        url = view["tensorboard_url"]
        assert url == f"{gateway.url}{prefix}/", view
        output = Path(pwd.getpwnam(owner).pw_dir, ".remotegpu", "environments", env_id, "output")
        write_scalars(output / "run1", owner)
        bearer = team.headers["owner"]
        assert eventually(lambda: team.http.get(f"{url}data/runs", headers=bearer).json() == ["run1"])
        token = bearer["Authorization"].removeprefix("Bearer ")

        (tmp_path / "owner").mkdir()
        async with open_page(tmp_path / "owner", flags=WEBGL) as page:
            await page.navigate(f"{url}?token={token}")
            series = await page.wait_for(TIME_SERIES, until=time_series_ready, within=90)
            await page.settle(2)  # the chart's last frame
            shot = await page.screenshot("tensorboard-page.png")
            cookies = await page.cookies(url)
            await page.navigate(f"{url}#scalars")  # TensorBoard's SCALARS tab
            scalars = await page.wait_for(SCALARS, until=scalars_ready, within=90)
            await page.settle(1)
            await page.screenshot("tensorboard-scalars.png")
            asked_before_probe, outside_before_probe = page.recorder.page_asked(), page.outside(gateway.url)
            requests_before_probe = list(page.requests)
            probe = await page.evaluate(OUTSIDE_LOADS)
            await page.settle(1)
            blocked = await page.csp_blocked()

        (tmp_path / "member").mkdir()
        member_token = team.headers["member"]["Authorization"].removeprefix("Bearer ")
        async with open_page(tmp_path / "member") as stranger:
            await stranger.navigate(f"{url}?token={member_token}")
            shown = await stranger.wait_for(
                f"location.href.startsWith({json.dumps(url)}) && document.readyState === 'complete' && "
                "document.body && ({type: document.contentType, text: document.body.innerText, title: document.title,"
                " app: !!document.querySelector('tb-webapp')})"
            )
            await stranger.settle()
            stranger_cookies = await stranger.cookies(url)

    # the owner: the cookie's 303, then TensorBoard's page and its scalars
    assert time_series_ready(series), f"{json.dumps(series)[:2000]}; see {shot}"
    assert series["href"].startswith(url), series
    assert scalars_ready(scalars), json.dumps(scalars)[:2000]
    assert page.statuses[:2] == [(f"{url}?token={token}", 303), (url, 200)], page.statuses[:4]
    (cookie,) = [c for c in cookies if c["name"] == COOKIE]
    assert cookie["path"] == prefix and cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    assert token not in cookie["value"], cookie
    assert shot.stat().st_size > 20_000
    # nothing left 127.0.0.1, and everything came from the gateway: under the prefix, but for the Roboto fonts that
    # TensorBoard's page names by absolute path (/font-roboto/..., outside any --path_prefix; they 404, the text
    # falls back to the system's sans-serif)
    assert outside_before_probe == [], f"the page asked for {outside_before_probe}"
    beside = [u for u in requests_before_probe if not u.startswith(url)]
    assert all(re.fullmatch(re.escape(gateway.url) + r"/font-roboto/[\w-]+\.woff2", u) for u in beside), beside
    assert asked_before_probe == [], f"requests tried to leave 127.0.0.1: {asked_before_probe}"
    # what the gateway's policy refuses is refused in the browser, before any request is made
    assert probe == "refused"
    assert {directive for _, directive in blocked} >= {"style-src-elem", "img-src", "connect-src"}, blocked
    assert {u.split("/")[2] for u, _ in blocked} >= {"fonts.googleapis.com", "www.gstatic.com", "ui.perfetto.dev"}
    assert page.recorder.page_asked() == [], f"requests tried to leave 127.0.0.1: {page.recorder.page_asked()}"
    failed = dict(page.failed)
    assert all(failed.get(u) == "csp" for u in page.outside(gateway.url)), (page.outside(gateway.url), page.failed)
    print("requests:", *page.requests, "failed:", *page.failed, "csp:", *blocked, sep="\n  ")

    # a member who is not the owner: the gateway's 404, no TensorBoard, no cookie
    assert stranger.statuses[0] == (f"{url}?token={member_token}", 404), stranger.statuses
    assert shown["type"] == "application/problem+json" and not shown["app"], shown
    problem = json.loads(shown["text"])
    assert problem["status"] == 404 and "TensorBoard" not in shown["title"], problem
    assert stranger_cookies == [], stranger_cookies
    assert stranger.outside(gateway.url) == [] and stranger.recorder.page_asked() == []
