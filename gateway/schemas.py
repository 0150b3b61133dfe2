"""Shared schema pieces: name patterns (the allow-lists every domain validates against) and pagination."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

import msgspec
from litestar.params import PathParameter, QueryParameter

from gateway.errors import InvalidInput

T = TypeVar("T")


def whole(body: str) -> str:
    """Anchor an allow-list pattern so that it must match the whole value.

    Python's ``$`` also matches before a trailing newline (``"alice\\n"`` would pass ``^[a-z]+$``); ``(?!\\n)$``
    does not, and unlike ``\\Z`` it is also valid in the ECMA-262 dialect that OpenAPI clients read.
    """
    return rf"^(?:{body})(?!\n)$"


USERNAME_PATTERN = whole(r"[a-z_][a-z0-9_-]{0,31}")
SLUG_PATTERN = whole(r"[a-z][a-z0-9-]{1,30}[a-z0-9]")

# POSIX-portable account names, also valid as Slurm user names.
UserName = Annotated[
    str,
    msgspec.Meta(
        pattern=USERNAME_PATTERN,
        max_length=32,
        description="lowercase letters, digits, '_' and '-'; 1-32 chars",
        examples=["alice"],
    ),
]
# Workspace slugs appear in URLs and become Slurm account names.
Slug = Annotated[
    str,
    msgspec.Meta(
        pattern=SLUG_PATTERN,
        min_length=3,
        max_length=32,
        description="3-32 chars: lowercase letters, digits, '-'; starts with a letter",
        examples=["vision-lab"],
    ),
]
SlurmAccount = Annotated[str, msgspec.Meta(pattern=whole(r"[a-z][a-z0-9_-]{0,63}"), max_length=64)]
DisplayName = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=128, pattern=whole(r"[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*")),
]
Description = Annotated[str, msgspec.Meta(max_length=4096)]
Email = Annotated[
    str,
    msgspec.Meta(
        pattern=whole(r"[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f]{1,189}\.[^@\s\x00-\x1f\x7f]{1,63}"),
        max_length=254,
    ),
]
Region = Annotated[str, msgspec.Meta(pattern=whole(r"[a-z0-9][a-z0-9-]{0,63}"), max_length=64)]
GpuType = Annotated[str, msgspec.Meta(pattern=whole(r"[a-z0-9][a-z0-9_.-]{0,31}"), max_length=32)]
Currency = Annotated[str, msgspec.Meta(pattern=whole(r"[A-Z]{3}"), description="ISO 4217 code")]
Password = Annotated[str, msgspec.Meta(min_length=8, max_length=256)]
TokenName = Annotated[str, msgspec.Meta(pattern=whole(r"[A-Za-z0-9 ._:@-]{1,64}"), max_length=64)]
Count = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
Bytes = Annotated[int, msgspec.Meta(ge=0, le=2**62)]

# Path and query parameters are validated by Litestar's own constraints (msgspec.Meta cannot go there).
UserNameParam = Annotated[str, PathParameter(pattern=USERNAME_PATTERN, max_length=32)]
SlugParam = Annotated[str, PathParameter(pattern=SLUG_PATTERN, max_length=32)]
SlugQuery = Annotated[str | None, QueryParameter(pattern=SLUG_PATTERN, max_length=32)]

RFC3339_PATTERN = whole(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})")
InstantQuery = Annotated[
    str | None,
    QueryParameter(
        pattern=RFC3339_PATTERN,
        max_length=40,
        description="an RFC 3339 date-time with its offset, e.g. 2026-01-31T12:00:00Z",
        schema_extra={"format": "date-time"},
    ),
]
"""A date-time query parameter. Read as text and parsed by :func:`instant`: typed as ``datetime``, Litestar would
also take a number (``since=0.5``) as seconds since 1970."""


def instant(field: str, value: str | None) -> datetime | None:
    """The value of an :data:`InstantQuery` parameter (already matched against its pattern)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInput(f"not a date-time: {exc}", field=field) from None
    return parsed.astimezone(UTC)


def request_bodies(structs: Iterable[type[msgspec.Struct]]) -> dict[str, dict[str, Any]]:
    """JSON Schemas of the request bodies among ``structs`` (those that refuse unknown fields) as msgspec, which
    validates them, states them, and of what they refer to (an enum), by name.

    The OpenAPI document takes these over Litestar's own translation, which drops what msgspec checks of dict
    keys and values and of list items. A struct's ``json_schema_rules`` (what its fields must satisfy together,
    which msgspec has no words for) are added to its schema.
    """
    bodies = [cls for cls in structs if cls.__struct_config__.forbid_unknown_fields]
    _, components = msgspec.json.schema_components(bodies, ref_template="#/components/schemas/{name}")
    for cls in bodies:
        components[cls.__name__].update(getattr(cls, "json_schema_rules", {}))
    return components


MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50


COUNT_LIMIT = 1000
"""Lists count their matches exactly up to this many; past it ``total`` is None (counting every row of a large
table on every page would cost more than the page itself)."""


class Page(msgspec.Struct, Generic[T]):
    """One page of a list."""

    items: list[T]
    total: int | None
    """How many match in all (not just this page); None when more than ``COUNT_LIMIT`` (1,000) match."""
    limit: int
    offset: int


class Pagination(msgspec.Struct, frozen=True):
    limit: int = DEFAULT_PAGE_SIZE
    offset: int = 0
