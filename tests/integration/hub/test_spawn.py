"""A named server through the hub is a gateway environment on Slurm: spawned from the form as the user, reachable
through the proxy, still the same Slurm job after a hub restart, stopped from the hub; refusals on the form."""

from __future__ import annotations

import html
import re

import httpx
import pytest

from tests.integration.hub.conftest import Hub, login, make_workspace
from tests.integration.s3.conftest import s3_bucket, s3_stores  # noqa: F401  (the fixtures)
from tests.integration.slurm.conftest import WS, Cluster, Gateway, PosixUserFactory
from tests.integration.slurm.test_stage_in import _sources, _upload
from tests.s3 import Stores
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def hub_said(page: httpx.Response) -> str:
    """The error paragraph of a spawn page the hub rendered again after a failed start ("" if none)."""
    said = re.search(r'class="spawn-error-msg[^"]*">(.*?)</p>', page.text, re.S)
    return html.unescape(said[1].strip()) if said else ""


def spawn_error(page: httpx.Response, hub: Hub) -> str:
    """For a failed assertion: the status, what the hub said, and the end of its log."""
    return f"{page.status_code}: {hub_said(page) or page.text[-1500:]}\n--- hub log ---\n{hub.log_tail()}"


def xsrf(client: httpx.Client) -> str:
    token = client.cookies.get("_xsrf")
    assert token, "no _xsrf cookie"
    return token


def test_a_named_server_is_an_environment_on_slurm(
    hub: Hub,
    gateway: Gateway,
    posix_user: PosixUserFactory,
    slurm_account: str,
    slurm_cluster: Cluster,
    s3_stores: Stores,  # noqa: F811
    s3_bucket: str,  # noqa: F811
) -> None:
    name = posix_user()
    token = gateway.token(name)
    admin = make_workspace(gateway, name, slurm_account)
    mine = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=gateway.url, headers=admin, timeout=60) as root:
        _sources(root, s3_stores, s3_bucket)
    with httpx.Client(base_url=gateway.url, headers=mine, timeout=60) as api:
        _upload(api, f"{WS}/hub/datasets", {"labels.txt": b"0 cat\n"})
    with gateway.worker(), hub.client() as browser:
        login(browser, name, f"{name}-password")
        form = browser.get(f"/hub/spawn/{name}/dev")
        assert form.status_code == 200 and 'value="hub"' in form.text, form.text[-2000:]
        assert "Ready to mount: hub: imagenet-mini:1</p>" in form.text, form.text[-3000:]

        # a refusal is the gateway's message on the form, not a traceback
        bad = browser.post(
            f"/hub/spawn/{name}/bad",
            data={"workspace": "hub", "cpus": "0", "_xsrf": xsrf(browser), "services_given": "1"},
        )
        assert "Traceback" not in bad.text
        assert bad.status_code == 400, spawn_error(bad, hub)
        assert hub_said(bad) == "Error: cpus: Expected `int` >= 1", spawn_error(bad, hub)

        spawned = browser.post(
            f"/hub/spawn/{name}/dev",
            data={"workspace": "hub", "cpus": "1", "mem_gib": "1", "time_minutes": "30", "_xsrf": xsrf(browser)},
        )
        assert spawned.status_code in (200, 302), spawn_error(spawned, hub)
        ready = eventually(
            lambda: (s := hub.api.get(f"/users/{name}").json()["servers"].get("dev")) and s["ready"], within=120
        )
        assert ready
        status = hub.api.get(f"/users/{name}").json()["servers"]["dev"]
        assert status["url"] == f"/user/{name}/dev/"
        lab = httpx.get(
            f"{hub.url}/user/{name}/dev/api/status",
            headers={"Authorization": f"token {hub.service_token}"},
            timeout=30,
        )
        assert lab.status_code == 200, lab.text

        found = httpx.get(f"{gateway.url}{WS}/hub/environments", params={"name": "dev"}, headers=mine, timeout=30)
        view = found.json()["items"][0]
        assert view["state"] == "running" and view["session"]["hub"] is True, view
        assert "jupyterlab" in view["spec"]["services"]
        slurm_id = view["session"]["slurm_job_id"]
        queue = slurm_cluster.run("squeue", "-h", "-o", "%i %u %T")
        assert f"{slurm_id} {name} RUNNING" in queue, queue

        # the workspace's quota, as the gateway words its refusal, on the form
        quota = httpx.patch(
            f"{gateway.url}{WS}/hub/quota", json={"concurrent_environments": 1}, headers=admin, timeout=30
        )
        assert quota.status_code == 200, quota.text
        over = browser.post(
            f"/hub/spawn/{name}/more",
            data={"workspace": "hub", "cpus": "1", "mem_gib": "1", "time_minutes": "30", "_xsrf": xsrf(browser)},
        )
        assert over.status_code == 409, spawn_error(over, hub)
        assert "quota of 1 concurrent environments is reached" in hub_said(over), spawn_error(over, hub)

        # an overdue workspace (a platform admin's adjustment below zero): the 402, in the gateway's words
        httpx.patch(f"{gateway.url}{WS}/hub/quota", json={"concurrent_environments": None}, headers=admin, timeout=30)
        billing = f"{gateway.url}{WS}/hub/billing/topups"
        owed = httpx.post(billing, json={"amount": "-1", "kind": "adjustment"}, headers=admin, timeout=30)
        assert owed.status_code == 201 and owed.json()["status"] == "overdue", owed.text
        unpaid = browser.post(
            f"/hub/spawn/{name}/more",
            data={"workspace": "hub", "cpus": "1", "mem_gib": "1", "time_minutes": "30", "_xsrf": xsrf(browser)},
        )
        assert unpaid.status_code == 402, spawn_error(unpaid, hub)
        assert "balance is below zero" in hub_said(unpaid), spawn_error(unpaid, hub)
        paid = httpx.post(billing, json={"amount": "1", "kind": "credit"}, headers=admin, timeout=30)
        assert paid.status_code == 201 and paid.json()["status"] == "active", paid.text

        # a hub restart reattaches: the same Slurm job, JupyterLab still answering
        hub.restart()
        eventually(lambda: hub.api.get(f"/users/{name}").json()["servers"].get("dev", {}).get("ready"), 60)
        again = httpx.get(f"{gateway.url}{WS}/hub/environments/{view['id']}", headers=mine, timeout=30).json()
        assert again["session"]["slurm_job_id"] == slurm_id and again["state"] == "running", again
        lab = eventually(
            lambda: (
                (
                    r := httpx.get(
                        f"{hub.url}/user/{name}/dev/api/status",
                        headers={"Authorization": f"token {hub.service_token}"},
                        timeout=30,
                    )
                ).status_code
                == 200
                and r
            ),
            30,
        )
        assert lab

        # stopped from the hub: the Slurm job ends, the environment is stopped
        stopped = hub.api.delete(f"/users/{name}/servers/dev")
        assert stopped.status_code in (202, 204), stopped.text
        eventually(lambda: str(slurm_id) not in slurm_cluster.run("squeue", "-h", "-o", "%i"), 60)
        final = eventually(
            lambda: (
                (v := httpx.get(f"{gateway.url}{WS}/hub/environments/{view['id']}", headers=mine, timeout=30).json())[
                    "state"
                ]
                == "stopped"
                and v
            ),
            60,
        )
        assert final["session"]["slurm_job_id"] == slurm_id
