"""The salt-api client against a scripted transport: login once, again after a 401, errors as one line."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from gateway.nodes.salt_api import SaltApi, SaltApiError

PASSWORD = "shared-secret-xyz"


class Api:
    """Answers like rest_cherrypy: JSON for what works, HTML pages for refusals."""

    def __init__(self) -> None:
        self.logins = 0
        self.valid: set[str] = set()
        self.bodies: list[Any] = []
        self.urls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(str(request.url))
        if request.url.path == "/login":
            body = json.loads(request.content)
            if body != {"username": "remotegpu", "password": PASSWORD, "eauth": "sharedsecret"}:
                return httpx.Response(401, text="<html>401 Unauthorized</html>")
            self.logins += 1
            token = f"tok{self.logins}"
            self.valid = {token}
            return httpx.Response(200, json={"return": [{"token": token, "expire": time.time() + 43200}]})
        if request.headers.get("x-auth-token") not in self.valid:
            return httpx.Response(401, text="<html>401 Unauthorized</html>")
        if request.url.path.startswith("/jobs/"):
            return httpx.Response(200, json={"info": [{"Minions": ["n1"], "Result": {}}], "return": [{}]})
        low = json.loads(request.content)
        self.bodies.append(low)
        if low[0]["client"] == "local_async":
            minions = [m for m in low[0]["tgt"].split(",") if m in ("n1", "n2")]
            return httpx.Response(200, json={"return": [{"jid": "2026", "minions": minions} if minions else {}]})
        return httpx.Response(500, text="<html>500</html>")


def _client(api: Api, password: str = PASSWORD) -> SaltApi:
    return SaltApi("http://salt.test:48000/", username="remotegpu", password=password,
                   transport=httpx.MockTransport(api))  # fmt: skip


async def test_logs_in_once_and_again_when_the_token_is_refused() -> None:
    api = Api()
    async with _client(api) as salt:
        pillar = {"remotegpu": {"munge": {"key_b64": "c2VjcmV0"}}}
        assert await salt.state_apply_async(["n1"], ["remotegpu.munge", "remotegpu.slurmd"], test=True,
                                            pillar=pillar) == ("2026", ["n1"])  # fmt: skip
        assert (await salt.job("2026"))["info"][0]["Minions"] == ["n1"]
        assert api.logins == 1
        api.valid = set()  # the master restarted: its tokens are gone
        assert await salt.state_apply_async(["n1"], ["remotegpu"], test=False, pillar={}) == ("2026", ["n1"])
        assert api.logins == 2
    low = api.bodies[0][0]
    assert low["arg"] == ["remotegpu.munge,remotegpu.slurmd"] and low["kwarg"] == {
        "test": True,
        "pillar": pillar,
        "queue": True,
    }
    assert low["tgt_type"] == "list"
    assert all("c2VjcmV0" not in url and PASSWORD not in url for url in api.urls)  # secrets only in bodies


async def test_a_wrong_secret_is_one_line_without_it() -> None:
    async with _client(Api(), "wrong") as salt:
        with pytest.raises(SaltApiError) as refused:
            await salt.job("1")
    assert "refused the login" in str(refused.value) and "wrong" not in str(refused.value)
    assert PASSWORD not in repr(_client(Api()))


async def test_no_minion_matched_and_html_errors() -> None:
    async with _client(Api()) as salt:
        with pytest.raises(SaltApiError, match="started no job"):
            await salt.state_apply_async(["ghost"], ["remotegpu"], test=True, pillar={})
        # one job for several minions: those Salt did not send it to are named by their absence
        assert await salt.state_apply_async(["n1", "ghost", "n2"], ["remotegpu"], test=True, pillar={}) == (
            "2026",
            ["n1", "n2"],
        )
        with pytest.raises(SaltApiError, match="HTTP 500"):
            await salt.run({"client": "runner", "fun": "manage.status"})


async def test_nothing_listening() -> None:
    salt = SaltApi("http://127.0.0.1:9", username="u", password=PASSWORD, timeout=2)
    with pytest.raises(SaltApiError, match="cannot reach salt-api"):
        await salt.job("1")
    await salt.close()
