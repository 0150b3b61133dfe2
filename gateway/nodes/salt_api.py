"""A small client of salt-api (rest_cherrypy) over HTTP: the gateway never imports Salt (Salt pins
``packaging==24.0`` and lives in its own venv).

It logs in with eauth (``POST /login``), keeps the token until shortly before it expires (12 h by default) and
logs in again once when salt-api refuses it. Work goes as lowstate to ``POST /``: ``local_async`` for
``state.apply`` (the jid comes back at once; ``GET /jobs/<jid>`` is asked until every minion has returned),
``local`` with a timeout for short calls (grains), ``wheel`` for keys. salt-api answers errors with HTML pages
(even to ``Accept: application/json``): they become :class:`SaltApiError` with the status only. Pillar travels
in the POST body, never in a URL, and nothing of a request body is logged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

_RENEW_BEFORE = 60.0


class SaltApiError(Exception):
    """salt-api could not be reached, refused, or answered something else than expected (one line)."""


class SaltApi:
    def __init__(
        self,
        url: str,
        *,
        username: str,
        password: str,
        eauth: str = "sharedsecret",
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.username, self._password, self.eauth = username, password, eauth
        self.timeout = timeout
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._token: str | None = None
        self._expires = 0.0
        self._login_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SaltApi(url={self.url!r}, username={self.username!r}, eauth={self.eauth!r})"

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> SaltApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.url,
                timeout=self.timeout,
                transport=self._transport,
                headers={"Accept": "application/json"},
            )
        return self._client

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http().request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise SaltApiError(f"salt-api at {self.url} did not answer {path} within {self.timeout:.0f} s") from exc
        except httpx.HTTPError as exc:
            reason = (str(exc) or type(exc).__name__).splitlines()[0]
            raise SaltApiError(f"cannot reach salt-api at {self.url}: {reason}") from exc

    @staticmethod
    def _json(response: httpx.Response, what: str) -> Any:
        try:
            return msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            raise SaltApiError(f"salt-api answered {what} with something that is not JSON") from None

    async def _login(self) -> str:
        async with self._login_lock:
            if self._token is not None and time.time() < self._expires - _RENEW_BEFORE:
                return self._token
            body = {"username": self.username, "password": self._password, "eauth": self.eauth}
            response = await self._request("POST", "/login", json=body)
            if response.status_code in (401, 403):
                raise SaltApiError(f"salt-api refused the login of {self.username!r} (eauth {self.eauth})")
            if response.status_code >= 400:
                raise SaltApiError(f"salt-api answered /login with HTTP {response.status_code}")
            answer = self._json(response, "/login")
            try:
                entry = answer["return"][0]
                token, expires = str(entry["token"]), float(entry["expire"])
            except (KeyError, IndexError, TypeError, ValueError):
                raise SaltApiError("salt-api's /login answer has no token") from None
            self._token, self._expires = token, expires
            return token

    async def _authorized(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in (1, 2):
            token = await self._login()
            response = await self._request(method, path, headers={"X-Auth-Token": token}, **kwargs)
            if response.status_code == 401 and attempt == 1:
                self._token = None  # expired or the master restarted: log in again, once
                continue
            if response.status_code >= 400:
                raise SaltApiError(f"salt-api answered {method} {path} with HTTP {response.status_code}")
            return self._json(response, path)
        raise SaltApiError("salt-api refused a fresh token")  # pragma: no cover - the loop returns or raises

    async def run(self, lowstate: Mapping[str, Any]) -> Any:
        """One lowstate chunk through ``POST /``; its return (``return[0]``)."""
        answer = await self._authorized("POST", "/", json=[dict(lowstate)])
        try:
            return answer["return"][0]
        except (KeyError, IndexError, TypeError):
            raise SaltApiError("salt-api's answer has no return") from None

    # --- what the nodes service asks ----------------------------------------------------------------------

    async def state_apply_async(
        self, minions: Sequence[str], states: Sequence[str], *, test: bool, pillar: Mapping[str, Any]
    ) -> tuple[str, list[str]]:
        """Start ``state.apply`` of ``states`` on ``minions`` as one Salt job: its jid, and the minions Salt sent
        it to (one without an accepted key is not among them)."""
        # queue: a state run already going on a minion (someone's salt-call) makes this one wait, not fail
        kwarg: dict[str, Any] = {"test": test, "pillar": dict(pillar), "queue": True}
        ret = await self.run(
            {"client": "local_async", "tgt": ",".join(minions), "tgt_type": "list", "fun": "state.apply",
             "arg": [",".join(states)], "kwarg": kwarg}
        )  # fmt: skip
        jid = ret.get("jid") if isinstance(ret, Mapping) else None
        matched = ret.get("minions") if isinstance(ret, Mapping) else None
        if not jid:  # {}: none matched
            raise SaltApiError(f"Salt started no job on {', '.join(minions)}: are their keys accepted?")
        return str(jid), [str(m) for m in matched] if isinstance(matched, list) else list(minions)

    async def job(self, jid: str) -> dict[str, Any]:
        """salt-api's ``GET /jobs/<jid>``: ``{"info": [...], "return": [...]}``."""
        answer = await self._authorized("GET", f"/jobs/{quote(jid, safe='')}")
        if not isinstance(answer, dict):
            raise SaltApiError("salt-api's job answer is not an object")
        return answer

    async def grains(self, minion: str, *names: str, wait: int = 10) -> dict[str, Any] | None:
        """Some grains of one minion (``client: local``, at most ``wait`` s); None if it did not answer."""
        ret = await self.run(
            {"client": "local", "tgt": minion, "tgt_type": "list", "fun": "grains.item", "arg": list(names),
             "timeout": wait, "gather_job_timeout": wait}
        )  # fmt: skip
        found = ret.get(minion) if isinstance(ret, Mapping) else None
        return dict(found) if isinstance(found, Mapping) else None

    async def _wheel(self, fun: str, **kwargs: Any) -> Any:
        ret = await self.run({"client": "wheel", "fun": fun, **kwargs})
        data = ret.get("data") if isinstance(ret, Mapping) else None
        if not isinstance(data, Mapping) or not data.get("success", False):
            raise SaltApiError(f"salt-api's wheel {fun} did not succeed")
        return data.get("return")

    async def gen_accept(self, minion: str, *, keysize: int = 2048) -> tuple[str, str]:
        """A new key pair for ``minion``, its public half accepted on the master at once (replacing any other);
        (private PEM, public PEM)."""
        ret = await self._wheel("key.gen_accept", id_=minion, keysize=keysize, force=True)
        if not isinstance(ret, Mapping) or not ret.get("priv") or not ret.get("pub"):
            raise SaltApiError(f"salt-api's key.gen_accept returned no key pair for {minion!r}")
        return str(ret["priv"]), str(ret["pub"])

    async def delete_key(self, minion: str) -> None:
        await self._wheel("key.delete", match=minion)

    async def master_public_key(self) -> str:
        """The master's public key (``pki_dir/master.pub``) as ``key.master_key_str`` reads it."""
        ret = await self._wheel("key.master_key_str")
        local = ret.get("local") if isinstance(ret, Mapping) else None
        if isinstance(local, Mapping):
            for value in local.values():
                if isinstance(value, str) and "BEGIN PUBLIC KEY" in value:
                    return value
        raise SaltApiError("salt-api's key.master_key_str returned no public key")
