from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from litestar import Controller, Response, get, post
from litestar.datastructures import State
from litestar.params import FromQuery, HeaderParameter, JSONBody, QueryParameter

from gateway.billing import service
from gateway.billing.models import ENTRY_KINDS, RESOURCE_TYPES
from gateway.billing.schemas import (
    BalanceOut,
    EntryOut,
    PriceCreate,
    PriceOut,
    PriceResource,
    ReportOut,
    TopUpCreate,
    TopUpOut,
    UsageOut,
)
from gateway.config import Settings
from gateway.dependencies import BEARER, AppSettings, CurrentActor, DbSession
from gateway.dependencies import Page as PageParams
from gateway.errors import InvalidInput
from gateway.schemas import RFC3339_PATTERN, Currency, InstantQuery, Page, instant, whole
from gateway.workspaces.deps import WORKSPACE_DEPENDENCIES, WS_PATH, Access

IdempotencyKey = Annotated[
    str | None, HeaderParameter(name="Idempotency-Key", max_length=128, pattern=whole(r"[A-Za-z0-9._:-]{1,128}"))
]
_TIME: dict[str, Any] = {
    "pattern": RFC3339_PATTERN,
    "max_length": 40,
    "description": "an RFC 3339 date-time with its offset",
    "schema_extra": {"format": "date-time"},
}
FromParam = Annotated[str | None, QueryParameter(name="from", **_TIME)]
ToParam = Annotated[str | None, QueryParameter(name="to", **_TIME)]
ReportFrom = Annotated[str, QueryParameter(name="from", **_TIME)]
ReportTo = Annotated[str, QueryParameter(name="to", **_TIME)]
ResourceType = Literal["training", "environment", "inference", "storage", "other"]
EntryKind = Literal["usage", "storage", "topup", "credit", "refund", "adjustment"]
assert set(ResourceType.__args__) == set(RESOURCE_TYPES) and set(EntryKind.__args__) == set(ENTRY_KINDS)  # type: ignore[attr-defined]


def _grace(settings: Settings) -> timedelta:
    return timedelta(hours=settings.billing_grace_hours)


class PriceController(Controller):
    path = "/api/v1/prices"
    tags = ["billing"]
    security = BEARER

    @get("/")
    async def list_prices(
        self,
        db_session: DbSession,
        actor: CurrentActor,
        currency: FromQuery[Currency | None] = None,
        resource: FromQuery[PriceResource | None] = None,
        at: InstantQuery = None,
    ) -> list[PriceOut]:
        """Every price (any authenticated user), or those valid ``at`` an instant; oldest first."""
        del actor
        rows = await service.list_prices(db_session, currency=currency, resource=resource, at=instant("at", at))
        return [PriceOut.of(p) for p in rows]

    @post("/")
    async def create_price(self, db_session: DbSession, actor: CurrentActor, data: JSONBody[PriceCreate]) -> PriceOut:
        """Platform admins: a price from ``valid_from`` (now by default, never in the past) on; the resource's
        previous price in that currency ends there."""
        return PriceOut.of(await service.create_price(db_session, actor, data))


class BillingController(Controller):
    path = WS_PATH + "/billing"
    tags = ["billing"]
    security = BEARER
    dependencies = WORKSPACE_DEPENDENCIES

    @get("/balance")
    async def get_balance(self, state: State, access: Access, settings: AppSettings) -> BalanceOut:
        """The balance (the sum of the ledger, running work charged up to the last ingest) and billing status."""
        return await service.balance(state.database, access, grace=_grace(settings))

    @post("/topups")
    async def create_topup(
        self,
        db_session: DbSession,
        access: Access,
        settings: AppSettings,
        data: JSONBody[TopUpCreate],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[TopUpOut]:
        """Owners top up; platform admins also credit, refund and adjust. A balance back at zero or above lifts
        overdue and a suspension for money at once (and in Slurm at the next account sync). Retrying with the
        same ``Idempotency-Key`` makes no second entry."""
        entry, balance = await service.top_up(
            db_session, access, data, idempotency_key=idempotency_key, grace=_grace(settings)
        )
        out = TopUpOut(entry=EntryOut.of(entry), balance=str(balance.amount), status=access.workspace.status.value)
        return Response(out, status_code=201)

    @get("/topups")
    async def list_topups(self, db_session: DbSession, access: Access, page: PageParams) -> Page[EntryOut]:
        """Top-ups, credits, refunds and adjustments, newest first (workspace admins and owners)."""
        rows, total = await service.entries(
            db_session, access, kinds=["topup", "credit", "refund", "adjustment"], limit=page.limit, offset=page.offset
        )
        return Page([EntryOut.of(e) for e in rows], total, page.limit, page.offset)

    @get("/entries")
    async def list_entries(
        self, db_session: DbSession, access: Access, page: PageParams, kind: FromQuery[EntryKind | None] = None
    ) -> Page[EntryOut]:
        """The ledger, newest first (workspace admins and owners)."""
        rows, total = await service.entries(
            db_session, access, kinds=[kind] if kind else [], limit=page.limit, offset=page.offset
        )
        return Page([EntryOut.of(e) for e in rows], total, page.limit, page.offset)

    @get("/records")
    async def list_records(
        self,
        db_session: DbSession,
        access: Access,
        page: PageParams,
        user: Annotated[str | None, QueryParameter(max_length=64)] = None,
        resource_type: FromQuery[ResourceType | None] = None,
        start: FromParam = None,
        end: ToParam = None,
    ) -> Page[UsageOut]:
        """Usage records (one per Slurm job), newest first; members see their own."""
        rows, total = await service.usage_records(
            db_session,
            access,
            user=user,
            resource_type=resource_type,
            start=instant("from", start),
            end=instant("to", end),
            limit=page.limit,
            offset=page.offset,
        )
        return Page([UsageOut.of(r) for r in rows], total, page.limit, page.offset)

    @get("/report")
    async def get_report(
        self,
        db_session: DbSession,
        access: Access,
        start: ReportFrom,
        end: ReportTo,
        group_by: FromQuery[Literal["user", "resource_type", "gpu_type", "day"]] = "user",
        format: FromQuery[Literal["json", "csv"]] = "json",
    ) -> Response[ReportOut | str]:
        """Charges for usage in ``[from, to)``, grouped (workspace admins and owners); ``format=csv`` for a
        spreadsheet. Rows add up to the total exactly."""
        begins, ends = _instant("from", start), _instant("to", end)
        out = await service.report(db_session, access, start=begins, end=ends, group_by=group_by)
        if format == "csv":
            name = f"{access.workspace.slug}-{begins.date()}-{ends.date()}-{group_by}.csv"
            return Response(
                service.report_csv(out),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": f'attachment; filename="{name}"'},
            )
        return Response(out)


def _instant(field: str, value: str) -> datetime:
    parsed = instant(field, value)
    if parsed is None:
        raise InvalidInput("a date-time is needed", field=field)
    return parsed
