"""Routes of users (platform admins), tokens and logins, and /me: thin, the logic is in users and auth."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from gateway.accounts import auth, users
from gateway.accounts.models import UserType
from gateway.accounts.schemas import TokenCreated, TokenOut, TokenRequest, UserCreate, UserOut, UserUpdate
from gateway.dependencies import ADMIN_DEPENDENCIES, BEARER, AppSettings, CurrentActor, DbSession
from gateway.dependencies import Page as PageParams
from gateway.schemas import Page, UserNameParam
from gateway.workspaces.models import Role

Search = Annotated[str | None, QueryParameter(max_length=64, description="substring of name or e-mail")]


class UserController(Controller):
    """Platform administration of user accounts."""

    path = "/api/v1/users"
    tags = ["users"]
    security = BEARER
    dependencies = ADMIN_DEPENDENCIES

    @get("/")
    async def list_users(
        self,
        db_session: DbSession,
        admin: CurrentActor,
        page: PageParams,
        q: Search = None,
        is_admin: FromQuery[bool | None] = None,
        disabled: FromQuery[bool | None] = None,
        user_type: FromQuery[UserType | None] = None,
    ) -> Page[UserOut]:
        found, total = await users.list_users(
            db_session, page, q=q, is_admin=is_admin, disabled=disabled, user_type=user_type
        )
        return Page([UserOut.of(u) for u in found], total, page.limit, page.offset)

    @post("/")
    async def create_user(self, db_session: DbSession, admin: CurrentActor, data: JSONBody[UserCreate]) -> UserOut:
        return UserOut.of(await users.create_user(db_session, admin, data))

    @get("/{name:str}")
    async def get_user(self, db_session: DbSession, admin: CurrentActor, name: UserNameParam) -> UserOut:
        return UserOut.of(await users.get_user(db_session, name))

    @patch("/{name:str}")
    async def update_user(
        self, db_session: DbSession, admin: CurrentActor, name: UserNameParam, data: JSONBody[UserUpdate]
    ) -> UserOut:
        return UserOut.of(await users.update_user(db_session, admin, name, data))

    @delete("/{name:str}")
    async def delete_user(self, db_session: DbSession, admin: CurrentActor, name: UserNameParam) -> None:
        """Soft-delete: the account can no longer log in; its history stays."""
        await users.delete_user(db_session, admin, name)


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
        return await auth.login(db_session, data.username, data.password, name=data.name, ttl_days=ttl)

    @get("/", security=BEARER)
    async def list_tokens(self, db_session: DbSession, actor: CurrentActor) -> list[TokenOut]:
        """The caller's live tokens (never their secrets)."""
        return [TokenOut.of(t, actor.token_id) for t in await auth.list_tokens(db_session, actor)]

    @delete("/", security=BEARER)
    async def revoke_current_token(self, db_session: DbSession, actor: CurrentActor) -> None:
        """Log out: revoke the token used for this request."""
        assert actor.token_id is not None
        await auth.revoke_token(db_session, actor, actor.token_id)

    @delete("/{token_id:int}", security=BEARER)
    async def revoke_token(self, db_session: DbSession, actor: CurrentActor, token_id: FromPath[int]) -> None:
        """Revoke one of the caller's tokens."""
        await auth.revoke_token(db_session, actor, token_id)


class MeController(Controller):
    path = "/api/v1/me"
    tags = ["auth"]
    security = BEARER

    @get("/")
    async def me(self, db_session: DbSession, actor: CurrentActor) -> Me:
        """The caller's account and workspace memberships."""
        user, memberships = await users.me(db_session, actor)
        return Me(user=UserOut.of(user), workspaces=[Membership(slug, role) for slug, role in memberships])
