"""The OpenAPI document says what the gateway really answers; the docs page's assets come from the package."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from gateway.errors import FieldError, Problem

ERRORS = {"400", "401", "403", "404", "409", "413", "429", "503"}


@pytest.fixture
async def spec(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/schema/openapi.json")
    assert r.status_code == 200
    document: dict[str, Any] = r.json()
    return document


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(p, m, op) for p, item in spec["paths"].items() for m, op in item.items() if m != "parameters"]


async def test_every_error_is_documented_as_the_problem_the_gateway_sends(spec: dict[str, Any]) -> None:
    problem = spec["components"]["schemas"]["Problem"]
    assert set(problem["properties"]) == set(Problem.__struct_fields__)
    assert set(problem["required"]) == {"type", "title", "status"}
    assert set(spec["components"]["schemas"]["FieldError"]["properties"]) == set(FieldError.__struct_fields__)
    seen: set[str] = set()
    for path, method, op in _operations(spec):
        for code, response in op["responses"].items():
            if code.startswith(("4", "5")) and path != "/readyz":
                assert response["content"] == {
                    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                }, (method, path, code)
                seen.add(code)
        codes = set(op["responses"])
        if op.get("security"):
            assert {"401", "403", "404", "503"} <= codes, (method, path)
        if "requestBody" in op:
            assert {"400", "413"} <= codes, (method, path)
    assert seen >= ERRORS
    assert "429" in spec["paths"]["/api/v1/auth/tokens"]["post"]["responses"]
    assert "429" not in spec["paths"]["/api/v1/me"]["get"]["responses"]
    assert "409" in spec["paths"]["/api/v1/workspaces/{ws}/jobs/{job_id}/cancel"]["post"]["responses"]


async def test_cancel_hold_and_release_are_operations_of_their_own(spec: dict[str, Any]) -> None:
    jobs = "/api/v1/workspaces/{ws}/jobs/{job_id}"
    ops = {action: spec["paths"][f"{jobs}/{action}"]["post"] for action in ("cancel", "hold", "release")}
    assert {op["operationId"] for op in ops.values()} == {"cancelJob", "holdJob", "releaseJob"}
    assert len({op["summary"] for op in ops.values()}) == 3
    assert not [p for p in spec["paths"] if "{action}" in p]
    ids = [op["operationId"] for _, _, op in _operations(spec)]
    assert len(ids) == len(set(ids))


async def test_request_bodies_that_refuse_unknown_fields_say_so(
    spec: dict[str, Any], client: httpx.AsyncClient, make_user: Any
) -> None:
    schemas = spec["components"]["schemas"]
    assert schemas["WorkspaceCreate"]["additionalProperties"] is False
    assert schemas["JobCreate"]["additionalProperties"] is False
    # and it is true: an unknown field is refused
    owner = await make_user("owner")
    r = await client.post("/api/v1/workspaces", json={"slug": "abc", "name": "A", "colour": "red"}, headers=owner)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "colour"
    # answers are not closed: a client must accept fields added later
    assert "additionalProperties" not in schemas["WorkspaceOut"]


async def test_since_is_a_date_time_not_a_number(client: httpx.AsyncClient, make_user: Any) -> None:
    owner = await make_user("owner")
    assert (await client.post("/api/v1/workspaces", json={"slug": "dates", "name": "D"}, headers=owner)).is_success
    jobs = "/api/v1/workspaces/dates/jobs"
    for bad in ("0.5", "1700000000", "2026-13-01T00:00:00Z", "2026-01-01", "yesterday"):
        r = await client.get(jobs, params={"since": bad}, headers=owner)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["errors"][0]["field"] == "since", r.text
    for good in ("2026-01-31T12:00:00Z", "2026-01-31T12:00:00.250+08:00", "2026-01-31t12:00:00z"):
        r = await client.get(jobs, params={"since": good}, headers=owner)
        assert r.status_code == 200, (good, r.text)


async def test_allow_names_every_method_of_a_path(client: httpx.AsyncClient, spec: dict[str, Any]) -> None:
    for path, item in spec["paths"].items():
        url = path.replace("{ws}", "abc").replace("{job_id}", "a" * 32).replace("{token_id}", "1")
        url = url.replace("{name}", "bob").replace("{user}", "bob").replace("{key_id}", "1")
        for param, value in (
            ("dataset_id", "a" * 32),
            ("upload_id", "a" * 32),
            ("version", "1"),
            ("task_id", "1"),
            ("run_id", "1"),
        ):
            url = url.replace(f"{{{param}}}", value)
        url = url.replace("{slot}", "data-1")
        documented = {m.upper() for m in item if m != "parameters"} | {"OPTIONS"}
        options = await client.options(url)
        assert options.status_code == 204, (url, options.text)
        assert set(options.headers["allow"].split(", ")) == documented, url
        refused = await client.request("TRACE", url)
        assert refused.status_code == 405, url
        assert set(refused.headers["allow"].split(", ")) == documented, url


async def test_the_docs_page_loads_its_assets_from_the_gateway(client: httpx.AsyncClient) -> None:
    page = await client.get("/schema")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    loads = re.findall(r"""(?:src|href)=["']([^"']+)""", page.text)
    assert loads and all(url.startswith("/schema/assets/") for url in loads), loads
    for asset, kind in (
        ("/schema/assets/swagger-ui-bundle.js", "javascript"),
        ("/schema/assets/swagger-ui-standalone-preset.js", "javascript"),
        ("/schema/assets/swagger-ui.css", "css"),
        ("/schema/assets/favicon-32x32.png", "png"),
    ):
        assert asset in page.text
        r = await client.get(asset)
        assert r.status_code == 200 and kind in r.headers["content-type"], asset
        assert len(r.content) > 500
    assert (await client.get("/schema/assets/swagger-editor-bundle.js")).status_code == 404
    assert (await client.get("/schema/assets/..%2F__init__.py")).status_code == 404


async def test_bounds_at_zero_are_documented(spec: dict[str, Any]) -> None:
    """Litestar leaves out a ``ge=0`` (it tests the bound for truth); clients then send -1 and get a 400."""
    assert spec["components"]["schemas"]["QuotaIn"]["properties"]["cpus"]["minimum"] == 0
    params = {p["name"]: p for p in spec["paths"]["/api/v1/workspaces/{ws}/jobs/{job_id}/logs"]["get"]["parameters"]}
    assert params["task"]["schema"]["minimum"] == 0
    listing = {p["name"]: p for p in spec["paths"]["/api/v1/workspaces"]["get"]["parameters"]}
    assert listing["offset"]["schema"]["minimum"] == 0


async def test_audit_dates_are_date_times_not_numbers(client: httpx.AsyncClient, make_user: Any) -> None:
    admin = await make_user("root", admin=True)
    for name in ("since", "until"):
        r = await client.get("/api/v1/audit", params={name: "0.5"}, headers=admin)
        assert r.status_code == 400 and r.json()["errors"][0]["field"] == name, r.text
    assert (await client.get("/api/v1/audit", params={"since": "2026-01-01T00:00:00Z"}, headers=admin)).is_success
