"""Access policies in Cedar (SPEC.md, Policies).

Wiring: `engine = PolicyEngine.from_settings(settings, catalog)`;
`stage = PolicyStage.from_settings(settings, engine, db_engine)`; `await stage.start()` /
`await stage.close()`; `engine.reload()` for the admin API. The stage goes right after
`CapabilityGuard` in the pipeline.
"""

from portal.policy.engine import Decision, PolicyEngine, Subject
from portal.policy.loader import PolicyError
from portal.policy.stage import PolicyDenied, PolicyStage

__all__ = ["Decision", "PolicyDenied", "PolicyEngine", "PolicyError", "PolicyStage", "Subject"]
