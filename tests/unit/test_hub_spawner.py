"""The hub side's pure parts: gateway states as batchspawner's, form fields as user_options, the hub's variables."""

from __future__ import annotations

import pytest
from batchspawner import JobStatus  # type: ignore[import-untyped]

from gateway.environments import hub
from gateway.environments.supervisor import child_environment, hub_launched
from spawners.gateway import job_status_of, render_form, spec_changes, status_of, user_options_of

pytestmark = pytest.mark.unit

HUB_ENV = {
    "JUPYTERHUB_API_TOKEN": "t" * 32,
    "JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api",
    "JUPYTERHUB_SERVICE_PREFIX": "/user/alice/dev/",
}


def view(state: str, job: str = "j1", host: str | None = "10.0.0.7") -> dict[str, object]:
    return {"state": state, "session": {"job_id": job, "host": host, "node": "n1"}}


@pytest.mark.parametrize(
    ("state", "status"),
    [
        ("pending", JobStatus.PENDING),
        ("starting", JobStatus.PENDING),
        ("running", JobStatus.RUNNING),
        ("unknown", JobStatus.UNKNOWN),  # a silent controller never stops a server
        ("stopping", JobStatus.NOTFOUND),
        ("stopped", JobStatus.NOTFOUND),
        ("failed", JobStatus.NOTFOUND),
    ],
)
def test_gateway_states_as_batchspawner_reads_them(state: str, status: JobStatus) -> None:
    assert status_of(view(state), "j1") is status


def test_a_session_started_again_elsewhere_is_not_the_hub_s_server() -> None:
    assert status_of(view("running", job="j2"), "j1") is JobStatus.NOTFOUND
    assert status_of(view("running", job="j2"), "") is JobStatus.RUNNING  # (state from before session_job)


def test_job_status_carries_the_host_the_hub_connects_to() -> None:
    assert job_status_of(view("running")) == "running 10.0.0.7"
    assert job_status_of(view("running", host=None)) == "running n1"
    assert job_status_of({"state": "stopped", "session": None}) == "stopped"


def test_form_fields_become_user_options_and_empty_ones_keep_the_environment_s() -> None:
    form = {
        "workspace": ["lab"],
        "gpus": ["2"],
        "gpu_type": ["a100"],
        "cpus": [""],
        "mem_gib": ["1.5"],
        "time_minutes": ["60"],
        "image": [""],
        "datasets": ["/data/a\n\n/data/b "],
        "services_given": ["1"],
        "services": ["ssh"],
    }
    assert user_options_of(form) == {
        "workspace": "lab",
        "gpus": 2,
        "gpu_type": "a100",
        "mem_mib": 1536,
        "time_minutes": 60,
        "datasets": ["/data/a", "/data/b"],
        "services": ["jupyterlab", "ssh"],
    }
    assert user_options_of({"workspace": ["lab"]}) == {"workspace": "lab"}  # a spawn URL's query
    assert user_options_of({"gpus": ["-1"]}) == {"gpus": "-1"}  # left for the gateway to refuse, by name


def test_changes_keep_jupyterlab_and_drop_the_gpu_type_with_the_gpus() -> None:
    spec = {"gpus": 1, "gpu_type": "a100", "services": ["ssh"], "cpus": 2}
    assert spec_changes({"gpus": 0, "cpus": 2}, spec) == {
        "gpus": 0,
        "gpu_type": None,
        "services": ["ssh", "jupyterlab"],
    }
    assert spec_changes({"workspace": "lab"}, {"services": ["jupyterlab"]}) == {}


def test_form_lists_workspaces_and_free_gpus_and_escapes() -> None:
    me = {"workspaces": [{"workspace": "lab", "role": "member"}]}
    cluster = {"gpu_types": [{"type": "a100", "free": 3, "total": 4}], "partitions": [{"name": "gpu"}]}
    page = render_form(me, cluster, {"image": '"><script>'})
    assert 'value="lab"' in page and "a100 (3 of 4 free)" in page and "<script>" not in page
    assert "in no workspace" in render_form({"workspaces": []}, cluster, {})
    assert "http" not in page  # nothing loaded from elsewhere
    assert "Ready to mount" not in page
    readable = {"datasets": {"lab": ["imagenet:3", "coco:1"], "vision": ["<b>:1"]}, "models": {}}
    page = render_form(me, cluster, {}, readable)
    assert "Ready to mount: lab: imagenet:3, coco:1; vision: &lt;b&gt;:1</p>" in page
    assert page.count("Ready to mount") == 1  # no models: no hint


def test_the_hub_s_variables_are_checked_sealed_and_read_back() -> None:
    assert hub.problems(HUB_ENV) is None
    assert "PATH" in (hub.problems({**HUB_ENV, "PATH": "/tmp"}) or "")
    assert "JUPYTERHUB_API_TOKEN" in (hub.problems({"JUPYTERHUB_API_URL": "x"}) or "")
    sealed = hub.seal("secret", HUB_ENV)
    assert "t" * 32 not in sealed
    assert hub.unseal("secret", sealed) == HUB_ENV
    assert hub.unseal("another instance", sealed) == {}


def test_only_the_single_user_server_gets_the_hub_s_variables() -> None:
    environ = {**HUB_ENV, "JPY_API_TOKEN": "x", "REMOTEGPU_SESSION_TOKEN": "s", "HOME": "/home/a"}
    assert hub_launched(environ) and not hub_launched({"HOME": "/home/a"})
    assert child_environment(environ) == {"HOME": "/home/a"}
    assert child_environment(environ, hub=True) == {**HUB_ENV, "JPY_API_TOKEN": "x", "HOME": "/home/a"}
