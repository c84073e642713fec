"""The audit log: a tamper-evident, redacted record of every request, auth event and admin change.

Wiring (in `create_app`)::

    audit = AuditLog.from_settings(settings, engine)      # or AuditLog(engine, AuditSettings(), master=...)
    await audit.start()                                    # on the event loop (lifespan start)
    audit.subscribe(auth_service.events)                   # auth events
    stages = [authenticate, router, audit.stage(split=True), policy, audit.gate(), ...]
    await audit.close()                                    # lifespan end: drains, signs the head
    await audit.admin("alice", "servers.add", "notes", {...})
"""

import importlib
from typing import Any

# Resolved on first use (PEP 562): `portal.settings` imports `portal.audit.settings`, and an eager
# import of the whole package from here would import the settings module back half-built.
_EXPORTS = {
    "VerifyReport": "portal.audit.chain",
    "record_hash": "portal.audit.chain",
    "verify_chain": "portal.audit.chain",
    "AuditLog": "portal.audit.log",
    "AuditUnavailable": "portal.audit.log",
    "Journal": "portal.audit.journal",
    "prune": "portal.audit.log",
    "Filters": "portal.audit.query",
    "Page": "portal.audit.query",
    "export": "portal.audit.query",
    "search": "portal.audit.query",
    "show": "portal.audit.query",
    "stats": "portal.audit.query",
    "Redactor": "portal.audit.redact",
    "AuditSettings": "portal.audit.settings",
    "AuditGate": "portal.audit.stage",
    "AuditStage": "portal.audit.stage",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'portal.audit' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = [
    "AuditGate",
    "AuditLog",
    "AuditSettings",
    "AuditStage",
    "AuditUnavailable",
    "Filters",
    "Journal",
    "Page",
    "Redactor",
    "VerifyReport",
    "export",
    "prune",
    "record_hash",
    "search",
    "show",
    "stats",
    "verify_chain",
]
