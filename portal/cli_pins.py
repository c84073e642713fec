"""`portal servers sync|diff|approve`: reviewing tool pins from the command line (issue 7).

- `sync NAME` lists the server's tools and reconciles them with its pins, as a running portal
  does when the server connects or announces a change. The command line cannot borrow a
  running portal's connections, so it opens its own, through the same connector the portal
  uses (a remote URL, a stdio subprocess, or the hosted module imported in this process),
  lists the tools, and closes it. Running portals notice the new pin revision and re-list.
- `diff NAME` shows, for each tool that is not offered, its state, what the description scan
  flagged, and a unified diff of the pinned definition against the one the server lists now.
- `approve NAME [TOOL...]` pins the definitions awaiting approval; running portals offer the
  tools within `registry_poll_seconds`.

`sync` and `approve` are admin events in the audit log, like every change made from here.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import unicodedata
from typing import Any

from portal.catalog import fetch_server_catalog
from portal.cli import _json_option, _print_json, load_config, open_registry, record_admin
from portal.errors import UpstreamUnavailable
from portal.pinning import PinChange, PinStore, ToolPin
from portal.settings import ServerConfig

__all__ = ["add_pin_commands", "list_tools", "pretty_definition"]


def add_pin_commands(servers: argparse._SubParsersAction, data: argparse.ArgumentParser) -> None:
    """Add `sync`, `diff` and `approve` to `portal servers`."""
    sync = servers.add_parser(
        "sync",
        parents=[data, _json_option()],
        help="list a server's tools now and update their pins",
        description="Connect to the server (as the portal would), list its tools and compare them with their "
        "pins: the first sync pins every tool; later, changed tools are quarantined and new ones wait for "
        "approval (unless the server trusts new tools). Running portals pick the result up.",
    )
    sync.add_argument("name", metavar="NAME")
    sync.set_defaults(handler=_sync)

    diff = servers.add_parser(
        "diff",
        parents=[data, _json_option()],
        help="show the tools of a server that await review",
        description="For each quarantined or pending tool of the server: its state, what the description scan "
        "flagged, and a unified diff of the pinned definition against the current one.",
    )
    diff.add_argument("name", metavar="NAME")
    diff.set_defaults(handler=_diff)

    approve = servers.add_parser(
        "approve",
        parents=[data],
        help="accept the current definition of held tools",
        description="Pin the current definition of the named tools of the server (default: every quarantined "
        "or pending one), so that running portals offer them again.",
    )
    approve.add_argument("name", metavar="NAME")
    approve.add_argument("tools", metavar="TOOL", nargs="*", help="tools to approve (default: all held ones)")
    approve.set_defaults(handler=_approve)


async def list_tools(server: ServerConfig, base_dir: str) -> list[dict[str, Any]]:
    """The tools `server` lists now (those its allow and deny lists expose), over a connection of our own."""
    from portal.upstream.supervisor import build_connector

    connector = build_connector(server, base_dir)
    try:
        try:
            async with asyncio.timeout(max(server.timeout, 10.0)):
                info = await connector.start()
        except TimeoutError:
            raise UpstreamUnavailable(server.name, f"did not start within {max(server.timeout, 10.0):g}s") from None
        # Only the tools: pins cover nothing else.
        capabilities = {key: value for key, value in info.capabilities.items() if key == "tools"}
        catalog = await fetch_server_catalog(
            server.name,
            capabilities,
            lambda method, params: connector.request(method, params, timeout=server.timeout),
            allow=server.exposes,
        )
    finally:
        await connector.close()
    return catalog.items["tools"]


def pretty_definition(definition: Any) -> str:
    """Indented JSON with sorted keys, and every invisible character written as an escape, so a diff shows it."""
    if definition is None:
        return ""
    text = json.dumps(definition, indent=2, sort_keys=True, ensure_ascii=False)
    return "".join(
        f"\\u{ord(char):04x}" if char not in "\n" and unicodedata.category(char) in ("Cf", "Cc") else char
        for char in text
    )


def _sync(args: argparse.Namespace) -> int:
    settings = load_config(args)
    with open_registry(settings) as registry:
        server = registry.get(args.name)
        tools = asyncio.run(list_tools(server, settings.base_dir))
        result = PinStore(registry.engine).reconcile(server.name, tools, trust_new_tools=server.trust_new_tools)
        record_admin(
            settings,
            registry.engine,
            "servers.sync",
            server.name,
            {"first_sync": result.first_sync, "changes": [_change(change) for change in result.changes]},
        )
    if args.json:
        _print_json(
            {
                "server": server.name,
                "first_sync": result.first_sync,
                "offered": sorted(result.visible),
                "held": dict(sorted(result.held.items())),
                "changes": [_change(change) for change in result.changes],
            }
        )
        return 0
    first = " (first sync)" if result.first_sync else ""
    print(f"synced server '{server.name}'{first}: {len(result.visible)} tools offered, {len(result.held)} held")
    for change in result.changes:
        print(f"  {change.tool}: {change.before or 'new'} -> {change.state}")
        for flag in change.flags:
            print(f"      flagged {flag}")
    if result.held:
        print(f"review with `portal servers diff {server.name}`, accept with `portal servers approve {server.name}`")
    return 0


def _diff(args: argparse.Namespace) -> int:
    settings = load_config(args)
    with open_registry(settings) as registry:
        server = registry.get(args.name)
        held = [pin for pin in PinStore(registry.engine).pins(server.name) if pin.state != "pinned"]
    if args.json:
        _print_json([_pin_record(pin) for pin in held])
        return 0
    if not held:
        print(f"no tools of '{server.name}' await review")
        return 0
    for pin in held:
        what = "definition changed" if pin.state == "quarantined" else "new tool"
        print(f"== {pin.tool}: {pin.state} ({what}, since {pin.changed_at:%Y-%m-%d %H:%M:%S} UTC)")
        for flag in pin.flags:
            print(f"   flagged {flag}")
        print(_unified(pin), end="")
    print(f"accept with `portal servers approve {server.name} [TOOL...]`")
    return 0


def _approve(args: argparse.Namespace) -> int:
    settings = load_config(args)
    with open_registry(settings) as registry:
        server = registry.get(args.name)
        store = PinStore(registry.engine)
        approved = store.approve(server.name, args.tools)
        if approved:
            pins = {pin.tool: pin for pin in store.pins(server.name)}
            record_admin(
                settings,
                registry.engine,
                "servers.approve",
                server.name,
                {
                    "tools": [
                        {**_change(change), "sha256": pins[change.tool].pinned_sha256}
                        for change in approved
                        if change.tool in pins
                    ]
                },
            )
    if not approved:
        print(f"nothing to approve for '{server.name}'")
        return 0
    names = ", ".join(change.tool for change in approved)
    print(f"approved {len(approved)} tool{'s' if len(approved) != 1 else ''} of '{server.name}': {names}")
    return 0


def _change(change: PinChange) -> dict[str, Any]:
    return {
        "tool": change.tool,
        "state": change.state,
        "before": change.before,
        "flags": [flag.to_mapping() for flag in change.flags],
    }


def _unified(pin: ToolPin) -> str:
    lines = difflib.unified_diff(
        pretty_definition(pin.pinned).splitlines(keepends=True),
        pretty_definition(pin.current).splitlines(keepends=True),
        fromfile=f"{pin.tool} (pinned)" if pin.pinned is not None else "/dev/null",
        tofile=f"{pin.tool} (current)",
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def _pin_record(pin: ToolPin) -> dict[str, Any]:
    return {
        "tool": pin.tool,
        "state": pin.state,
        "flags": [flag.to_mapping() for flag in pin.flags],
        "pinned_sha256": pin.pinned_sha256,
        "current_sha256": pin.current_sha256,
        "pinned": pin.pinned,
        "current": pin.current,
        "changed_at": pin.changed_at.isoformat(),
        "diff": _unified(pin),
    }
