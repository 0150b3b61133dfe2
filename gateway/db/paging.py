"""The one way lists are counted and paged."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.schemas import COUNT_LIMIT, Pagination

AnySelect = Select[*tuple[Any, ...]]
SelectT = TypeVar("SelectT", bound=AnySelect)


async def count_rows(session: AsyncSession, query: AnySelect, *, limit: int = COUNT_LIMIT) -> int | None:
    """How many rows ``query`` matches, whatever page is asked for, if at most ``limit``; else None.

    Counting stops after ``limit + 1`` rows, so a large table costs no more than a small one. A plain query is
    counted on one narrow column (``SELECT 1 FROM <its joins> WHERE ... LIMIT n``); one with grouping or
    DISTINCT as it is.
    """
    shaped = query._group_by_clauses or query._distinct  # SQLAlchemy has no public accessor for these
    bounded = query if shaped else query.with_only_columns(literal_column("1"), maintain_column_froms=True)
    counted = select(func.count()).select_from(bounded.order_by(None).limit(limit + 1).subquery())
    found = int(await session.scalar(counted) or 0)
    return found if found <= limit else None


def page_of(query: SelectT, page: Pagination) -> SelectT:
    return query.limit(page.limit).offset(page.offset)
