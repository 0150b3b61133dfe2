"""A small HTTP client for the gateway, configured from REMOTEGPU_URL / REMOTEGPU_TOKEN or ``remotegpu login``.

Every failure a user can meet (nothing listening, a bad URL, a broken credentials file, a refused token, an HTML
error page, a timeout) is raised as :class:`ClientError` with one line to show; the CLI prints it and exits 1.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import platformdirs

API_PREFIX = "/api/v1"


class ClientError(Exception):
    """A failure to show the user as one line (no traceback)."""


class ApiError(ClientError):
    """The gateway answered with an error (problem+json, or anything else with a 4xx/5xx status)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        fields = ", ".join(e.get("field", "") for e in problem.get("errors") or [])
        detail = problem.get("detail") or problem.get("title") or f"HTTP {status}"
        super().__init__(f"{detail}" + (f" [{fields}]" if fields else ""))
        self.status = status
        self.problem = problem


def normalize_url(url: str) -> str:
    """The gateway's base URL: ``http(s)://host[:port][/prefix]``, without a trailing ``/`` or ``/api/v1``
    (a URL copied from the API's own address works too)."""
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ClientError(f"gateway URL {url!r} must look like http://HOST:PORT (REMOTEGPU_URL or --url)")
    if parts.query or parts.fragment:
        raise ClientError(f"gateway URL {url!r} must not carry a query or fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ClientError(f"gateway URL {url!r} has a bad port") from None
    path = parts.path.rstrip("/")
    path = path.removesuffix(API_PREFIX).rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{path}"


def credentials_path() -> Path:
    return Path(platformdirs.user_config_dir("remotegpu", appauthor=False)) / "credentials.toml"


def save_credentials(url: str, token: str, workspace: str | None) -> Path:
    path = credentials_path()
    values = {"url": url, "token": token} | ({"workspace": workspace} if workspace else {})
    lines = [f"{key} = {_toml_string(value)}" for key, value in values.items()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text("\n".join(lines) + "\n")
    except OSError as exc:
        raise ClientError(f"cannot write credentials file {path}: {exc.strerror}") from exc
    return path


def remove_credentials() -> Path | None:
    """Delete the saved credentials file; its path, or None if there was none."""
    path = credentials_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ClientError(f"cannot remove credentials file {path}: {exc.strerror}") from exc
    return path


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def saved_credentials() -> dict[str, str]:
    """What ``remotegpu login`` saved (empty when nothing was); a file that cannot be read is an error."""
    path = credentials_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ClientError(f"cannot read credentials file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ClientError(f"credentials file {path} is not text: run `remotegpu login` again") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ClientError(f"credentials file {path} is corrupt ({exc}): run `remotegpu login` again") from None
    saved = {key: value for key, value in data.items() if key in ("url", "token", "workspace")}
    if not all(isinstance(value, str) for value in saved.values()):
        raise ClientError(f"credentials file {path} is corrupt: run `remotegpu login` again")
    return saved


def load_credentials() -> dict[str, str]:
    """The saved credentials with ``REMOTEGPU_URL``, ``REMOTEGPU_TOKEN``, ``REMOTEGPU_WORKSPACE`` over them.

    When the environment gives both URL and token, the file is not read at all (a broken one does not matter).
    """
    env = {key: value for key in ("url", "token", "workspace") if (value := os.environ.get(f"REMOTEGPU_{key.upper()}"))}
    if "url" in env and "token" in env:
        return env
    return saved_credentials() | env


class GatewayClient:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        workspace: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 60,
    ) -> None:
        self.url = normalize_url(url)
        self.workspace = workspace
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    @classmethod
    def from_environment(cls) -> GatewayClient:
        creds = load_credentials()
        if "url" not in creds or "token" not in creds:
            raise ClientError("not logged in: run `remotegpu login` or set REMOTEGPU_URL and REMOTEGPU_TOKEN")
        timeout = float(os.environ.get("REMOTEGPU_TIMEOUT") or 60)
        return cls(creds["url"], creds["token"], workspace=creds.get("workspace"), timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        with self._transport_errors():
            response = self.http.request(method, API_PREFIX + path, **kwargs)
        _raise_for_problem(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ClientError(
                f"{self.url} answered {path} with something that is not JSON: is it the gateway?"
            ) from None

    def stream(self, path: str, params: dict[str, Any]) -> Iterator[bytes]:
        """A GET whose body comes as it is written (``logs?follow=true``), chunk by chunk."""
        with self._transport_errors():
            timeout = httpx.Timeout(self.http.timeout.connect, read=None)
            with self.http.stream("GET", API_PREFIX + path, params=params, timeout=timeout) as got:
                if got.status_code >= 400:
                    got.read()
                    _raise_for_problem(got)
                yield from got.iter_bytes()

    def _transport_errors(self) -> _TransportErrors:
        return _TransportErrors(self.url)

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
        if self.workspace:
            return self.workspace
        memberships = self.request("GET", "/me")["workspaces"]
        if len(memberships) == 1:
            return str(memberships[0]["workspace"])
        raise ApiError(400, _field_problem("workspace", "choose a workspace with --workspace (or REMOTEGPU_WORKSPACE)"))

    def resolve_job(self, workspace: str, ref: str) -> dict[str, Any]:
        """The job ``ref`` names: its gateway id, a unique prefix of it (4+ hex digits), or its Slurm job id.

        Digits alone are a Slurm id first, else a prefix (an id may start with digits only).
        """
        if len(ref) == 32:
            job: dict[str, Any] = self.request("GET", f"/workspaces/{workspace}/jobs/{ref.lower()}")
            return job
        is_prefix = 4 <= len(ref) < 32 and all(c in "0123456789abcdefABCDEF" for c in ref)
        if not ref.isdigit() and not is_prefix:
            raise ApiError(
                400, _field_problem("job", f"{ref!r} is not a job id (gateway id, a prefix of 4+ of it, or Slurm id)")
            )
        path = f"/workspaces/{workspace}/jobs"
        if ref.isdigit() and int(ref) > 0:
            found = self.request("GET", path, params={"slurm_job_id": int(ref), "limit": 1})["items"]
            if found:  # a Slurm id may repeat (a wiped cluster numbers from 1 again): the newest job
                newest: dict[str, Any] = found[0]
                return newest
        if is_prefix:
            found = self.request("GET", path, params={"id_prefix": ref.lower(), "limit": 2})["items"]
            if len(found) > 1:
                raise ApiError(400, _field_problem("job", f"{ref} names more than one job: give more of its id"))
            if found:
                only: dict[str, Any] = found[0]
                return only
        raise ApiError(404, _field_problem("job", f"no job {ref} in workspace {workspace}"))


class _TransportErrors:
    """Turns httpx's transport failures into one line naming the gateway."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None or not isinstance(exc, httpx.HTTPError):
            return
        if isinstance(exc, httpx.TimeoutException):
            raise ClientError(f"the gateway at {self.url} did not answer in time ({type(exc).__name__})") from None
        if isinstance(exc, httpx.ConnectError):
            raise ClientError(f"cannot connect to the gateway at {self.url}: {_reason(exc)}") from None
        raise ClientError(f"talking to the gateway at {self.url} failed: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


def _raise_for_problem(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    problem: dict[str, Any] | None = None
    if "json" in response.headers.get("content-type", ""):
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            problem = body
    if problem is None:  # an HTML error page from a proxy, or a server that is not the gateway
        reason = response.reason_phrase or "error"
        problem = {"detail": f"the gateway answered HTTP {response.status_code} {reason}"}
    if response.status_code == 401 and "authorization" in response.request.headers:
        detail = problem.get("detail") or "not authenticated"
        problem = {**problem, "detail": f"{detail}: your token is wrong, expired or revoked; run `remotegpu login`"}
    raise ApiError(response.status_code, problem)


def _field_problem(field: str, detail: str) -> dict[str, Any]:
    """A problem+json body as the gateway writes them, for mistakes the CLI finds itself."""
    return {"detail": detail, "errors": [{"field": field, "message": detail}]}
