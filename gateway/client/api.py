"""A small HTTP client for the gateway, configured from REMOTEGPU_URL / REMOTEGPU_TOKEN or ``remotegpu login``."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import platformdirs


class ApiError(Exception):
    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        fields = ", ".join(e.get("field", "") for e in problem.get("errors") or [])
        detail = problem.get("detail") or problem.get("title") or f"HTTP {status}"
        super().__init__(f"{detail}" + (f" [{fields}]" if fields else ""))
        self.status = status
        self.problem = problem


def credentials_path() -> Path:
    return Path(platformdirs.user_config_dir("remotegpu", appauthor=False)) / "credentials.toml"


def save_credentials(url: str, token: str, workspace: str | None) -> Path:
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f'url = "{url}"', f'token = "{token}"'] + ([f'workspace = "{workspace}"'] if workspace else [])
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text("\n".join(lines) + "\n")
    return path


def load_credentials() -> dict[str, str]:
    saved: dict[str, str] = {}
    path = credentials_path()
    if path.exists():
        saved = {k: str(v) for k, v in tomllib.loads(path.read_text()).items()}
    for key in ("url", "token", "workspace"):
        if value := os.environ.get(f"REMOTEGPU_{key.upper()}"):
            saved[key] = value
    return saved


class GatewayClient:
    def __init__(self, url: str, token: str | None = None, *, transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60, transport=transport)

    @classmethod
    def from_environment(cls) -> GatewayClient:
        creds = load_credentials()
        if "url" not in creds or "token" not in creds:
            raise ApiError(
                401, {"detail": "not logged in: run `remotegpu login` or set REMOTEGPU_URL and REMOTEGPU_TOKEN"}
            )
        return cls(creds["url"], creds["token"])

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, "/api/v1" + path, **kwargs)
        _raise_for_problem(response)
        return response.json() if response.content else None

    def stream(self, path: str, params: dict[str, Any]) -> Iterator[bytes]:
        """A GET whose body comes as it is written (``logs?follow=true``), chunk by chunk."""
        with self.http.stream("GET", "/api/v1" + path, params=params, timeout=httpx.Timeout(60, read=None)) as got:
            if got.status_code >= 400:
                got.read()
                _raise_for_problem(got)
            yield from got.iter_bytes()

    def workspace_for(self, workspace: str | None, account: str | None) -> str:
        """The workspace a submission goes to: ``--workspace``, else the one whose Slurm account is ``-A``,
        else the default. A workspace and an account that disagree are refused rather than guessed between."""
        if account is None:
            return workspace or self.default_workspace()
        if workspace is not None:
            if self.request("GET", f"/workspaces/{workspace}")["slurm_account"] != account:
                raise ApiError(
                    400, _field_problem("account", f"workspace {workspace} does not use Slurm account {account}")
                )
            return workspace
        page = self.request("GET", "/workspaces", params={"mine": True, "limit": 500})
        for ws in page["items"]:
            if ws["slurm_account"] == account:
                return str(ws["slug"])
        raise ApiError(400, _field_problem("account", f"none of your workspaces uses Slurm account {account}"))

    def default_workspace(self) -> str:
        creds = load_credentials()
        if creds.get("workspace"):
            return creds["workspace"]
        memberships = self.request("GET", "/me")["workspaces"]
        if len(memberships) == 1:
            return str(memberships[0]["workspace"])
        raise ApiError(400, _field_problem("workspace", "choose a workspace with --workspace (or REMOTEGPU_WORKSPACE)"))


def _raise_for_problem(response: httpx.Response) -> None:
    if response.status_code >= 400:
        try:
            problem = response.json()
        except ValueError:
            problem = {"detail": response.text[:500]}
        raise ApiError(response.status_code, problem)


def _field_problem(field: str, detail: str) -> dict[str, Any]:
    """A problem+json body as the gateway writes them, for mistakes the CLI finds itself."""
    return {"detail": detail, "errors": [{"field": field, "message": detail}]}
