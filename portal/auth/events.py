"""Auth events: every login, consent, issuance, refresh, exchange, revocation and rejection.

The audit log subscribes here (`AuthEvents.subscribe`). An event names who and what,
never a secret: no token, password, code or client secret is ever put in one; a token
is referred to by its id (`jti`), a refresh token family by its family id.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["AuthEvent", "AuthEventKind", "AuthEvents", "Outcome"]

logger = logging.getLogger("portal.auth")

AuthEventKind = Literal["login", "consent", "issuance", "refresh", "exchange", "revocation", "rejection"]
Outcome = Literal["success", "failure"]


@dataclass(frozen=True)
class AuthEvent:
    """One authentication event."""

    kind: AuthEventKind
    outcome: Outcome
    time: float
    """Unix time, in seconds."""
    subject: str | None = None
    """The user (or, for `client_credentials`, the client) the event is about, when known."""
    client_id: str | None = None
    reason: str | None = None
    """Why it failed (an OAuth error code and description), or what happened (`grant_type`, ...)."""
    token_id: str | None = None
    """`jti` of the access token issued, refreshed, exchanged, revoked or rejected."""


Subscriber = Callable[[AuthEvent], None]


class AuthEvents:
    """Fan-out of auth events to subscribers.

    Subscribers are called on the event loop the service was started on (events raised in a
    worker thread are handed over to it), or directly when there is none (the CLI). They must
    not block; one that raises is logged and does not stop the others.
    """

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback` with every event from now on; returns a function that unsubscribes it."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def bind_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident() if loop is not None else None

    def emit(
        self,
        kind: AuthEventKind,
        outcome: Outcome,
        *,
        subject: str | None = None,
        client_id: str | None = None,
        reason: str | None = None,
        token_id: str | None = None,
    ) -> AuthEvent:
        event = AuthEvent(kind, outcome, time.time(), subject, client_id, reason, token_id)
        logger.info(
            "auth %s %s subject=%s client=%s token=%s%s",
            kind,
            outcome,
            subject or "-",
            client_id or "-",
            token_id or "-",
            f" reason={reason}" if reason else "",
        )
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread and not loop.is_closed():
            loop.call_soon_threadsafe(self._dispatch, event)
        else:
            self._dispatch(event)
        return event

    def _dispatch(self, event: AuthEvent) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                logger.exception("auth event subscriber %r failed", callback)
