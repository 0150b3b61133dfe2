"""The one way lists are counted and paged."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.schemas import Pagination

AnySelect = Select[*tuple[Any, ...]]
SelectT = TypeVar("SelectT", bound=AnySelect)


async def count_rows(session: AsyncSession, query: AnySelect) -> int:
    """How many rows ``query`` matches, whatever page is asked for.

    A plain query is counted in place (``SELECT count(*) FROM <its joins> WHERE ...``), which the database
    answers from its indexes; one with grouping, DISTINCT or a limit is counted as a subquery.
    """
    if (
        query._group_by_clauses
        or query._distinct
        or query._limit_clause is not None
        or query._offset_clause is not None
    ):
        counted = select(func.count()).select_from(query.order_by(None).subquery())
    else:
        counted = query.with_only_columns(func.count(), maintain_column_froms=True).order_by(None)
    return int(await session.scalar(counted) or 0)


def page_of(query: SelectT, page: Pagination) -> SelectT:
    return query.limit(page.limit).offset(page.offset)
