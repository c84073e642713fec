"""HTTP endpoints of the authorization server: the OAuth endpoints and the pages around them.

Flow of a client connecting (OAuth 2.1 §4.1 with the portal's pages):

1. `GET /oauth/authorize?...` validates the request (client, exact redirect URI, PKCE
   S256, RFC 8707 resource, scope) and sends the browser to `/consent?...`, through
   `/login` when nobody is logged in;
2. `GET /consent` shows the client, its redirect host and the capabilities it asks
   for, narrowed to those granted to the person; `POST /consent` (CSRF-checked)
   issues the code and redirects to the client with `code`, `state` and `iss`;
3. `POST /oauth/token` exchanges it (and refresh tokens, client credentials, tokens).

Errors before the client and its redirect URI are known are shown as a page, never
redirected (RFC 6749 §4.1.2.1); later ones go back to the client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

from authlib.oauth2.rfc6749 import AccessDeniedError, InvalidRequestError, OAuth2Error
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from portal.auth.adapter import FormRequest, JsonBodyRequest, Reply, read_form, read_json
from portal.auth.capabilities import IGNORED_SCOPES, intersect
from portal.auth.context import AuthContext
from portal.auth.pages import ConsentView, LoginView, consent_page, error_page, login_page
from portal.auth.ratelimit import RateLimiter
from portal.auth.scopes import parse_scope
from portal.auth.server import PortalAuthorizationServer, metadata
from portal.auth.sessions import Sessions
from portal.errors import PortalError

__all__ = ["AuthWeb", "safe_next"]

logger = logging.getLogger("portal.auth")

_PAGE_FIELDS = {"csrf_token", "decision", "consent_scope"}
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def safe_next(value: str | None) -> str | None:
    """Where to go after logging in: only back into an authorization (no open redirect)."""
    if value and value.startswith(("/consent?", "/oauth/authorize?")) and "\\" not in value:
        return value
    return None


def _client_ip(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _first(pairs: Sequence[tuple[str, str]], name: str) -> str | None:
    return next((value for key, value in pairs if key == name), None)


class AuthWeb:
    """The Starlette handlers of the authorization server."""

    def __init__(self, ctx: AuthContext, server: PortalAuthorizationServer, sessions: Sessions) -> None:
        self.ctx = ctx
        self.server = server
        self.sessions = sessions
        self.provider_links: Callable[[str], list[tuple[str, str, str]]] = lambda next_url: []
        # Rate limits (in memory, per process): see portal.auth.ratelimit and the [auth] settings.
        auth = ctx.auth
        self.login_limit = RateLimiter(auth.login_attempts_per_minute)
        self.login_ip_limit = RateLimiter(auth.login_attempts_per_minute_per_ip)
        self.token_limit = RateLimiter(auth.token_requests_per_minute)
        self.register_limit = RateLimiter(auth.token_requests_per_minute)

    def _uri(self, path: str) -> str:
        return self.ctx.issuer + path

    # Discovery

    async def metadata(self, request: Request) -> Response:
        return JSONResponse(metadata(self.ctx), headers={"Cache-Control": "max-age=300"})

    async def jwks(self, request: Request) -> Response:
        keys = await asyncio.to_thread(self.ctx.keys.jwks)
        return JSONResponse(keys, headers={"Cache-Control": "max-age=60"})

    # Token-side endpoints (JSON in, JSON out)

    async def token(self, request: Request) -> Response:
        if (refused := self._throttled(self.token_limit, request)) is not None:
            return refused
        return await self._json_endpoint(request, lambda oreq: self.server.create_token_response(oreq))

    async def revoke(self, request: Request) -> Response:
        return await self._json_endpoint(request, lambda oreq: self.server.create_endpoint_response("revocation", oreq))

    async def introspect(self, request: Request) -> Response:
        return await self._json_endpoint(
            request, lambda oreq: self.server.create_endpoint_response("introspection", oreq)
        )

    async def register(self, request: Request) -> Response:
        if (refused := self._throttled(self.register_limit, request)) is not None:
            return refused
        try:
            self._no_query(request)
            data = await read_json(request)
            jreq = JsonBodyRequest("POST", self._uri("/oauth/register"), request.headers, data)
            reply: Reply = await asyncio.to_thread(self.server.create_endpoint_response, "client_registration", jreq)
        except OAuth2Error as error:
            reply = Reply(*error())
        return self._finish(reply, client_id=None)

    async def _json_endpoint(self, request: Request, call: Callable[[FormRequest], Reply]) -> Response:
        client_id: str | None = None
        try:
            self._no_query(request)
            pairs = await read_form(request)
            client_id = _first(pairs, "client_id") or extract_basic_authorization(request.headers)[0]
            await self.ctx.clients.prefetch(client_id)
            oreq = FormRequest("POST", self._uri(request.url.path), request.headers, pairs)
            reply = await asyncio.to_thread(call, oreq)
        except OAuth2Error as error:
            reply = Reply(*error())
        except PortalError:
            logger.exception("OAuth request failed")
            reply = Reply(500, {"error": "server_error"}, [])
        return self._finish(reply, client_id=client_id)

    def _finish(self, reply: Reply, *, client_id: str | None) -> Response:
        if reply.status >= 400 and isinstance(reply.body, dict):
            reason = f"{reply.body.get('error')}: {reply.body.get('error_description', '')}".rstrip(": ")
            self.ctx.events.emit("rejection", "failure", client_id=client_id, reason=reason)
        response = reply.response()
        # RFC 6749 §5.1: responses carrying tokens or credentials are never cached.
        response.headers.update(_NO_STORE)
        return response

    @staticmethod
    def _throttled(limit: RateLimiter, request: Request) -> Response | None:
        """HTTP 429 if the client's IP has used up its requests of `limit`; None otherwise.

        The error code is `slow_down`: the one code registered for the token endpoint (IANA OAuth
        Extensions Error registry, RFC 8628 §3.5) that means "you are asking too often", and one no
        client takes as a reason to drop its credentials (`invalid_client`, `invalid_grant` would
        be). Status 429 and `Retry-After` (RFC 6585 §4) say for how long.
        """
        wait = limit.take(_client_ip(request))
        if not wait:
            return None
        retry = RateLimiter.retry_after(wait)
        logger.info("throttled %s from %s for %s s", request.url.path, _client_ip(request), retry)
        body = {"error": "slow_down", "error_description": f"Too many requests; retry in {retry} seconds."}
        return JSONResponse(body, status_code=429, headers={"Retry-After": retry, **_NO_STORE})

    @staticmethod
    def _no_query(request: Request) -> None:
        # RFC 6749 §3.2 / OAuth 2.1 §3.2.2: parameters travel in the body, never in the URL,
        # where proxies and logs would keep tokens, codes and secrets.
        if request.url.query:
            raise InvalidRequestError("parameters must be sent in the request body, not in the URL")

    # Authorization

    async def _validated(self, request: Request, pairs: Sequence[tuple[str, str]]) -> Any:
        """authlib's grant for a valid authorization request, or the response that refuses it."""
        try:
            await self.ctx.clients.prefetch(_first(pairs, "client_id"))
            oreq = FormRequest("GET", self._uri("/oauth/authorize"), request.headers, list(pairs))
            return await asyncio.to_thread(self.server.get_consent_grant, oreq, None)
        except OAuth2Error as error:
            return self._authorization_error(error, _first(pairs, "client_id"))

    def _authorization_error(self, error: OAuth2Error, client_id: str | None) -> Response:
        description = error.get_error_description() or ""
        self.ctx.events.emit("rejection", "failure", client_id=client_id, reason=f"{error.error}: {description}")
        if error.redirect_uri:
            reply = Reply(*error())
            reply.add_params({"iss": self.ctx.issuer})  # RFC 9207 §2: error responses too
            return reply.response()
        return error_page("This request cannot be completed", f"{error.error}: {description}")

    async def authorize(self, request: Request) -> Response:
        pairs = list(request.query_params.multi_items())
        outcome = await self._validated(request, pairs)
        if isinstance(outcome, Response):
            return outcome
        target = "/consent?" + urlencode(pairs)
        if self.sessions.read(request) is None:
            return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)
        return RedirectResponse(target, status_code=303)

    async def consent(self, request: Request) -> Response:
        if request.method == "POST":
            return await self._consent_post(request)
        pairs = list(request.query_params.multi_items())
        outcome = await self._validated(request, pairs)
        if isinstance(outcome, Response):
            return outcome
        session = self.sessions.read(request)
        if session is None:
            return RedirectResponse("/login?" + urlencode({"next": "/consent?" + urlencode(pairs)}), status_code=303)
        user = await asyncio.to_thread(self.ctx.live_user, session.subject)
        if user is None:
            response = error_page("Access denied", "Your account is blocked.", status=403)
            self.sessions.logout(response)
            return response
        grant = outcome
        asked = parse_scope(grant.request.scope) - IGNORED_SCOPES
        granted = self.ctx.granted(user)
        offered = sorted(self.ctx.allowed(user, asked))
        refused = sorted(scope for scope in asked if not intersect([scope], granted))
        browser, cookie = self.sessions.ensure_browser(request)
        client = grant.request.client
        response = consent_page(
            ConsentView(
                client_name=client.name or client.client_id,
                client_id=client.client_id,
                redirect_uri=grant.redirect_uri,
                user=user.display_name or user.subject,
                resource=grant.request.resource or "",
                offered=offered,
                refused=refused,
                params=pairs,
                csrf=self.sessions.csrf_token(browser),
            )
        )
        self.sessions.set_browser(response, cookie)
        return response

    async def _consent_post(self, request: Request) -> Response:
        try:
            form = await read_form(request, unique=False)
        except OAuth2Error as error:
            return error_page("This request cannot be completed", f"{error.error}: {error.get_error_description()}")
        if not self.sessions.check_csrf(request, _first(form, "csrf_token")):
            return error_page(
                "The form has expired",
                "This form did not come from this portal, or it is too old. Start again from your application.",
                status=403,
            )
        pairs = [(key, value) for key, value in form if key not in _PAGE_FIELDS]
        outcome = await self._validated(request, pairs)
        if isinstance(outcome, Response):
            return outcome
        grant = outcome
        session = self.sessions.read(request)
        user = await asyncio.to_thread(self.ctx.live_user, session.subject) if session else None
        if user is None:
            return RedirectResponse("/login?" + urlencode({"next": "/consent?" + urlencode(pairs)}), status_code=303)
        client_id = grant.request.client.client_id
        state = grant.request.payload.state
        if _first(form, "decision") != "approve":
            self.ctx.events.emit("consent", "failure", subject=user.subject, client_id=client_id, reason="denied")
            denied = AccessDeniedError("the user denied the request", redirect_uri=grant.redirect_uri, state=state)
            return self._authorization_error(denied, client_id)
        consented = {value for key, value in form if key == "consent_scope"}
        asked = parse_scope(grant.request.scope) - IGNORED_SCOPES
        final = intersect(intersect(asked or self.ctx.granted(user), consented), self.ctx.granted(user))
        if not final:
            self.ctx.events.emit("consent", "failure", subject=user.subject, client_id=client_id, reason="nothing")
            denied = AccessDeniedError("no capability was granted", redirect_uri=grant.redirect_uri, state=state)
            return self._authorization_error(denied, client_id)
        grant.request.granted_scope = " ".join(sorted(final))
        reply: Reply = await asyncio.to_thread(self.server.create_authorization_response, grant.request, user, grant)
        self.ctx.events.emit(
            "consent", "success", subject=user.subject, client_id=client_id, reason=grant.request.granted_scope
        )
        return reply.response()

    # Login with a local user (OIDC providers add their own routes, see portal.auth.oidc)

    async def login(self, request: Request) -> Response:
        if request.method == "POST":
            return await self._login_post(request)
        next_url = safe_next(request.query_params.get("next")) or ""
        return self._login_form(request, next_url)

    def _login_form(
        self, request: Request, next_url: str, *, error: str | None = None, username: str = "", status: int = 200
    ) -> Response:
        browser, cookie = self.sessions.ensure_browser(request)
        view = LoginView(
            next_url=next_url,
            csrf=self.sessions.csrf_token(browser),
            local_users=self.ctx.auth.local_users,
            providers=self.provider_links(next_url),
            error=error,
            username=username,
        )
        response = login_page(view, status=status)
        self.sessions.set_browser(response, cookie)
        return response

    async def _login_post(self, request: Request) -> Response:
        try:
            form = dict(await read_form(request))
        except OAuth2Error:
            return error_page("Cannot log in", "The login form was not sent correctly.")
        next_url = safe_next(form.get("next")) or ""
        if not self.sessions.check_csrf(request, form.get("csrf_token")):
            return self._login_form(request, next_url, error="The form has expired; please try again.", status=403)
        if not self.ctx.auth.local_users:
            return self._login_form(request, next_url, error="Local users are disabled here.", status=400)
        username = form.get("username", "")
        ip = _client_ip(request)
        wait = max(self.login_ip_limit.take(ip), self.login_limit.take((username.casefold(), ip)))
        if wait:
            retry = RateLimiter.retry_after(wait)
            # The name stays out of the log: it may be a password typed into the wrong field.
            logger.warning("login attempts throttled from %s for %s s", ip, retry)
            response = self._login_form(
                request,
                next_url,
                error=f"Too many login attempts. Wait {retry} seconds, then try again.",
                username=username,
                status=429,
            )
            response.headers["Retry-After"] = retry
            return response
        user = await asyncio.to_thread(self.ctx.users.authenticate, username, form.get("password", ""))
        if user is None:
            # Name the user only if there is one: a password typed into the name field stays out of the log.
            known = await asyncio.to_thread(self.ctx.users.get, username) if username else None
            subject = known.subject if known is not None else None
            self.ctx.events.emit("login", "failure", subject=subject, reason="bad credentials")
            return self._login_form(
                request, next_url, error="Wrong user name or password.", username=username, status=401
            )
        self.ctx.events.emit("login", "success", subject=user.subject, reason="local")
        return self.logged_in(user.subject, next_url)

    def logged_in(self, subject: str, next_url: str) -> Response:
        """The response that ends a successful login: a session cookie, and on to the authorization."""
        if next_url:
            response: Response = RedirectResponse(next_url, status_code=303)
        else:
            response = error_page("Logged in", f"You are logged in as {subject}. You can close this page.", status=200)
        self.sessions.login(response, subject)
        return response
