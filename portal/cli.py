"""The `portal` command line.

Thin on purpose: each command parses its arguments, calls the registry (or the
app) and prints. Command groups register themselves through `COMMAND_GROUPS`: a
group is one function that adds its sub-commands to the top-level parser, each
with `set_defaults(handler=...)`, where a handler takes the parsed arguments and
returns the exit status.

Exit status: 0 on success, 1 when the command fails (a `PortalError`, printed as
`portal: error: ...` without a traceback), 2 on bad usage (argparse's convention).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from portal.db import create_engine, init_db
from portal.demo import companions_for, ensure_demo_user, prepare_demo
from portal.errors import PortalError
from portal.pinning import PinStore
from portal.registry import Registry
from portal.settings import PROTOCOL_CHOICES, ServerConfig, Settings, load_settings

__all__ = ["COMMAND_GROUPS", "build_parser", "load_config", "main", "open_registry", "serve"]

Commands = argparse._SubParsersAction  # argparse exposes no public name for it
Handler = Callable[[argparse.Namespace], int]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (argparse's exits included, never raises them)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        handler: Handler = args.handler
        return handler(args)
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    except PortalError as exc:
        return _fail(exc.message)
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        return _fail(f"database: {str(cause).strip().splitlines()[0]}")
    except OSError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130


def _fail(message: str) -> int:
    print(f"portal: error: {message}", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    """The full parser: `portal COMMAND ...` with every registered command group."""
    parser = argparse.ArgumentParser(
        prog="portal",
        description="Portal: one URL in front of many MCP servers.",
    )
    commands = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    for register in COMMAND_GROUPS:
        register(commands)
    return parser


# Shared options


def _data_options() -> argparse.ArgumentParser:
    """`--config FILE | --data DIR`, for every command that acts on a portal's data."""
    parent = argparse.ArgumentParser(add_help=False)
    where = parent.add_mutually_exclusive_group()
    where.add_argument(
        "--config",
        metavar="FILE",
        help="the portal's configuration (default: $PORTAL_CONFIG, else portal.toml)",
    )
    where.add_argument("--data", metavar="DIR", help="the data folder of a `portal demo` (uses DIR/portal.toml)")
    return parent


def _json_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parent


def load_config(args: argparse.Namespace) -> Settings:
    """The settings named by `--config` / `--data` / `$PORTAL_CONFIG` / `portal.toml`."""
    if getattr(args, "data", None):
        config = Path(args.data) / "portal.toml"
        if not config.is_file():
            raise PortalError(f"{args.data} is not a demo data folder (no portal.toml in it)")
        return load_settings(config)
    return load_settings(args.config or os.environ.get("PORTAL_CONFIG") or "portal.toml")


@contextmanager
def open_registry(settings: Settings) -> Iterator[Registry]:
    """The registry of `settings`' database (tables created if missing), closed afterwards."""
    engine = create_engine(settings)
    try:
        init_db(engine)
        yield Registry(settings, engine)
    finally:
        engine.dispose()


def cli_actor() -> str:
    """Who an admin change made from the command line is recorded as: the operating-system user."""
    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):
        return f"cli:uid-{os.getuid()}"


def record_admin(
    settings: Settings, engine: Engine, action: str, target: str | None, details: Mapping[str, Any] | None = None
) -> None:
    """Record a change made from the command line in the audit log (an admin event), once it is made."""
    if not settings.audit.enabled:
        return
    from portal.audit.log import AuditLog

    AuditLog.from_settings(settings, engine).admin_sync(cli_actor(), action, target, details)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    for row in (headers, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


# serve, demo


def add_run_commands(commands: Commands) -> None:
    """`portal serve` and `portal demo`."""
    serve_parser = commands.add_parser(
        "serve",
        parents=[_data_options()],
        help="run the portal",
        description="Run the portal's HTTP server until interrupted.",
    )
    _listen_options(serve_parser)
    serve_parser.set_defaults(handler=_serve_command)

    demo = commands.add_parser(
        "demo",
        help="run the portal with the example servers",
        description="Run the portal with examples/portal.toml, its data in a fresh folder (or --data DIR), "
        "and the example's remote server started alongside.",
    )
    _listen_options(demo)
    demo.add_argument("--data", metavar="DIR", help="keep the demo's data in DIR (default: a new temporary folder)")
    demo.set_defaults(handler=_demo_command)


def _listen_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"interface to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="server log level (default info)")
    parser.add_argument("--access-log", action="store_true", help="log every HTTP request (off by default)")


def serve(settings: Settings, *, host: str, port: int, log_level: str = "info", access_log: bool = False) -> int:
    """Run the portal app under uvicorn until interrupted; 1 if it could not start."""
    import uvicorn

    # Imported here: the app pulls in the whole gateway, which `portal servers ...` does not need.
    from portal.app import create_app

    server = uvicorn.Server(
        # The access log is off unless asked for: it costs ~50 µs a call, and query strings can
        # carry OAuth codes (the identity provider's callback).
        uvicorn.Config(
            create_app(settings), host=host, port=port, lifespan="on", log_level=log_level, access_log=access_log
        )
    )
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits (status 3) when it cannot bind the port
        return 0 if exc.code in (0, None) else 1
    return 0 if server.started else 1


def _serve_command(args: argparse.Namespace) -> int:
    return serve(
        load_config(args), host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log
    )


def _demo_command(args: argparse.Namespace) -> int:
    data_dir = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="portal-demo-"))
    config = prepare_demo(data_dir, host=args.host, port=args.port)
    data_dir = config.parent
    # The hosted notes server keeps its notes where NOTES_DB says; keep them with the demo's data.
    os.environ["NOTES_DB"] = str(data_dir / "notes.db")
    settings = load_settings(config)
    with open_registry(settings) as registry:
        names = [server.name for server in registry.servers() if server.enabled]
    login = ensure_demo_user(settings, data_dir)
    with ExitStack() as stack:
        companions = [stack.enter_context(companion) for companion in companions_for(settings, data_dir)]
        print("Portal demo")
        print(f"  data folder   {data_dir}")
        print(f"  MCP endpoint  {settings.public_url}/mcp")
        print(f"  Code Mode     {settings.public_url}/codemode/mcp")
        for name in names:
            print(f"  {name:<13} {settings.public_url}/servers/{name}/mcp")
        for companion in companions:
            print(f"  companion     {companion.name} at {companion.url} (log: {companion.log_path})")
        password = login.password or f"(unknown: {login.password_file} is gone)"
        print(f"  log in as     {login.user}, password {password}")
        print(f"  script token  {login.mint_command(data_dir, settings.public_url)}")
        sys.stdout.flush()
        status = serve(settings, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log)
    return status


# servers


def add_servers_commands(commands: Commands) -> None:
    """`portal servers list|add|remove|enable|disable|sync|diff|approve`."""
    group = commands.add_parser(
        "servers",
        help="list and change the registered MCP servers",
        description="List and change the MCP servers behind the portal. Changes are stored in the portal's "
        "database; a running portal applies them within registry_poll_seconds.",
    )
    servers = group.add_subparsers(dest="servers_command", metavar="COMMAND", required=True)
    data = _data_options()

    listing = servers.add_parser(
        "list",
        parents=[data, _json_option()],
        help="list servers and their health",
        description="List every server, portal.toml's first, then those added at run time, with the health "
        "a running portal last recorded.",
    )
    listing.set_defaults(handler=_servers_list)

    add = servers.add_parser(
        "add",
        parents=[data],
        help="register a server",
        description="Register a server at run time: exactly one of --url, --command or --module.",
    )
    add.add_argument("name", metavar="NAME", help="server name, ^[a-z][a-z0-9-]{0,31}$")
    target = add.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="Streamable HTTP endpoint of a remote server")
    target.add_argument("--command", metavar="CMD", help="executable of a stdio server the portal starts")
    target.add_argument("--module", metavar="MOD", help="Python module the portal hosts in-process")
    add.add_argument(
        "--arg",
        dest="args",
        action="append",
        default=[],
        metavar="A",
        help="argument of --command (repeatable; write --arg=-x for one starting with '-')",
    )
    add.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="environment of --command (repeatable); secrets as env:NAME or file:PATH references",
    )
    add.add_argument("--cwd", metavar="DIR", help="working directory of --command (default: the config's folder)")
    add.add_argument("--timeout", type=float, default=30.0, metavar="S", help="request timeout in seconds (30)")
    add.add_argument("--protocol", choices=PROTOCOL_CHOICES, default="auto", help="protocol era (default auto)")
    add.add_argument("--allow", action="append", default=[], metavar="TOOL", help="expose only these tools")
    add.add_argument("--deny", action="append", default=[], metavar="TOOL", help="never expose these tools")
    add.add_argument("--disabled", action="store_true", help="register it disabled")
    add.add_argument(
        "--trust-new-tools",
        action="store_true",
        help="offer tools it adds after its first sync without approval (changed tools are still held)",
    )
    add.set_defaults(handler=_servers_add, parser=add)

    for name, handler, text in (
        ("remove", _servers_remove, "forget a server added at run time"),
        ("enable", _servers_enable, "enable a server"),
        ("disable", _servers_disable, "disable a server (not started, not listed, not callable)"),
    ):
        command = servers.add_parser(name, parents=[data], help=text, description=text[0].upper() + text[1:] + ".")
        command.add_argument("name", metavar="NAME")
        command.set_defaults(handler=handler)

    # Tool pinning (issue 7), in its own module.
    from portal.cli_pins import add_pin_commands

    add_pin_commands(servers, data)


def _target(server: ServerConfig) -> str:
    if server.url is not None:
        return server.url
    if server.command is not None:
        return shlex.join([server.command, *server.args])
    return server.module or ""


def _servers_list(args: argparse.Namespace) -> int:
    settings = load_config(args)
    in_config = {server.name for server in settings.servers}
    with open_registry(settings) as registry:
        servers, health = registry.servers(), registry.health()
        pins = PinStore(registry.engine).counts()
    if args.json:
        records = []
        for server in servers:
            row = health.get(server.name)
            source = "config" if server.name in in_config else "runtime"
            records.append(
                server.to_mapping()
                | {
                    "kind": server.kind,
                    "source": source,
                    "health": row.to_mapping() if row else None,
                    "tools": pins.get(server.name),
                }
            )
        _print_json(records)
        return 0
    if not servers:
        print("no servers (add one with `portal servers add`)")
        return 0
    rows = []
    for server in servers:
        row = health.get(server.name)
        error = (row.last_error or "") if row else ""
        rows.append(
            [
                server.name,
                server.kind,
                "config" if server.name in in_config else "runtime",
                _target(server),
                "yes" if server.enabled else "no",
                row.state if row else "-",
                (row.protocol_version or "-") if row else "-",
                _held(pins.get(server.name)),
                error if len(error) <= 60 else error[:59] + "…",
            ]
        )
    _print_table(["NAME", "KIND", "SOURCE", "TARGET", "ENABLED", "HEALTH", "PROTOCOL", "HELD", "LAST ERROR"], rows)
    return 0


def _held(counts: Mapping[str, int] | None) -> str:
    """Tools awaiting review (`portal servers diff`), with how many of them the scan flagged."""
    if not counts:
        return "-"
    held = counts["quarantined"] + counts["pending"]
    return f"{held} ({counts['flagged']} flagged)" if counts["flagged"] else str(held)


def _servers_add(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    if args.command is None and (args.args or args.env or args.cwd):
        parser.error("--arg, --env and --cwd go with --command")
    env: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--env takes KEY=VALUE, got {item!r}")
        env[key] = value
    server = ServerConfig(
        name=args.name,
        url=args.url,
        command=args.command,
        args=tuple(args.args),
        env=env,
        # Relative to where the command is typed, which is what the person typing it means.
        cwd=str(Path(args.cwd).resolve()) if args.cwd else None,
        module=args.module,
        timeout=args.timeout,
        enabled=not args.disabled,
        tools_allow=tuple(args.allow),
        tools_deny=tuple(args.deny),
        protocol=args.protocol,
        trust_new_tools=args.trust_new_tools,
    )
    settings = load_config(args)
    with open_registry(settings) as registry:
        registry.add(server)
        record_admin(
            settings, registry.engine, "servers.add", server.name, {"kind": server.kind, "enabled": server.enabled}
        )
    state = "" if server.enabled else ", disabled"
    print(f"added server '{server.name}' ({server.kind}: {_target(server)}{state})")
    return 0


def _servers_remove(args: argparse.Namespace) -> int:
    settings = load_config(args)
    with open_registry(settings) as registry:
        registry.remove(args.name)
        # Another server added later under this name starts with a first sync, not with these pins.
        PinStore(registry.engine).forget(args.name)
        record_admin(settings, registry.engine, "servers.remove", args.name)
    print(f"removed server '{args.name}'")
    return 0


def _servers_enable(args: argparse.Namespace) -> int:
    return _set_enabled(args, True)


def _servers_disable(args: argparse.Namespace) -> int:
    return _set_enabled(args, False)


def _set_enabled(args: argparse.Namespace, enabled: bool) -> int:
    settings = load_config(args)
    with open_registry(settings) as registry:
        registry.set_enabled(args.name, enabled)
        record_admin(settings, registry.engine, "servers.enable" if enabled else "servers.disable", args.name)
    print(f"{'enabled' if enabled else 'disabled'} server '{args.name}'")
    return 0


def add_auth_commands(commands: Commands) -> None:
    """`portal users|clients|tokens|keys` (in `portal.cli_auth`, imported when the parser is built)."""
    from portal.cli_auth import add_commands

    add_commands(commands)


def add_policy_commands(commands: Commands) -> None:
    """`portal policy|approvals` (in `portal.policy.cli`, imported when the parser is built)."""
    from portal.policy.cli import add_commands

    add_commands(commands)


def add_audit_commands(commands: Commands) -> None:
    """`portal audit ...` and `portal db upgrade` (in `portal.audit.cli`, imported when the parser is built)."""
    from portal.audit.cli import add_audit_commands as add_audit
    from portal.audit.cli import add_db_commands

    add_audit(commands)
    add_db_commands(commands)


COMMAND_GROUPS: tuple[Callable[[Commands], None], ...] = (
    add_run_commands,
    add_servers_commands,
    add_auth_commands,
    add_policy_commands,
    add_audit_commands,
)
"""Every command group, in the order `portal --help` lists them."""
