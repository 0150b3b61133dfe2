from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, patch, post
from litestar.params import FromQuery, JSONBody, QueryParameter

from gateway.dependencies import ADMIN_DEPENDENCIES, BEARER, CurrentActor, DbSession
from gateway.dependencies import Page as PageParams
from gateway.schemas import Page, UserNameParam
from gateway.users import service
from gateway.users.models import UserType
from gateway.users.schemas import UserCreate, UserOut, UserUpdate

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
        users, total = await service.list_users(
            db_session, page, q=q, is_admin=is_admin, disabled=disabled, user_type=user_type
        )
        return Page([UserOut.of(u) for u in users], total, page.limit, page.offset)

    @post("/")
    async def create_user(self, db_session: DbSession, admin: CurrentActor, data: JSONBody[UserCreate]) -> UserOut:
        return UserOut.of(await service.create_user(db_session, admin, data))

    @get("/{name:str}")
    async def get_user(self, db_session: DbSession, admin: CurrentActor, name: UserNameParam) -> UserOut:
        return UserOut.of(await service.get_user(db_session, name))

    @patch("/{name:str}")
    async def update_user(
        self, db_session: DbSession, admin: CurrentActor, name: UserNameParam, data: JSONBody[UserUpdate]
    ) -> UserOut:
        return UserOut.of(await service.update_user(db_session, admin, name, data))

    @delete("/{name:str}")
    async def delete_user(self, db_session: DbSession, admin: CurrentActor, name: UserNameParam) -> None:
        """Soft-delete: the account can no longer log in; its history stays."""
        await service.delete_user(db_session, admin, name)
