"""`AuthService`: the portal's authorization server, and the token check of its resource server.

```python
auth = AuthService(settings, engine)
app = Starlette(routes=[*auth.routes(), ...])   # /.well-known/oauth-authorization-server, /oauth/*, /login, /consent
await auth.start()                              # tables, signing key, configured clients
principal = await auth.verify_access_token(token, audience=f"{settings.public_url}/mcp")
auth.events.subscribe(print)                    # every login, consent, issuance, ... as AuthEvent
await auth.close()
```

Nothing is read or created before `start()` (or the first synchronous use, for the
CLI): constructing the service and its routes has no side effects.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Any

from sqlalchemy.engine import Engine
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from portal.auth.capabilities import is_resource, unknown_scopes
from portal.auth.clients import CLI_CLIENT_ID, Clients
from portal.auth.context import AuthContext
from portal.auth.crypto import load_master_key
from portal.auth.errors import InvalidToken, UnknownUser
from portal.auth.events import AuthEvents
from portal.auth.families import Families
from portal.auth.keys import KeyRing
from portal.auth.oidc import OidcLogin
from portal.auth.principal import Principal
from portal.auth.server import PortalAuthorizationServer
from portal.auth.sessions import Sessions
from portal.auth.tokens import AccessTokens
from portal.auth.users import Users
from portal.auth.web import AuthWeb
from portal.db import init_db
from portal.errors import ConfigError
from portal.outbound import Resolver, fetch_json
from portal.settings import Settings

__all__ = ["AuthService"]

Handler = Callable[[Request], Awaitable[Response]]

CORS_PREFLIGHT = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, MCP-Protocol-Version",
    "Access-Control-Max-Age": "600",
}
"""Browser-based MCP clients call the metadata, JWKS and token-side endpoints from another origin. These
endpoints use no cookies (clients authenticate in the request itself), so any origin may call them; the
pages (`/login`, `/consent`, `/oauth/authorize`) are navigations and allow no cross-origin calls."""


class AuthService:
    """The authorization server of one portal, over one database."""

    def __init__(self, settings: Settings, engine: Engine, *, resolver: Resolver | None = None) -> None:
        """`resolver` replaces DNS for fetching client metadata documents (tests)."""
        self.settings = settings
        self.engine = engine
        self.events = AuthEvents()
        self._resolver = resolver
        self._lock = threading.Lock()
        self._ctx: AuthContext | None = None
        self._web: AuthWeb | None = None
        self._oidc: OidcLogin | None = None

    # Life cycle

    async def start(self) -> None:
        """Create missing tables, load (or create) the signing key, register configured clients."""
        self.events.bind_loop(asyncio.get_running_loop())
        await asyncio.to_thread(self._prepare)

    async def close(self) -> None:
        if self._oidc is not None:
            await self._oidc.close()
        self.events.bind_loop(None)

    def _prepare(self) -> None:
        init_db(self.engine)
        ctx = self.context
        ctx.keys.prune()
        ctx.keys.current()
        ctx.clients.seed_configured()

    @property
    def context(self) -> AuthContext:
        """The stores (built on first use: this reads the master key)."""
        with self._lock:
            if self._ctx is None:
                self._build()
            assert self._ctx is not None
            return self._ctx

    @property
    def users(self) -> Users:
        return self.context.users

    @property
    def clients(self) -> Clients:
        return self.context.clients

    def _build(self) -> None:
        settings, auth = self.settings, self.settings.auth
        master = load_master_key(settings)
        keys = KeyRing(self.engine, master, retire_grace=max(auth.max_minted_ttl, auth.access_token_ttl) + 60)
        tokens = AccessTokens(self.engine, keys, issuer=settings.public_url)
        fetch = partial(fetch_json, allow_loopback=auth.allow_loopback_http, resolver=self._resolver)
        ctx = AuthContext(
            settings=settings,
            users=Users(self.engine),
            clients=Clients(self.engine, auth, base_dir=settings.base_dir, fetch=fetch),
            tokens=tokens,
            families=Families(self.engine, tokens),
            keys=keys,
            events=self.events,
        )
        sessions = Sessions(master, public_url=settings.public_url, ttl=auth.session_ttl)
        web = AuthWeb(ctx, PortalAuthorizationServer(ctx), sessions)
        if auth.providers:
            self._oidc = OidcLogin(ctx, web, sessions)
            web.provider_links = self._oidc.links
        self._ctx, self._web = ctx, web

    # HTTP

    def routes(self) -> list[BaseRoute]:
        """The authorization server's routes (see `portal.auth.web`), usable before `start()`."""
        paths: list[tuple[str, str, list[str], bool]] = [
            ("/.well-known/oauth-authorization-server", "metadata", ["GET"], True),
            ("/oauth/jwks.json", "jwks", ["GET"], True),
            ("/oauth/authorize", "authorize", ["GET"], False),
            ("/oauth/token", "token", ["POST"], True),
            ("/oauth/register", "register", ["POST"], True),
            ("/oauth/revoke", "revoke", ["POST"], True),
            ("/oauth/introspect", "introspect", ["POST"], True),
            ("/consent", "consent", ["GET", "POST"], False),
            ("/login", "login", ["GET", "POST"], False),
        ]
        routes: list[BaseRoute] = [
            Route(path, self._lazy(name, cors), methods=[*methods, "OPTIONS"] if cors else methods)
            for path, name, methods, cors in paths
        ]
        if self.settings.auth.providers:
            routes.append(Route("/login/oidc/callback", self._lazy_oidc("callback"), methods=["GET"]))
            routes.append(Route("/login/oidc/{provider}", self._lazy_oidc("start"), methods=["GET"]))
        return routes

    def _lazy(self, name: str, cors: bool) -> Handler:
        async def endpoint(request: Request) -> Response:
            if request.method == "OPTIONS":
                return Response(status_code=204, headers=CORS_PREFLIGHT)
            web = await self._ready_web()
            handler: Handler = getattr(web, name)
            response = await handler(request)
            if cors:
                response.headers["Access-Control-Allow-Origin"] = "*"
            return response

        return endpoint

    def _lazy_oidc(self, name: str) -> Handler:
        async def endpoint(request: Request) -> Response:
            await self._ready_web()
            assert self._oidc is not None
            handler: Handler = getattr(self._oidc, name)
            return await handler(request)

        return endpoint

    async def _ready_web(self) -> AuthWeb:
        if self._web is None:
            await asyncio.to_thread(lambda: self.context)
        assert self._web is not None
        return self._web

    # Tokens

    async def verify_access_token(self, token: str, *, audience: str) -> Principal:
        """The principal of a valid access token for `audience`; `InvalidToken` for every failure.

        Checks (RFC 9068 §4, RFC 8725): only EdDSA, `typ` at+jwt, a known `kid`, the signature,
        `iss`, `aud` equal to `audience`, `exp`/`nbf`/`iat` with 30 s leeway; then, in the
        database on every call, that the token is known and unrevoked, its user unblocked and
        its client unrevoked (and the same for every token it was exchanged from). Both halves are
        cached (see `portal.auth.tokens`) without delaying a revocation or a block by one request.
        """
        ctx = self.context if self._ctx is None else self._ctx
        claims: dict[str, Any] | None = None
        try:
            # Signature and claims cannot change: verified once per token string, while times and
            # audience are checked on every hit. The database side is re-checked whenever anything
            # that can take access away changed (see `AccessTokens.ensure_live`).
            claims = ctx.tokens.cached_claims(token, audience=audience)
            if claims is None:
                header = ctx.tokens.header(token)
                kid = header["kid"]
                key = ctx.keys.cached_public_key(kid) or await asyncio.to_thread(ctx.keys.public_key, kid)
                if key is None:
                    raise InvalidToken("the token is signed with an unknown key")
                claims = ctx.tokens.decode(token, key, audience=audience)
                ctx.tokens.remember_claims(token, claims)
            await ctx.tokens.ensure_live(claims)
        except InvalidToken as exc:
            self.events.emit(
                "rejection",
                "failure",
                subject=claims.get("sub") if claims else None,
                client_id=claims.get("client_id") if claims else None,
                token_id=claims.get("jti") if claims else None,
                reason=exc.description,
            )
            raise
        return ctx.tokens.principal(claims)

    def mint_access_token(
        self,
        subject: str,
        client_id: str,
        scopes: Iterable[str],
        audience: str,
        ttl: int,
        groups: Sequence[str] = (),
        actor: dict[str, Any] | None = None,
    ) -> str:
        """Sign an access token directly (for `portal tokens mint`, services and tests).

        `subject` must be a known user (`service.users.add(...)`), and stays subject to blocking
        and revocation like any other; `ttl` is capped by `[auth] max_minted_ttl` (24 h).
        """
        ctx = self.context
        scope_set = frozenset(scopes)
        if not 0 < ttl <= ctx.auth.max_minted_ttl:
            raise ConfigError(f"ttl must be between 1 and {ctx.auth.max_minted_ttl} seconds")
        if not is_resource(ctx.issuer, audience):
            raise ConfigError(f"{audience!r} is not an endpoint of this portal")
        unknown = unknown_scopes(scope_set)
        if unknown:
            raise ConfigError(f"unknown capabilities: {', '.join(unknown)}")
        if ctx.users.get(subject) is None:
            raise UnknownUser(f"unknown user '{subject}'", user=subject)
        if ctx.auth.client(client_id) is None:
            ctx.clients.ensure_known(client_id)  # so that `portal clients revoke` can stop it
        minted = ctx.tokens.mint(
            subject=subject,
            client_id=client_id,
            scopes=scope_set,
            audience=audience,
            ttl=ttl,
            groups=tuple(groups),
            actor=actor,
            grant="mint",
        )
        self.events.emit(
            "issuance", "success", subject=subject, client_id=client_id, token_id=minted.jti, reason="mint"
        )
        return minted.token

    def mint_for_cli(self, subject: str, scopes: Iterable[str], audience: str, ttl: int) -> str:
        """`portal tokens mint`: a token under the CLI's client id, with the user's groups."""
        user = self.context.users.require(subject)
        return self.mint_access_token(subject, CLI_CLIENT_ID, scopes, audience, ttl, groups=user.groups)
