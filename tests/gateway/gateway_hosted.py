"""The hosted test upstream: a module with a module-level `server`, as `servers/` modules have."""

from gateway_upstreams import build_upstream

server = build_upstream("hosted")
