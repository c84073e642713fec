# ruff: noqa: F704
# A Code Mode program across three servers: turn the on-call runbook's escalation section into a note,
# stamped with the current time, then read the note back to check what was stored.
import asyncio

from tools import clock, docs, notes

runbook, now = await asyncio.gather(docs.read_doc(path="runbooks/on-call.md"), clock.current_time(timezone="UTC"))

section = []
inside = False
for line in runbook["text"].splitlines():
    if line.startswith("## "):
        inside = line.strip() == "## Escalation"
        continue
    if inside and line.startswith("- "):
        section.append(line)

body = f"Escalation contacts from {runbook['path']} (copied {now['iso']}):\n\n" + "\n".join(section)
note = await notes.create_note(title="On-call escalation cheat sheet", body=body, tags=["On Call", "ops"])
stored = await notes.get_note(id=note["id"])

print(f"note {stored['id']} {stored['uri']}: {len(section)} escalation rules, tags {stored['tags']}")
stored["tags"]
