"""The one ordered chain every MCP request passes through.

A request that reaches an MCP endpoint becomes an `McpRequest` and runs through
the stages in order (authenticate, authorize, audit, ... , forward). Each stage
is an async callable `stage(request, call_next)` that may look at or change the
request, refuse it by raising a `PortalError`, call the rest of the chain with
`await call_next(request)`, and look at or change the result on the way back,
like ASGI middleware but at the level of MCP requests. The last link is the
forwarder, which answers from the catalog or sends the request upstream.

Adding a stage is one entry in the list given to `Pipeline`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from portal.auth.principal import Principal
    from portal.gateway.routing import Target

__all__ = [
    "CODEMODE_RUN",
    "PARENT_REQUEST_ID",
    "VIA_CODEMODE",
    "Endpoint",
    "Handler",
    "McpRequest",
    "Pipeline",
    "Stage",
]

Notify = Callable[[str, Mapping[str, Any]], Awaitable[None]]

# Keys of `McpRequest.state` that the portal itself sets, for the stages that read them (policy, audit).
VIA_CODEMODE = "via_codemode"
"""True on a request a Code Mode program made (an inner call, or the listing its SDK is built from)."""
PARENT_REQUEST_ID = "parent_request_id"
"""On an inner Code Mode request: the JSON-RPC id of the `execute` (or `search`) request it belongs to."""
CODEMODE_RUN = "codemode_run"
"""The id of one Code Mode run: on the `execute` request itself and on every inner call it makes."""


@dataclass(frozen=True)
class Endpoint:
    """Which MCP endpoint a request came in on."""

    kind: Literal["aggregated", "server", "codemode"]
    path: str
    server: str | None = None
    """The server of a `/servers/{name}/mcp` endpoint."""


@dataclass
class McpRequest:
    """One MCP request on its way through the pipeline."""

    endpoint: Endpoint
    method: str
    params: dict[str, Any]
    request_id: str | int
    protocol_version: str
    """The era the client speaks on this request."""
    client_info: Mapping[str, Any] | None = None
    client_capabilities: Mapping[str, Any] | None = None
    notify: Notify | None = None
    """Sends a notification that belongs to this request to the client (progress, log messages)."""
    principal: Principal | None = None
    """Who the request acts for, from its verified access token."""
    target: Target | None = None
    """The server and upstream name a call, read or prompt request is for (set by the router stage)."""
    state: dict[str, Any] = field(default_factory=dict)
    """Where stages leave what later stages (and the audit record) need."""

    @property
    def modern(self) -> bool:
        return self.protocol_version >= "2026-07-28"


Handler = Callable[[McpRequest], Awaitable[dict[str, Any]]]


class Stage(Protocol):
    async def __call__(self, request: McpRequest, call_next: Handler) -> dict[str, Any]: ...


class Pipeline:
    """Runs `stages` in order, ending with `endpoint`."""

    def __init__(self, stages: Sequence[Stage], endpoint: Handler) -> None:
        self.stages = tuple(stages)
        self.endpoint = endpoint
        self._chain = self._build()

    def _build(self) -> Handler:
        # Built once, from the inside out, so a request pays one call per stage and nothing else.
        chain = self.endpoint
        for stage in reversed(self.stages):
            chain = _link(stage, chain)
        return chain

    def append(self, stage: Stage) -> None:
        """Add `stage` after the others, just before the endpoint; requests from now on pass through it."""
        self.stages = (*self.stages, stage)
        self._chain = self._build()

    async def __call__(self, request: McpRequest) -> dict[str, Any]:
        return await self._chain(request)


def _link(stage: Stage, call_next: Handler) -> Handler:
    async def run(request: McpRequest) -> dict[str, Any]:
        return await stage(request, call_next)

    return run
