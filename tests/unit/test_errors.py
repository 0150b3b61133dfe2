from __future__ import annotations

import pytest

from gateway.errors import Conflict, Unauthorized, field_of


@pytest.mark.parametrize(
    ("key", "message", "field"),
    [
        ("data", "Object contains unknown field `zz`", "zz"),
        ("data", "Object missing required field `slug`", "slug"),
        ("quota", "Object missing required field `gpus`", "quota.gpus"),
        ("slug", "Expected `str` of length <= 32", "slug"),
        ("gpus_by_type[...]", "Expected `int` >= 0", "gpus_by_type"),
        ("data", "Expected `int`, got `str` - at `$.members[0].role`", "members[0].role"),
        (None, "JSON is malformed", "body"),
    ],
)
def test_field_of(key: str | None, message: str, field: str) -> None:
    assert field_of(key, message) == field


def test_domain_errors_carry_field_and_headers() -> None:
    exc = Conflict("taken", field="slug")
    assert exc.status == 409 and exc.errors is not None and exc.errors[0].field == "slug"
    assert Unauthorized("no").headers == {"WWW-Authenticate": 'Bearer realm="remotegpu"'}
