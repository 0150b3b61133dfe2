"""The one way lists are counted and paged."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.schemas import COUNT_LIMIT, Pagination

AnySelect = Select[*tuple[Any, ...]]
SelectT = TypeVar("SelectT", bound=AnySelect)


def count_query(query: AnySelect, *, limit: int = COUNT_LIMIT) -> AnySelect:
    """``SELECT count(*)`` of what ``query`` matches, whatever page is asked for, stopping after ``limit + 1``
    rows, so a large table costs no more than a small one (see :func:`bounded`).

    A plain query is counted on one narrow column (``SELECT 1 FROM <its joins> WHERE ... LIMIT n``); one with
    grouping or DISTINCT as it is.
    """
    shaped = query._group_by_clauses or query._distinct  # SQLAlchemy has no public accessor for these
    narrow = query if shaped else query.with_only_columns(literal_column("1"), maintain_column_froms=True)
    return select(func.count()).select_from(narrow.order_by(None).limit(limit + 1).subquery())


def bounded(found: int | None, *, limit: int = COUNT_LIMIT) -> int | None:
    """A count from :func:`count_query` as a list's ``total``: None past ``limit``."""
    found = int(found or 0)
    return found if found <= limit else None


async def count_rows(session: AsyncSession, query: AnySelect, *, limit: int = COUNT_LIMIT) -> int | None:
    """How many rows ``query`` matches if at most ``limit``; else None."""
    return bounded(await session.scalar(count_query(query, limit=limit)), limit=limit)


def page_of(query: SelectT, page: Pagination) -> SelectT:
    return query.limit(page.limit).offset(page.offset)
