"""The allow-list patterns match whole values: a trailing newline is not a valid name."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import pytest

from gateway import schemas

NAMES: list[tuple[Any, str]] = [
    (schemas.UserName, "alice"),
    (schemas.Slug, "vision-lab"),
    (schemas.SlurmAccount, "vision_lab"),
    (schemas.DisplayName, "Vision lab"),
    (schemas.Email, "a@b.org"),
    (schemas.Region, "cn-east"),
    (schemas.GpuType, "a100"),
    (schemas.Currency, "CNY"),
    (schemas.TokenName, "laptop"),
]


@pytest.mark.parametrize(("kind", "good"), NAMES)
@pytest.mark.parametrize("suffix", ["\n", "\r\n", "\n\n", "\x00"])
def test_a_valid_name_with_a_line_ending_is_refused(kind: Any, good: str, suffix: str) -> None:
    assert msgspec.convert(good, kind) == good
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(good + suffix, kind)


def test_whole_keeps_alternatives_inside_the_anchors() -> None:
    verb = Annotated[str, msgspec.Meta(pattern=schemas.whole("cancel|hold"))]
    assert msgspec.convert("hold", verb) == "hold"
    for bad in ("cancelx", "xhold", "hold\n"):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(bad, verb)
