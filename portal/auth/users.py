"""People: local users with argon2id passwords, and users first seen through an OIDC provider.

A local user's subject is the name given to `portal users add`; an OIDC user's is
`{provider}:{sub}` (the provider's stable subject), so two providers can never
produce the same subject. Both can be blocked; a blocked user cannot log in and
every token of theirs stops working on its next use.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Sequence

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from portal.auth.errors import UnknownUser
from portal.auth.tables import UserRow, bump_revision
from portal.errors import ConfigError

__all__ = ["GROUP_NAME", "USER_NAME", "Users"]

USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
"""Local user names; no `:`, which is reserved for `{provider}:{sub}` subjects."""
GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@/-]{0,127}$")

# argon2id (RFC 9106 §4, second recommended option: 64 MiB, 3 passes, 4 lanes).
_HASHER = PasswordHasher(time_cost=3, memory_cost=64 * 1024, parallelism=4)


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user does not exist, so that timing does not tell whether a name exists."""
    return _HASHER.hash("portal: no such user")


def _check_groups(groups: Sequence[str]) -> list[str]:
    bad = [g for g in groups if not GROUP_NAME.fullmatch(g)]
    if bad:
        raise ConfigError(f"invalid group names: {', '.join(bad)}")
    return sorted(set(groups))


class Users:
    """The users of one database."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, name: str, password: str | None, groups: Sequence[str] = ()) -> UserRow:
        """A new local user; without a password they can hold minted tokens but not log in."""
        if not USER_NAME.fullmatch(name):
            raise ConfigError(f"user name {name!r} must match {USER_NAME.pattern}")
        if password is not None and len(password) < 8:
            raise ConfigError("a password must have at least 8 characters")
        row = UserRow(
            subject=name,
            source="local",
            password_hash=_HASHER.hash(password) if password is not None else None,
            groups=_check_groups(groups),
            created_at=int(time.time()),
        )
        taken = ConfigError(f"user '{name}' already exists")
        try:
            with Session(self._engine) as session:
                if session.get(UserRow, name) is not None:
                    raise taken
                session.add(row)
                session.commit()
                session.refresh(row)
        except IntegrityError:
            raise taken from None
        return row

    def get(self, subject: str) -> UserRow | None:
        with Session(self._engine) as session:
            return session.get(UserRow, subject)

    def require(self, subject: str) -> UserRow:
        row = self.get(subject)
        if row is None:
            raise UnknownUser(f"unknown user '{subject}'", user=subject)
        return row

    def listing(self) -> list[UserRow]:
        with Session(self._engine) as session:
            return list(session.exec(select(UserRow).order_by(col(UserRow.subject))))

    def set_blocked(self, subject: str, blocked: bool) -> UserRow:
        with Session(self._engine) as session:
            row = session.get(UserRow, subject)
            if row is None:
                raise UnknownUser(f"unknown user '{subject}'", user=subject)
            row.blocked = blocked
            session.add(row)
            bump_revision(session)  # cached verdicts of this user's tokens must be re-checked
            session.commit()
            session.refresh(row)
        return row

    def authenticate(self, name: str, password: str) -> UserRow | None:
        """The local user `name` if `password` is theirs and they are not blocked."""
        row = self.get(name) if USER_NAME.fullmatch(name) else None
        stored = row.password_hash if row is not None and row.source == "local" else None
        try:
            _HASHER.verify(stored or _dummy_hash(), password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row is None or stored is None or row.blocked:
            return None
        if _HASHER.check_needs_rehash(stored):
            with Session(self._engine) as session:
                fresh = session.get(UserRow, name)
                if fresh is not None:
                    fresh.password_hash = _HASHER.hash(password)
                    session.add(fresh)
                    session.commit()
        self.touch(name)
        return row

    def upsert_oidc(
        self, provider: str, sub: str, *, groups: Sequence[str], display_name: str | None, email: str | None
    ) -> UserRow:
        """Record (or refresh) a person who logged in through `provider`; returns their row."""
        subject = f"{provider}:{sub}"
        now = int(time.time())
        clean = sorted({g for g in groups if GROUP_NAME.fullmatch(g)})
        for _ in range(2):
            try:
                with Session(self._engine) as session:
                    row = session.get(UserRow, subject)
                    if row is None:
                        row = UserRow(subject=subject, source=f"oidc:{provider}", created_at=now)
                    row.groups = clean
                    row.display_name = display_name
                    row.email = email
                    row.last_login_at = now
                    session.add(row)
                    session.commit()
                    session.refresh(row)
                    return row
            except IntegrityError:
                continue  # another replica inserted the same person at the same moment: update it
        raise ConfigError(f"could not record user '{subject}'")

    def touch(self, subject: str) -> None:
        with Session(self._engine) as session:
            row = session.get(UserRow, subject)
            if row is not None:
                row.last_login_at = int(time.time())
                session.add(row)
                session.commit()
