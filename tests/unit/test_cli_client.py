"""The CLI's client without a gateway: URLs, credentials and their precedence, error lines, squeue-like columns."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.cli import _elapsed, _gpus, _where
from gateway.client.api import ApiError, ClientError, GatewayClient, load_credentials, normalize_url, save_credentials


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/api/v1", "http://127.0.0.1:8000"),
        ("https://gw.example.org/rgpu/api/v1/", "https://gw.example.org/rgpu"),
        (" http://h:1 ", "http://h:1"),
    ],
)
def test_urls_are_normalized(given: str, expected: str) -> None:
    assert normalize_url(given) == expected


@pytest.mark.parametrize(
    "bad", ["127.0.0.1:8000", "localhost", "ftp://h", "http://", "http://h:99999", "http://h/?x=1"]
)
def test_bad_urls_are_refused_clearly(bad: str) -> None:
    with pytest.raises(ClientError, match="URL"):
        normalize_url(bad)


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    for key in ("URL", "TOKEN", "WORKSPACE"):
        monkeypatch.delenv(f"REMOTEGPU_{key}", raising=False)
    return tmp_path / "remotegpu" / "credentials.toml"


def test_environment_overrides_saved_credentials(config_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = save_credentials("http://saved:1", 'tok"en', "saved-ws")
    assert saved == config_home and (saved.stat().st_mode & 0o777) == 0o600
    assert load_credentials() == {"url": "http://saved:1", "token": 'tok"en', "workspace": "saved-ws"}
    monkeypatch.setenv("REMOTEGPU_WORKSPACE", "env-ws")
    assert load_credentials()["workspace"] == "env-ws"
    monkeypatch.setenv("REMOTEGPU_URL", "http://env:2")
    assert load_credentials() == {"url": "http://env:2", "token": 'tok"en', "workspace": "env-ws"}
    config_home.write_text("garbage = [")  # with URL and token from the environment the file is not read
    monkeypatch.setenv("REMOTEGPU_TOKEN", "env-token")
    assert load_credentials() == {"url": "http://env:2", "token": "env-token", "workspace": "env-ws"}
    monkeypatch.delenv("REMOTEGPU_TOKEN")
    with pytest.raises(ClientError, match="corrupt"):
        load_credentials()
    config_home.write_text("url = 3\ntoken = 'x'\n")
    with pytest.raises(ClientError, match="corrupt"):
        load_credentials()


def _client(status: int, body: bytes, content_type: str) -> GatewayClient:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"Content-Type": content_type})

    return GatewayClient("http://gw", "tok", transport=httpx.MockTransport(answer))


def test_error_answers_are_one_line() -> None:
    with pytest.raises(ApiError, match=r"^the gateway answered HTTP 502 Bad Gateway$"):
        _client(502, b"<html><h1>Bad gateway</h1></html>", "text/html").request("GET", "/me")
    with pytest.raises(ApiError, match=r"expired.*remotegpu login"):
        _client(401, b'{"detail": "invalid token"}', "application/problem+json").request("GET", "/me")
    problem = b'{"detail": "bad slug", "errors": [{"field": "slug"}]}'
    with pytest.raises(ApiError, match=r"^bad slug \[slug\]$"):
        _client(400, problem, "application/problem+json").request("GET", "/me")
    with pytest.raises(ClientError, match="not JSON"):
        _client(200, b"<html></html>", "text/html").request("GET", "/me")


def test_transport_failures_are_client_errors() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(ClientError, match=r"cannot connect to the gateway at http://gw: .*refused"):
        GatewayClient("http://gw", "t", transport=httpx.MockTransport(refuse)).request("GET", "/me")
    with pytest.raises(ClientError, match="did not answer in time"):
        GatewayClient("http://gw", "t", transport=httpx.MockTransport(slow)).request("GET", "/me")


NOW = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("started", "ended", "shown"),
    [
        (None, None, "0:00"),
        ("2026-12-02T11:59:55Z", None, "0:05"),
        ("2026-12-02T10:58:59Z", None, "1:01:01"),
        ("2026-11-30T11:00:00Z", "2026-12-01T12:00:30Z", "1-01:00:30"),
    ],
)
def test_elapsed_like_squeue(started: str | None, ended: str | None, shown: str) -> None:
    assert _elapsed({"started_at": started, "ended_at": ended}, NOW) == shown


def test_gpus_and_where() -> None:
    allocated: dict[str, Any] = {
        "state": "RUNNING",
        "nodes": ["n1", "n2"],
        "reason": None,
        "allocated": {"gres/gpu:a100": 4},
    }
    assert _gpus(allocated) == "a100:4" and _where(allocated) == "n1,n2"
    waiting: dict[str, Any] = {
        "state": "PENDING",
        "nodes": [],
        "reason": "Resources",
        "requested": {"gpus_per_node": 2, "nodes": 2},
    }
    assert _gpus(waiting) == "4" and _where(waiting) == "(Resources)"
    typed: dict[str, Any] = {
        "state": "PENDING",
        "nodes": [],
        "reason": None,
        "requested": {"gpus": 1, "gpu_type": "a100"},
    }
    assert _gpus(typed) == "a100:1" and _where(typed) == ""


def test_jobs_are_found_by_id_prefix_or_slurm_id() -> None:
    jobs = [
        {"id": "191667" + "a" * 26, "slurm_job_id": 7},
        {"id": "19ff" + "b" * 28, "slurm_job_id": 1916},
        {"id": "19ff" + "c" * 28, "slurm_job_id": 8},
    ]

    def answer(request: httpx.Request) -> httpx.Response:
        params = request.url.params
        if "slurm_job_id" in params:
            found = [j for j in jobs if j["slurm_job_id"] == int(params["slurm_job_id"])]
        else:
            found = [j for j in jobs if str(j["id"]).startswith(params["id_prefix"])]
        return httpx.Response(200, json={"items": found[: int(params["limit"])]})

    client = GatewayClient("http://gw", "t", transport=httpx.MockTransport(answer))
    assert client.resolve_job("ws", "1916")["slurm_job_id"] == 1916  # digits: a Slurm id first
    assert client.resolve_job("ws", "19166")["slurm_job_id"] == 7  # no such Slurm job: a prefix of an id
    assert client.resolve_job("ws", "7")["id"].startswith("1916")
    with pytest.raises(ApiError, match="more than one job"):
        client.resolve_job("ws", "19ff")
    assert client.resolve_job("ws", "19ffc")["slurm_job_id"] == 8
    with pytest.raises(ApiError, match="no job 9"):
        client.resolve_job("ws", "9")
    with pytest.raises(ApiError, match="not a job id"):
        client.resolve_job("ws", "xyz!")
