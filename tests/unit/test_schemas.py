"""The name allow-lists: what they accept, and that nothing shell- or path-like gets through."""

from __future__ import annotations

import re

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.schemas import Email, GpuType, Region, Slug, UserName


class Names(msgspec.Struct):
    user: UserName | None = None
    slug: Slug | None = None
    region: Region | None = None
    gpu: GpuType | None = None
    email: Email | None = None


def accepts(field: str, value: str) -> bool:
    try:
        msgspec.convert({field: value}, Names)
    except msgspec.ValidationError:
        return False
    return True


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("user", "alice"),
        ("user", "_svc-1"),
        ("slug", "vision-lab"),
        ("slug", "abc"),
        ("region", "cn-north-1"),
        ("gpu", "a100"),
        ("gpu", "h100_80gb"),
        ("email", "a.b@lab.example.org"),
    ],
)
def test_accepts_ordinary_names(field: str, value: str) -> None:
    assert accepts(field, value)


DANGEROUS = st.text(min_size=1, max_size=40).filter(lambda s: re.search(r"[^a-z0-9_-]", s) is not None)


@settings(max_examples=300)
@given(value=DANGEROUS)
def test_no_shell_or_path_characters_in_names(value: str) -> None:
    for field in ("user", "slug", "region"):
        assert not accepts(field, value)


@pytest.mark.parametrize("value", ["", "ab", "-ab", "ab-", "Ab", "a" * 33, "a/b", "../x", "a b", "a;b", "a$b"])
def test_rejects_bad_slugs(value: str) -> None:
    assert not accepts("slug", value)


@given(value=st.from_regex(r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$", fullmatch=True))
def test_every_slug_pattern_match_is_accepted(value: str) -> None:
    assert accepts("slug", value)
