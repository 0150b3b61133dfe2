from __future__ import annotations

import msgspec
from litestar import Controller, delete, get, post
from litestar.params import FromPath, JSONBody
from sqlalchemy import select

from gateway.auth import service
from gateway.auth.schemas import TokenCreated, TokenOut, TokenRequest
from gateway.dependencies import BEARER, AppSettings, CurrentActor, DbSession
from gateway.errors import NotFound
from gateway.users.models import User
from gateway.users.schemas import UserOut
from gateway.workspaces.models import Member, Role, Workspace


class Membership(msgspec.Struct):
    workspace: str
    role: Role


class Me(msgspec.Struct):
    user: UserOut
    workspaces: list[Membership]


class AuthController(Controller):
    path = "/api/v1/auth/tokens"
    tags = ["auth"]

    @post("/")
    async def create_token(
        self, db_session: DbSession, settings: AppSettings, data: JSONBody[TokenRequest]
    ) -> TokenCreated:
        """Exchange a username and password for a bearer token."""
        ttl = data.expires_in_days or settings.token_ttl_days
        return await service.login(db_session, data.username, data.password, name=data.name, ttl_days=ttl)

    @get("/", security=BEARER)
    async def list_tokens(self, db_session: DbSession, actor: CurrentActor) -> list[TokenOut]:
        """The caller's live tokens (never their secrets)."""
        return [TokenOut.of(t, actor.token_id) for t in await service.list_tokens(db_session, actor)]

    @delete("/", security=BEARER)
    async def revoke_current_token(self, db_session: DbSession, actor: CurrentActor) -> None:
        """Log out: revoke the token used for this request."""
        assert actor.token_id is not None
        await service.revoke_token(db_session, actor, actor.token_id)

    @delete("/{token_id:int}", security=BEARER)
    async def revoke_token(self, db_session: DbSession, actor: CurrentActor, token_id: FromPath[int]) -> None:
        """Revoke one of the caller's tokens."""
        await service.revoke_token(db_session, actor, token_id)


class MeController(Controller):
    path = "/api/v1/me"
    tags = ["auth"]
    security = BEARER

    @get("/")
    async def me(self, db_session: DbSession, actor: CurrentActor) -> Me:
        """The caller's account and workspace memberships."""
        user = await db_session.get(User, actor.user_id)
        if user is None:
            raise NotFound("user not found")
        rows = await db_session.execute(
            select(Workspace.slug, Member.role)
            .join(Member, Member.workspace_id == Workspace.id)
            .where(Member.user_id == user.id, Member.deleted_at.is_(None), Workspace.deleted_at.is_(None))
            .order_by(Workspace.slug)
        )
        return Me(user=UserOut.of(user), workspaces=[Membership(slug, role) for slug, role in rows])
