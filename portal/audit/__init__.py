"""The audit log: a tamper-evident, redacted record of every request, auth event and admin change.

Wiring (in `create_app`)::

    audit = AuditLog.from_settings(settings, engine)      # or AuditLog(engine, AuditSettings(), master=...)
    await audit.start()                                    # on the event loop (lifespan start)
    audit.subscribe(auth_service.events)                   # auth events
    stages = [authenticate, router, audit.stage(split=True), policy, audit.gate(), ...]
    await audit.close()                                    # lifespan end: drains, signs the head
    await audit.admin("alice", "servers.add", "notes", {...})
"""

from portal.audit.chain import VerifyReport, record_hash, verify_chain
from portal.audit.log import AuditLog, AuditUnavailable, Spool, prune
from portal.audit.query import Filters, Page, export, search, show, stats
from portal.audit.redact import Redactor
from portal.audit.settings import AuditSettings
from portal.audit.stage import AuditGate, AuditStage

__all__ = [
    "AuditGate",
    "AuditLog",
    "AuditSettings",
    "AuditStage",
    "AuditUnavailable",
    "Filters",
    "Page",
    "Redactor",
    "Spool",
    "VerifyReport",
    "export",
    "prune",
    "record_hash",
    "search",
    "show",
    "stats",
    "verify_chain",
]
