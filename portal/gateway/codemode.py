"""Code Mode on the portal: `/codemode/mcp` serves `search` and `execute` over the tools a caller may see.

The `codemode` package does the work (SDK generation, search, the sandbox); this module decides which SDK a caller
gets and makes every call a program makes go through the portal's pipeline.

- **The SDK a caller sees** is generated from the tools that caller may see: the portal asks its own pipeline for
  `tools/list` on the aggregated view, as the caller (so every stage that filters lists, capabilities today and
  policies as they land, decides), and builds a `CodeMode` from the upstream definitions of what comes back.
  Views are cached per caller (user, client, scopes, groups) for the catalog's `generation` and the
  `view_version()` hook (the policy set's version, once there is one), and for at most `view_ttl` seconds;
  `CodeMode`s are shared between callers who see the same tools (by the tool names within one generation, then
  by `catalog_fingerprint`), so a catalog change rebuilds an SDK only when its content changed.
- **Every inner call goes through the same pipeline as a direct call**: a `tools/call` on the aggregated view with
  the caller's principal and client, and `state` marking it as Code Mode's (`VIA_CODEMODE`, `PARENT_REQUEST_ID`,
  `CODEMODE_RUN`, and `PARENT_AUDIT_ID` when the run has an audit record) for policies and the audit log. A
  refusal or any other portal error reaches the program as a `RuntimeError` with the error's message (written for
  clients, so it carries no secrets or paths); anything unexpected reaches it as "internal error".
- **The sandbox** is one per process for every portal app in it: the first app's lifespan starts its workers, the
  last one's stops them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from codemode import EXECUTE, SEARCH, CodeMode, Limits, Sandbox, ToolCallError, catalog_fingerprint, tool_definitions
from codemode.runner import CallTool
from portal.auth.principal import Principal
from portal.auth.resource import AuthenticationRequired, InsufficientScope
from portal.catalog import aggregate_name
from portal.errors import InvalidParams, MethodNotFound, PortalError, UnknownTool
from portal.gateway.servers import ServerSet
from portal.pipeline import CODEMODE_RUN, PARENT_REQUEST_ID, VIA_CODEMODE, Endpoint, Handler, McpRequest

__all__ = [
    "AGGREGATED",
    "AUDIT_CALL_ID",
    "CODEMODE_ENDPOINT",
    "CODEMODE_VIEW",
    "PARENT_AUDIT_ID",
    "SHARED_SANDBOX",
    "CodeModeGateway",
    "SharedSandbox",
    "ToolCatalog",
]

logger = logging.getLogger(__name__)

CODEMODE_ENDPOINT = Endpoint("codemode", "/codemode/mcp")
AGGREGATED = Endpoint("aggregated", "/mcp")
"""The view inner calls and SDK listings are made on: tools named `{server}_{tool}`, as on `/mcp`."""
CODEMODE_VIEW = "codemode_view"
"""`McpRequest.state` key: True on the `tools/list` the portal makes to build a caller's SDK (not a client's)."""
AUDIT_CALL_ID = "audit_call_id"
"""`McpRequest.state` key the audit stage sets on a request it records (here: the `execute` run)."""
PARENT_AUDIT_ID = "parent_audit_id"
"""`McpRequest.state` key of an inner call: the audit record id of its run, when the run was recorded."""

ToolCatalog = dict[str, list[dict[str, Any]]]
"""Server name to the definitions of its tools, as `CodeMode` takes them."""

_EMPTY_LISTS = {
    "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
    "prompts/list": "prompts",
}

_K = TypeVar("_K")
_V = TypeVar("_V")


@dataclass
class _View:
    codemode: CodeMode
    expires: float


class CodeModeGateway:
    """Answers requests on `/codemode/mcp` (the forwarder hands them here) for each caller's view of the tools."""

    def __init__(
        self,
        servers: ServerSet,
        *,
        limits: Limits | None = None,
        view_ttl: float = 30.0,
        max_views: int = 1024,
        max_sdks: int = 16,
        sandboxes: SharedSandbox | None = None,
    ) -> None:
        self.servers = servers
        self._sandboxes = sandboxes or SHARED_SANDBOX
        self.limits = limits or Limits()
        self.view_ttl = view_ttl
        self.max_views = max_views
        self.max_sdks = max_sdks
        self.view_version: Callable[[], Hashable] = _no_version
        """Part of every view's cache key: a stage whose decisions change what callers see (the policy set) sets
        this to return its version, so that views built before a change are not used after it."""
        self.sandbox: Sandbox | None = None
        self._pipeline: Handler | None = None
        self._views: OrderedDict[tuple[Any, ...], _View] = OrderedDict()
        self._by_names: OrderedDict[tuple[Any, ...], CodeMode] = OrderedDict()
        self._by_fingerprint: OrderedDict[str, CodeMode] = OrderedDict()
        self._building: dict[tuple[Any, ...], asyncio.Future[CodeMode]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.builds = 0
        """How many SDKs this gateway has generated (a rebuild counts; a cache hit does not)."""

    def bind(self, pipeline: Handler) -> None:
        """The pipeline inner calls and SDK listings go through (the one that ends in the forwarder that calls us)."""
        self._pipeline = pipeline

    async def start(self) -> None:
        """Start the process's sandbox workers (app lifespan)."""
        self.sandbox = self._sandboxes.acquire()
        sandbox = self.sandbox
        try:
            await asyncio.to_thread(sandbox.pool)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Forget every SDK, and stop the sandbox workers when no other app in the process uses them."""
        for task in list(self._background):
            task.cancel()
        self._views.clear()
        self._by_names.clear()
        self._by_fingerprint.clear()
        if self.sandbox is not None:
            self.sandbox = None
            last = self._sandboxes.release()
            if last is not None:
                await asyncio.to_thread(last.close)

    # -- requests on /codemode/mcp ----------------------------------------------------------------------------

    async def __call__(self, request: McpRequest) -> dict[str, Any]:
        method = request.method
        if method == "tools/list":
            # The same two tools for every caller and catalog; no SDK needed to list them.
            return {"tools": tool_definitions(self.limits)}
        if method == "tools/call":
            return await self._call(request)
        if method in _EMPTY_LISTS:
            return {_EMPTY_LISTS[method]: []}
        if method == "logging/setLevel" and not request.modern:
            return {}
        raise MethodNotFound(f"Method not found: {method}", method=method)

    async def _call(self, request: McpRequest) -> dict[str, Any]:
        name = request.params.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidParams("name must be a non-empty string")
        if name not in (SEARCH, EXECUTE):
            raise UnknownTool(f"Unknown tool: {name}", name=name)
        arguments = request.params.get("arguments")
        if arguments is not None and not isinstance(arguments, Mapping):
            raise InvalidParams("arguments must be an object")
        codemode = await self.view(request)
        if name == SEARCH:
            return await codemode.call(SEARCH, arguments)
        run = f"cm-{secrets.token_hex(8)}"
        request.state[CODEMODE_RUN] = run
        return await codemode.call(EXECUTE, arguments, call_tool=self._inner_calls(request, run))

    # -- the SDK a caller sees --------------------------------------------------------------------------------

    async def view(self, request: McpRequest) -> CodeMode:
        """The `CodeMode` over the tools the caller of `request` may see right now."""
        principal = _principal_of(request)
        generation = self.servers.catalog.generation
        key = (generation, self.view_version(), *_identity(principal))
        now = time.monotonic()
        cached = self._views.get(key)
        if cached is not None and cached.expires > now:
            self._views.move_to_end(key)
            return cached.codemode
        catalog = await self.visible_catalog(request)
        names = tuple((server, tuple(tool["name"] for tool in tools)) for server, tools in catalog.items())
        codemode = await self._codemode_for((generation, names), catalog)
        _remember(self._views, key, _View(codemode, now + self.view_ttl), self.max_views)
        return codemode

    async def visible_catalog(self, request: McpRequest) -> ToolCatalog:
        """The upstream definitions of the tools `tools/list` on `/mcp` shows this caller, by server (sorted)."""
        pipeline = self._require_pipeline()
        listing = McpRequest(
            endpoint=AGGREGATED,
            method="tools/list",
            params={},
            request_id=f"{request.request_id}/sdk",
            protocol_version=request.protocol_version,
            client_info=request.client_info,
            client_capabilities=request.client_capabilities,
            principal=request.principal,
            state={VIA_CODEMODE: True, CODEMODE_VIEW: True, PARENT_REQUEST_ID: request.request_id},
        )
        listed = (await pipeline(listing)).get("tools")
        catalog = self.servers.catalog
        out: ToolCatalog = {}
        for item in listed if isinstance(listed, list) else []:
            resolved = catalog.resolve_tool(item.get("name", "")) if isinstance(item, Mapping) else None
            if resolved is None:
                continue
            server, tool = resolved
            listed_by = catalog.get(server)
            definition = listed_by.tool(tool) if listed_by is not None else None
            if definition is not None:
                out.setdefault(server, []).append(definition)
        return {server: out[server] for server in sorted(out)}

    async def _codemode_for(self, names: tuple[Any, ...], catalog: ToolCatalog) -> CodeMode:
        found = self._by_names.get(names)
        if found is not None:
            self._by_names.move_to_end(names)
            return found
        pending = self._building.get(names)
        if pending is None:
            pending = asyncio.ensure_future(self._build(catalog))
            self._building[names] = pending
            pending.add_done_callback(lambda _: self._building.pop(names, None))
        # Callers who arrive while the SDK is being generated wait for that one build; one who gives up
        # (a cancelled request) does not cancel it for the others.
        codemode = await asyncio.shield(pending)
        _remember(self._by_names, names, codemode, self.max_views)
        return codemode

    async def _build(self, catalog: ToolCatalog) -> CodeMode:
        # Generating an SDK takes about 0.4 s for 1,000 tools: off the event loop, which keeps serving meanwhile.
        fingerprint = await asyncio.to_thread(catalog_fingerprint, catalog)
        found = self._by_fingerprint.get(fingerprint)
        if found is not None:
            self._by_fingerprint.move_to_end(fingerprint)
            return found
        codemode = await asyncio.to_thread(CodeMode, catalog, limits=self.limits, sandbox=self.sandbox)
        self.builds += 1
        _remember(self._by_fingerprint, fingerprint, codemode, self.max_sdks)
        self._in_background(codemode.warm_up(), "warm up a code mode type checker")
        return codemode

    def _in_background(self, work: Awaitable[None], what: str) -> None:
        async def run() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("could not %s", what, exc_info=True)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- inner calls ------------------------------------------------------------------------------------------

    def _inner_calls(self, outer: McpRequest, run: str) -> CallTool:
        """`call_tool` for one run: each call is a `tools/call` through the pipeline, as the caller of `outer`."""
        pipeline = self._require_pipeline()
        catalog = self.servers.catalog
        numbers = itertools.count(1)

        async def call_tool(server: str, tool: str, arguments: dict[str, Any]) -> Mapping[str, Any]:
            state: dict[str, Any] = {VIA_CODEMODE: True, PARENT_REQUEST_ID: outer.request_id, CODEMODE_RUN: run}
            audited = outer.state.get(AUDIT_CALL_ID)
            if audited is not None:
                state[PARENT_AUDIT_ID] = audited  # the run's own audit record is the parent of this call's
            name = aggregate_name(server, tool)
            resolved = catalog.resolve_tool(name)
            if resolved is not None and resolved != (server, tool):
                # Two tools whose names fold to the same `/mcp` name: only the first is reachable there.
                raise ToolCallError("this tool cannot be called by name on the aggregated endpoint")
            inner = McpRequest(
                endpoint=AGGREGATED,
                method="tools/call",
                params={"name": name, "arguments": arguments},
                request_id=f"{run}.{next(numbers)}",
                protocol_version=outer.protocol_version,
                client_info=outer.client_info,
                client_capabilities=outer.client_capabilities,
                principal=outer.principal,
                state=state,
            )
            try:
                result = await pipeline(inner)
            except InsufficientScope as exc:
                raise ToolCallError(f"refused: the token lacks the scope {' '.join(exc.needed)}") from None
            except PortalError as exc:
                raise ToolCallError(f"refused: {exc.message}" if _is_refusal(exc) else exc.message) from None
            if result.get("resultType") == "input_required":
                raise ToolCallError("the tool asked for input, which a program cannot give")
            return result

        return call_tool

    def _require_pipeline(self) -> Handler:
        if self._pipeline is None:
            raise RuntimeError("CodeModeGateway.bind(pipeline) was not called")
        return self._pipeline


def _principal_of(request: McpRequest) -> Principal:
    if request.principal is None:
        # The capability guard refuses such a request before it gets here; fail closed all the same.
        raise AuthenticationRequired("Authentication required", error=None)
    return request.principal


def _identity(principal: Principal) -> tuple[Hashable, ...]:
    """Everything about a caller that what they may see can depend on (scopes; and for policies, who and how)."""
    actor = orjson.dumps(principal.actor, option=orjson.OPT_SORT_KEYS) if principal.actor else None
    return (principal.subject, principal.client_id, principal.scopes, principal.groups, actor)


def _is_refusal(exc: PortalError) -> bool:
    return exc.http_status in (401, 403)


def _no_version() -> Hashable:
    return None


def _remember(cache: OrderedDict[_K, _V], key: _K, value: _V, limit: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)


class SharedSandbox:
    """The process's one sandbox, for every portal app in it.

    Workers are processes, long-lived and shared: the first app to start acquires (and starts) the sandbox, the
    last one to stop closes it; an app started after that gets a new one. (`codemode.default_sandbox()` lives until
    the interpreter exits, so an app's shutdown could not stop it and start it again.)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sandbox: Sandbox | None = None
        self._users = 0

    def acquire(self) -> Sandbox:
        with self._lock:
            if self._sandbox is None:
                self._sandbox = Sandbox()
            self._users += 1
            return self._sandbox

    def release(self) -> Sandbox | None:
        """Drop one user; returns the sandbox for the caller to close when that was the last one."""
        with self._lock:
            self._users = max(self._users - 1, 0)
            if self._users or self._sandbox is None:
                return None
            last, self._sandbox = self._sandbox, None
            return last


SHARED_SANDBOX = SharedSandbox()
