"""The TensorBoard proxy's cookie and what it forwards (the whole path runs in the Slurm suite)."""

from __future__ import annotations

import httpx

from gateway.environments import tokens
from gateway.environments.tensorboard import (
    CSP,
    CookieClaims,
    cookie_key,
    forwarded_headers,
    make_cookie,
    read_cookie,
    returned_headers,
)

ENV = "a" * 32
NOW = 1_800_000_000


def claims(**changes: object) -> CookieClaims:
    values: dict[str, object] = {"environment_id": ENV, "user_id": 7, "token_id": 3, "expires": NOW + 60}
    values.update(changes)
    return CookieClaims(**values)  # type: ignore[arg-type]


def test_a_cookie_is_read_back_only_with_its_key_for_its_environment_until_it_expires() -> None:
    key = cookie_key("secret")
    value = make_cookie(key, claims())
    assert read_cookie(key, value, ENV, NOW) == claims()
    assert read_cookie(cookie_key("other secret"), value, ENV, NOW) is None
    assert read_cookie(key, value, "b" * 32, NOW) is None
    assert read_cookie(key, value, ENV, NOW + 60) is None
    for bad in ("", "v1", value + "0", value.replace("v1.", "v2.", 1), value.upper(), value.replace(".7.", ".8.")):
        assert read_cookie(key, bad, ENV, NOW) is None, bad


def test_the_cookie_key_is_not_the_session_tokens_key() -> None:
    """A session's callback token and a cookie are signed under different keys: neither stands for the other."""
    assert cookie_key("secret") != b"secret"
    session_token = tokens.make("secret", ENV)
    assert read_cookie(cookie_key("secret"), session_token, ENV, NOW) is None
    assert tokens.verified_job_id("secret", make_cookie(cookie_key("secret"), claims())) is None


def test_credentials_and_hop_by_hop_headers_stay_at_the_gateway() -> None:
    sent = [
        (b"Host", b"gateway:8000"),
        (b"Authorization", b"Bearer rgpu_secret"),
        (b"Cookie", b"remotegpu_tensorboard=v1.x; other=1"),
        (b"Connection", b"keep-alive, X-Private"),
        (b"X-Private", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"TE", b"trailers"),
        (b"X-Forwarded-For", b"1.2.3.4"),
        (b"Accept", b"application/json"),
        (b"Content-Type", b"application/x-www-form-urlencoded"),
        (b"Content-Length", b"12"),
    ]
    out = forwarded_headers(sent, scheme="https", host="gateway:8000")
    assert out == [
        ("accept", "application/json"),
        ("content-type", "application/x-www-form-urlencoded"),
        ("content-length", "12"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "gateway:8000"),
    ]


def test_tensorboard_sets_no_cookie_and_no_policy_of_its_own() -> None:
    answer = httpx.Headers(
        [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", "10"),
            ("Content-Encoding", "gzip"),
            ("Set-Cookie", "evil=1; Path=/"),
            ("Content-Security-Policy", "default-src *"),
            ("Connection", "close"),
            ("Transfer-Encoding", "chunked"),
            ("Cache-Control", "no-cache"),
            ("Vary", "Accept-Encoding"),
            ("Vary", "Origin"),
        ]
    )
    out = returned_headers(answer)
    assert out == {
        "content-type": "text/html; charset=utf-8",
        "content-length": "10",
        "content-encoding": "gzip",
        "cache-control": "no-cache",
        "vary": "Accept-Encoding, Origin",
        "content-security-policy": CSP,
        "x-content-type-options": "nosniff",
    }
    assert "http" not in CSP


def test_a_redirect_to_tensorboards_own_address_becomes_a_path_on_the_gateway() -> None:
    prefix = f"/api/v1/workspaces/lab/environments/{ENV}/tensorboard/"
    out = returned_headers(httpx.Headers({"Location": "http://10.0.0.5:6006" + prefix}), origin="http://10.0.0.5:6006")
    assert out["location"] == prefix
    elsewhere = returned_headers(httpx.Headers({"Location": "https://example.org/x"}), origin="http://10.0.0.5:6006")
    assert elsewhere["location"] == "https://example.org/x"
