"""GatewayAuthenticator: hub logins are gateway logins.

The password is checked by the gateway (``POST /api/v1/auth/tokens``); the token it answers is the user's for
everything the spawner does, kept in ``auth_state`` (encrypted by JupyterHub with ``JUPYTERHUB_CRYPT_KEY``).
A refresh asks the gateway who the token is: a revoked or expired token, or a user disabled since, logs the
user out of the hub (``refresh_user`` answers False). Platform admins are hub admins.
"""

from __future__ import annotations

from typing import Any

from jupyterhub.auth import Authenticator  # type: ignore[import-untyped]
from jupyterhub.handlers.base import BaseHandler  # type: ignore[import-untyped]
from traitlets import Bool, Float, Integer, Unicode

from spawners.client import GatewayError, GatewayUnreachable, call

if not hasattr(BaseHandler, "_token_authenticated"):
    # JupyterHub 6.1 reads this flag when a refresh fails, but sets it only on token-authenticated requests: a
    # cookie-authenticated page (the spawn form) whose refresh fails would answer 500 instead of asking for a login
    BaseHandler._token_authenticated = False


class GatewayAuthenticator(Authenticator):  # type: ignore[misc]
    gateway_url = Unicode("http://127.0.0.1:8000", help="The gateway's base URL, as the hub reaches it").tag(
        config=True
    )
    token_lifetime_days = Integer(7, help="Lifetime of the gateway token a hub login makes").tag(config=True)
    admin_from_gateway = Bool(True, help="Platform admins of the gateway are hub admins").tag(config=True)
    request_timeout = Float(30.0).tag(config=True)

    def _enable_auth_state_default(self) -> bool:
        return True

    def _refresh_pre_spawn_default(self) -> bool:
        return True

    def _auth_refresh_age_default(self) -> int:
        return 300

    async def authenticate(self, handler: Any, data: dict[str, str]) -> dict[str, Any] | None:
        username, password = data.get("username", ""), data.get("password", "")
        if not username or not password:
            return None
        body = {"username": username, "password": password, "name": "jupyterhub"}
        body["expires_in_days"] = self.token_lifetime_days  # type: ignore[assignment]
        try:
            made = await call(self.gateway_url, "", "POST", "/auth/tokens", json=body, timeout=self.request_timeout)
            me = await call(self.gateway_url, made["token"], "GET", "/me", timeout=self.request_timeout)
        except GatewayError as error:
            self.log.info("gateway refused the login of %r: %s", username, error)
            return None
        except GatewayUnreachable as error:
            self.log.error("gateway unreachable for the login of %r: %s", username, error)
            return None
        user = me["user"]
        return {
            "name": user["name"],
            "admin": bool(user.get("is_admin")) if self.admin_from_gateway else None,
            "auth_state": {"token": made["token"], "token_id": made["id"]},
        }

    async def refresh_user(self, user: Any, handler: Any = None) -> bool | dict[str, Any]:
        """Still the gateway's user? A gateway that does not answer keeps the login (its state is unknown)."""
        auth_state = await user.get_auth_state() or {}
        token = auth_state.get("token")
        if not token:
            return False
        try:
            me = await call(self.gateway_url, token, "GET", "/me", timeout=self.request_timeout)
        except GatewayError:
            return self._logged_out(user, handler)  # revoked, expired, or the user disabled: log in again
        except GatewayUnreachable:
            return True
        if me["user"].get("disabled"):
            return self._logged_out(user, handler)
        if self.admin_from_gateway:
            return {"admin": bool(me["user"].get("is_admin")), "auth_state": auth_state}
        return True

    def _logged_out(self, user: Any, handler: Any) -> bool:
        """End the hub login now, not at the next periodic refresh: the login cookie of this user's own request goes
        (the hub itself only refuses the spawn in hand)."""
        cookie_user = handler.get_current_user_cookie() if handler is not None else None
        if cookie_user is not None and cookie_user.name == user.name:
            handler.clear_login_cookie()
        return False
