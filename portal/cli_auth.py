"""`portal users|clients|tokens|keys`: the command line of the authorization server.

Registered in `portal.cli.COMMAND_GROUPS` (through `portal.cli.add_auth_commands`).
Every command acts on the database of `--config`/`--data`; a running portal sees the
change on its next request (a blocked user, a revoked client or token) or its next
signature (a rotated key).
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from portal.auth.scopes import narrower_or_equal, parse_scope
from portal.auth.service import AuthService
from portal.cli import (
    Commands,
    _data_options,
    _json_option,
    _print_json,
    _print_table,
    load_config,
    record_admin,
)
from portal.db import create_engine, init_db
from portal.errors import ConfigError, PortalError
from portal.settings import Settings

__all__ = ["add_commands", "open_auth"]


@contextmanager
def open_auth(settings: Settings) -> Iterator[AuthService]:
    """The authorization server of `settings`' database (tables created if missing), closed afterwards."""
    engine = create_engine(settings)
    try:
        init_db(engine)
        yield AuthService(settings, engine)
    finally:
        engine.dispose()


def _when(moment: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment)) if moment else "-"


def add_commands(commands: Commands) -> None:
    _add_users(commands)
    _add_clients(commands)
    _add_tokens(commands)
    _add_keys(commands)


# users


def _add_users(commands: Commands) -> None:
    group = commands.add_parser("users", help="manage the people who can log in", description="Local users.")
    users = group.add_subparsers(dest="users_command", metavar="COMMAND", required=True)
    data = _data_options()

    add = users.add_parser(
        "add",
        parents=[data],
        help="add a local user",
        description="Add a local user; the password is read from --password-file (- for standard input) "
        "or asked for. Passwords are stored as argon2id hashes.",
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument("--password-file", metavar="F", help="file holding the password (- for standard input)")
    add.add_argument("--no-password", action="store_true", help="a user who cannot log in (minted tokens only)")
    add.add_argument("--group", action="append", default=[], metavar="G", help="a group of the user (repeatable)")
    add.set_defaults(handler=_users_add, parser=add)

    listing = users.add_parser("list", parents=[data, _json_option()], help="list users")
    listing.set_defaults(handler=_users_list)

    block = users.add_parser(
        "block",
        parents=[data],
        help="block a user",
        description="Block a user: they cannot log in, and every token of theirs stops working on its next use.",
    )
    block.add_argument("name", metavar="NAME")
    block.add_argument("--unblock", action="store_true", help="lift the block instead")
    block.set_defaults(handler=_users_block)


def _read_password(args: argparse.Namespace) -> str | None:
    parser: argparse.ArgumentParser = args.parser
    if args.no_password:
        if args.password_file:
            parser.error("--no-password and --password-file exclude each other")
        return None
    if args.password_file == "-":
        return sys.stdin.readline().rstrip("\r\n")
    if args.password_file:
        return Path(args.password_file).read_text().rstrip("\r\n")
    if not sys.stdin.isatty():
        parser.error("give --password-file (or --no-password) when not in a terminal")
    first = getpass.getpass(f"Password for {args.name}: ")
    if getpass.getpass("Again: ") != first:
        raise ConfigError("the passwords differ")
    return first


def _users_add(args: argparse.Namespace) -> int:
    password = _read_password(args)
    settings = load_config(args)
    with open_auth(settings) as auth:
        row = auth.users.add(args.name, password, args.group)
        record_admin(settings, auth.engine, "users.add", row.subject, {"groups": list(row.groups)})
    groups = f" (groups: {', '.join(row.groups)})" if row.groups else ""
    print(f"added user '{row.subject}'{groups}")
    return 0


def _users_list(args: argparse.Namespace) -> int:
    settings = load_config(args)
    with open_auth(settings) as auth:
        rows = auth.users.listing()
        grants = {row.subject: sorted(auth.context.granted(row)) for row in rows}
    if args.json:
        _print_json(
            [
                {
                    "name": row.subject,
                    "source": row.source,
                    "groups": row.groups,
                    "blocked": row.blocked,
                    "grants": grants[row.subject],
                    "display_name": row.display_name,
                    "email": row.email,
                    "created_at": row.created_at,
                    "last_login_at": row.last_login_at,
                }
                for row in rows
            ]
        )
        return 0
    if not rows:
        print("no users (add one with `portal users add`)")
        return 0
    table = [
        [
            row.subject,
            row.source,
            ",".join(row.groups) or "-",
            "yes" if row.blocked else "no",
            " ".join(grants[row.subject]) or "-",
            _when(row.last_login_at),
        ]
        for row in rows
    ]
    _print_table(["NAME", "SOURCE", "GROUPS", "BLOCKED", "GRANTS", "LAST LOGIN"], table)
    return 0


def _users_block(args: argparse.Namespace) -> int:
    settings = load_config(args)
    with open_auth(settings) as auth:
        auth.users.set_blocked(args.name, not args.unblock)
        record_admin(settings, auth.engine, "users.unblock" if args.unblock else "users.block", args.name)
    if args.unblock:
        print(f"unblocked user '{args.name}'")
    else:
        print(f"blocked user '{args.name}': their tokens stop working on their next use")
    return 0


# clients


def _add_clients(commands: Commands) -> None:
    group = commands.add_parser("clients", help="list and revoke OAuth clients", description="OAuth clients.")
    clients = group.add_subparsers(dest="clients_command", metavar="COMMAND", required=True)
    data = _data_options()
    listing = clients.add_parser("list", parents=[data, _json_option()], help="list the clients the portal knows")
    listing.set_defaults(handler=_clients_list)
    revoke = clients.add_parser(
        "revoke",
        parents=[data],
        help="revoke a client",
        description="Revoke a client: it cannot get tokens any more, and its tokens stop working on their next use.",
    )
    revoke.add_argument("client_id", metavar="CLIENT_ID")
    revoke.set_defaults(handler=_clients_revoke)


def _clients_list(args: argparse.Namespace) -> int:
    with open_auth(load_config(args)) as auth:
        auth.clients.seed_configured()
        rows = auth.clients.listing()
    if args.json:
        _print_json(
            [
                {
                    "client_id": row.client_id,
                    "kind": row.kind,
                    "name": row.name,
                    "redirect_uris": row.redirect_uris,
                    "grant_types": row.grant_types,
                    "token_endpoint_auth_method": row.token_endpoint_auth_method,
                    "created_at": row.created_at,
                    "last_seen_at": row.last_seen_at,
                    "revoked_at": row.revoked_at,
                }
                for row in rows
            ]
        )
        return 0
    if not rows:
        print("no clients yet")
        return 0
    table = [
        [row.client_id, row.kind, row.name or "-", " ".join(row.redirect_uris) or "-", _when(row.revoked_at)]
        for row in rows
    ]
    _print_table(["CLIENT ID", "KIND", "NAME", "REDIRECT URIS", "REVOKED"], table)
    return 0


def _clients_revoke(args: argparse.Namespace) -> int:
    settings = load_config(args)
    with open_auth(settings) as auth:
        auth.clients.revoke(args.client_id)
        record_admin(settings, auth.engine, "clients.revoke", args.client_id)
    print(f"revoked client '{args.client_id}'")
    return 0


# tokens


def _add_tokens(commands: Commands) -> None:
    group = commands.add_parser("tokens", help="mint, list and revoke access tokens", description="Access tokens.")
    tokens = group.add_subparsers(dest="tokens_command", metavar="COMMAND", required=True)
    data = _data_options()
    mint = tokens.add_parser(
        "mint",
        parents=[data],
        help="mint an access token for a user",
        description="Print a new access token (and nothing else) for a known user, with capabilities the "
        "operator granted them, for one endpoint, living at most [auth] max_minted_ttl (24 hours).",
    )
    mint.add_argument("--user", required=True, metavar="U")
    mint.add_argument("--scope", metavar="S", help="space-separated capabilities (default: all granted to the user)")
    mint.add_argument("--resource", metavar="URL", help="the endpoint the token is for (default: {public_url}/mcp)")
    mint.add_argument("--ttl", type=int, metavar="SECONDS", help="life in seconds (default: access_token_ttl)")
    mint.set_defaults(handler=_tokens_mint, parser=mint)

    listing = tokens.add_parser("list", parents=[data, _json_option()], help="list access tokens")
    listing.add_argument("--user", metavar="U", help="only this user's")
    listing.add_argument("--all", action="store_true", help="include expired and revoked ones")
    listing.set_defaults(handler=_tokens_list)

    revoke = tokens.add_parser(
        "revoke", parents=[data], help="revoke tokens", description="Revoke tokens by id, or every token of a user."
    )
    revoke.add_argument("token_ids", nargs="*", metavar="TOKEN_ID")
    revoke.add_argument("--user", metavar="U", help="revoke every token (and refresh token) of this user")
    revoke.set_defaults(handler=_tokens_revoke, parser=revoke)


def _tokens_mint(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    settings = load_config(args)
    ttl = settings.auth.access_token_ttl if args.ttl is None else args.ttl
    if not 0 < ttl <= settings.auth.max_minted_ttl:
        parser.error(f"--ttl must be between 1 and {settings.auth.max_minted_ttl} seconds")
    resource = args.resource or f"{settings.public_url}/mcp"
    with open_auth(settings) as auth:
        user = auth.users.require(args.user)
        if user.blocked:
            raise PortalError(f"user '{args.user}' is blocked")
        granted = auth.context.granted(user)
        asked = parse_scope(args.scope) if args.scope is not None else granted
        if not asked:
            raise PortalError(f"user '{args.user}' has no capabilities granted in [auth.grants]")
        if not narrower_or_equal(asked, granted):
            # A minted token is never wider than what the operator granted the user.
            raise PortalError(f"user '{args.user}' is not granted {' '.join(sorted(asked))}")
        token = auth.mint_for_cli(user.subject, asked, resource, ttl)
        details = {"scope": " ".join(sorted(asked)), "resource": resource, "ttl": ttl}
        record_admin(settings, auth.engine, "tokens.mint", user.subject, details)
    print(token)
    return 0


def _tokens_list(args: argparse.Namespace) -> int:
    with open_auth(load_config(args)) as auth:
        rows = auth.context.tokens.listing(subject=args.user, include_inactive=args.all)
    now = int(time.time())

    def status(revoked_at: int | None, expires_at: int) -> str:
        return "revoked" if revoked_at else "expired" if expires_at <= now else "active"

    if args.json:
        _print_json(
            [
                {
                    "token_id": row.jti,
                    "subject": row.subject,
                    "client_id": row.client_id,
                    "audience": row.audience,
                    "scope": row.scope,
                    "grant": row.grant,
                    "issued_at": row.issued_at,
                    "expires_at": row.expires_at,
                    "status": status(row.revoked_at, row.expires_at),
                }
                for row in rows
            ]
        )
        return 0
    if not rows:
        print("no tokens")
        return 0
    table = [
        [
            row.jti,
            row.subject,
            row.client_id,
            row.audience,
            row.scope or "-",
            _when(row.expires_at),
            status(row.revoked_at, row.expires_at),
        ]
        for row in rows
    ]
    _print_table(["TOKEN ID", "SUBJECT", "CLIENT", "AUDIENCE", "SCOPE", "EXPIRES", "STATUS"], table)
    return 0


def _tokens_revoke(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    if not args.token_ids and not args.user:
        parser.error("give TOKEN_ID... or --user U")
    count = 0
    settings = load_config(args)
    with open_auth(settings) as auth:
        for jti in args.token_ids:
            if auth.context.tokens.get(jti) is None:
                raise PortalError(f"unknown token '{jti}'")
            count += auth.context.tokens.revoke(jti)
        if args.user:
            auth.users.require(args.user)
            count += auth.context.families.revoke_subject(args.user)
        target = args.user or ",".join(args.token_ids)
        details = {"token_ids": list(args.token_ids), "user": args.user, "revoked": count}
        record_admin(settings, auth.engine, "tokens.revoke", target, details)
    print(f"revoked {count} token{'s' if count != 1 else ''}")
    return 0


# keys


def _add_keys(commands: Commands) -> None:
    group = commands.add_parser("keys", help="manage token signing keys", description="Token signing keys.")
    keys = group.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    rotate = keys.add_parser(
        "rotate",
        parents=[_data_options()],
        help="make a new signing key",
        description="Make a new current signing key. Old keys stay published and valid until every token "
        "they signed has expired, then they are dropped.",
    )
    rotate.set_defaults(handler=_keys_rotate)


def _keys_rotate(args: argparse.Namespace) -> int:
    settings = load_config(args)
    with open_auth(settings) as auth:
        keys = auth.context.keys
        kid = keys.rotate()
        record_admin(settings, auth.engine, "keys.rotate", kid)
        retired = [row for _, _, row in keys.published() if row.retired_at is not None]
    print(f"new signing key {kid}")
    for row in retired:
        print(f"  {row.kid} stays published until {_when(row.drop_after)}")
    return 0
