"""Browser sessions at the portal: signed cookies, and CSRF tokens bound to them.

Nothing is stored server-side, so any replica accepts any cookie (they share the
master key the signing key is derived from).

- `portal_session`: who is logged in, until when (HMAC-signed, HttpOnly, SameSite=Lax,
  Secure and `__Host-` prefixed when `public_url` is https).
- `portal_browser`: a random id for the browser, set on the first page; the CSRF token
  of every form is an HMAC of it (OWASP's signed double-submit cookie), so a form
  posted from another site, which cannot read the cookie, cannot carry a valid token.
- `portal_oidc`: the state, nonce and PKCE verifier of one login at an OIDC provider.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from portal.auth.crypto import MasterKey, Signer, b64url, random_token

__all__ = ["BrowserSession", "Sessions"]

BROWSER_TTL = 24 * 3600
OIDC_STATE_TTL = 600


@dataclass(frozen=True)
class BrowserSession:
    subject: str
    expires_at: int


class Sessions:
    def __init__(self, master: MasterKey, *, public_url: str, ttl: int) -> None:
        self._signer = Signer(master.derive("session cookie"))
        self._csrf_key = master.derive("csrf")
        self._ttl = ttl
        self._secure = public_url.startswith("https://")
        prefix = "__Host-" if self._secure else ""
        self.session_cookie = f"{prefix}portal_session"
        self.browser_cookie = f"{prefix}portal_browser"
        self.oidc_cookie = f"{prefix}portal_oidc"
        self._origin = public_url.split("/", 3)[:3]

    # Login sessions

    def read(self, request: Request) -> BrowserSession | None:
        value = self._signer.unsign(request.cookies.get(self.session_cookie))
        if value is None or value.get("kind") != "session":
            return None
        expires = value.get("exp")
        subject = value.get("sub")
        if not isinstance(expires, int) or expires < time.time() or not isinstance(subject, str):
            return None
        return BrowserSession(subject, expires)

    def login(self, response: Response, subject: str) -> None:
        value = {"kind": "session", "sub": subject, "exp": int(time.time()) + self._ttl, "sid": random_token(12)}
        self._set(response, self.session_cookie, self._signer.sign(value), self._ttl)

    def logout(self, response: Response) -> None:
        response.delete_cookie(self.session_cookie, path="/", secure=self._secure, httponly=True, samesite="lax")

    # CSRF

    def browser_id(self, request: Request) -> str | None:
        value = self._signer.unsign(request.cookies.get(self.browser_cookie))
        if value is None or value.get("kind") != "browser" or not isinstance(value.get("id"), str):
            return None
        return str(value["id"])

    def ensure_browser(self, request: Request) -> tuple[str, str | None]:
        """The browser id, and the cookie value to set when the browser had none."""
        existing = self.browser_id(request)
        if existing is not None:
            return existing, None
        fresh = random_token(18)
        return fresh, self._signer.sign({"kind": "browser", "id": fresh})

    def set_browser(self, response: Response, cookie: str | None) -> None:
        if cookie is not None:
            self._set(response, self.browser_cookie, cookie, BROWSER_TTL)

    def csrf_token(self, browser_id: str) -> str:
        return b64url(hmac.new(self._csrf_key, browser_id.encode(), hashlib.sha256).digest())

    def check_csrf(self, request: Request, token: str | None) -> bool:
        """A POST is ours when its token matches the browser cookie and its Origin (if sent) is the portal's."""
        origin = request.headers.get("origin")
        if origin is not None and origin.rstrip("/") != "/".join(self._origin):
            return False
        browser = self.browser_id(request)
        if browser is None or not token:
            return False
        return hmac.compare_digest(self.csrf_token(browser), token)

    # OIDC login state

    def set_oidc_state(self, response: Response, state: dict[str, Any]) -> None:
        value = {"kind": "oidc", "exp": int(time.time()) + OIDC_STATE_TTL, **state}
        self._set(response, self.oidc_cookie, self._signer.sign(value), OIDC_STATE_TTL)

    def oidc_state(self, request: Request) -> dict[str, Any] | None:
        value = self._signer.unsign(request.cookies.get(self.oidc_cookie))
        if value is None or value.get("kind") != "oidc" or not isinstance(value.get("exp"), int):
            return None
        return value if value["exp"] >= time.time() else None

    def clear_oidc_state(self, response: Response) -> None:
        response.delete_cookie(self.oidc_cookie, path="/", secure=self._secure, httponly=True, samesite="lax")

    def _set(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, path="/", secure=self._secure, httponly=True, samesite="lax")
