"""Prometheus text exposition of the portal's own figures (`/metrics`).

Hand-written rather than through a client library: a handful of gauges and
counters per server, read from the live `ServerSet` when scraped, costs nothing
on the request path.
"""

from __future__ import annotations

from portal.gateway.servers import ServerSet

__all__ = ["render_metrics"]

_STATES = ("starting", "up", "down", "disabled")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(servers: ServerSet) -> str:
    health = servers.health()
    lines = [
        "# HELP portal_upstream_up Whether the upstream server is connected (1) or not (0).",
        "# TYPE portal_upstream_up gauge",
    ]
    lines += [f'portal_upstream_up{{server="{_label(n)}"}} {int(h["state"] == "up")}' for n, h in health.items()]
    lines += [
        "# HELP portal_upstream_state Current state of the upstream server.",
        "# TYPE portal_upstream_state gauge",
    ]
    for name, h in health.items():
        lines += [
            f'portal_upstream_state{{server="{_label(name)}",state="{s}"}} {int(h["state"] == s)}' for s in _STATES
        ]
    for metric, key, help_text in (
        ("portal_upstream_requests_total", "calls", "Requests sent to the upstream server."),
        ("portal_upstream_errors_total", "errors", "Requests to the upstream server that failed."),
        ("portal_upstream_restarts_total", "restarts", "Times the connection to the upstream was re-established."),
    ):
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
        lines += [f'{metric}{{server="{_label(n)}"}} {h[key]}' for n, h in health.items()]
    lines += [
        "# HELP portal_upstream_latency_p50_seconds Median latency of the last requests to the upstream.",
        "# TYPE portal_upstream_latency_p50_seconds gauge",
    ]
    lines += [
        f'portal_upstream_latency_p50_seconds{{server="{_label(n)}"}} {h["p50_ms"] / 1000}'
        for n, h in health.items()
        if h["p50_ms"] is not None
    ]
    return "\n".join(lines) + "\n"
