"""The one way lists are counted and paged."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.schemas import Pagination

AnySelect = Select[*tuple[Any, ...]]
SelectT = TypeVar("SelectT", bound=AnySelect)


async def count_rows(session: AsyncSession, query: AnySelect) -> int:
    """How many rows ``query`` matches, whatever page is asked for."""
    return int(await session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0)


def page_of(query: SelectT, page: Pagination) -> SelectT:
    return query.limit(page.limit).offset(page.offset)
