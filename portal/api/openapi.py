"""The OpenAPI 3.1 description of the admin API (`GET /api/openapi.json`).

Written out rather than generated: it is the contract scripts are built against, so a
change to it should be a change someone reviews.
"""

from __future__ import annotations

from typing import Any

from portal import __version__
from portal.audit.query import FILTER_PARAMS

__all__ = ["openapi_document"]

_FILTER_HELP = {
    "user": "principal (token subject)",
    "client": "OAuth client id",
    "server": "server name",
    "tool": "tool or prompt name, resource URI, admin action target",
    "decision": "allow or deny",
    "outcome": "ok, error, denied, timeout, cancelled (calls); success, failure (auth); ok (admin)",
    "kind": "call, auth or admin",
    "since": "ISO 8601 date or time (UTC unless it says otherwise), or a span ago: 30m, 12h, 7d",
    "until": "ISO 8601 date or time, or a span ago; records before it",
    "text": "free text, matched in names, arguments and details",
}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _filters() -> list[dict[str, Any]]:
    return [_query(name, _FILTER_HELP[name]) for name in FILTER_PARAMS]


def _get(summary: str, scope: str, parameters: list[dict[str, Any]], content: dict[str, Any]) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "security": [{"bearer": [scope]}],
            "parameters": parameters,
            "responses": {
                "200": {"description": "OK", "content": content},
                "400": {"$ref": "#/components/responses/Error"},
                "401": {"$ref": "#/components/responses/Error"},
                "403": {"$ref": "#/components/responses/Error"},
                "404": {"$ref": "#/components/responses/Error"},
            },
        }
    }


def _post(summary: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{"bearer": ["admin"]}],
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "200": {"description": "The request, decided", "content": _json({"type": "object"})},
                "404": {"$ref": "#/components/responses/Error"},
                "409": {"$ref": "#/components/responses/Error"},
            },
        }
    }


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def openapi_document(public_url: str) -> dict[str, Any]:
    record = {"$ref": "#/components/schemas/Record"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Portal admin API",
            "version": __version__,
            "description": "Tokens are minted for the resource "
            f"{public_url}/api (RFC 8707); each operation names the scope it needs.",
        },
        "servers": [{"url": public_url}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "Record": {
                    "type": "object",
                    "description": "An audit record (SPEC.md, Audit record); `time` is ISO 8601 UTC.",
                    "additionalProperties": True,
                    "required": ["seq", "id", "call_id", "kind", "phase", "time_us", "prev_hash", "hash"],
                },
                "Tree": {
                    "type": "object",
                    "properties": {
                        "call_id": {"type": "string"},
                        "records": {"type": "array", "items": record},
                        "children": {"type": "array", "items": {"$ref": "#/components/schemas/Tree"}},
                    },
                },
            },
            "responses": {
                "Error": {
                    "description": "An error, with a stable code",
                    "content": _json(
                        {
                            "type": "object",
                            "properties": {
                                "error": {
                                    "type": "object",
                                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                                }
                            },
                        }
                    ),
                }
            },
        },
        "paths": {
            "/api/audit/records": _get(
                "Search audit records, newest first",
                "audit:read",
                [
                    *_filters(),
                    _query("limit", "records per page (1 to 500, default 50)", {"type": "integer"}),
                    _query("cursor", "next_cursor of the previous page"),
                ],
                _json(
                    {
                        "type": "object",
                        "properties": {
                            "records": {"type": "array", "items": record},
                            "next_cursor": {"type": ["string", "null"]},
                        },
                    }
                ),
            ),
            "/api/audit/records/{id}": {
                "get": {
                    **_get("One call: its records and the tree of its inner calls", "audit:read", [], {})["get"],
                    "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {
                        "200": {"description": "OK", "content": _json({"$ref": "#/components/schemas/Tree"})},
                        "404": {"$ref": "#/components/responses/Error"},
                    },
                }
            },
            "/api/audit/export": _get(
                "Every matching record, oldest first, streamed",
                "audit:read",
                [*_filters(), _query("format", "jsonl (default) or csv", {"enum": ["jsonl", "csv"]})],
                {"application/x-ndjson": {}, "text/csv": {}},
            ),
            "/api/audit/stats": _get(
                "Calls, denials, errors and latency by server and tool",
                "audit:read",
                _filters(),
                _json({"type": "object", "properties": {"stats": {"type": "array", "items": {"type": "object"}}}}),
            ),
            "/api/approvals": _get(
                "Calls held for an operator's approval (all=1: every request, decided ones too)",
                "audit:read",
                [_query("all", "1 to include decided and expired requests")],
                _json({"type": "object", "properties": {"approvals": {"type": "array", "items": {"type": "object"}}}}),
            ),
            "/api/approvals/{id}/approve": _post("Approve a held call (it goes through once, on the client's retry)"),
            "/api/approvals/{id}/deny": _post("Deny a held call"),
            "/api/audit/verify": _get(
                "Check the hash chain and its signed checkpoints",
                "audit:read",
                [],
                _json({"type": "object", "properties": {"ok": {"type": "boolean"}, "message": {"type": "string"}}}),
            ),
        },
    }
