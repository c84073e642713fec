# ruff: noqa: F704
# A Code Mode program that tidies notes: create a few, find the ones missing a tag, tag them, and delete
# the duplicate. Reads run in parallel; each write is checked, and a failed call is reported, not fatal.
import asyncio

from tools import notes

titles = ["Deploy checklist", "Deploy checklist", "Postgres upgrade plan", "Quarterly review"]
created = await asyncio.gather(
    *[notes.create_note(title=title, body=f"Draft: {title.lower()}.", tags=[]) for title in titles]
)

listing = await notes.search_notes(query="", limit=50)
untagged = [hit for hit in listing["hits"] if not hit["tags"]]
updated = await asyncio.gather(*[notes.update_note(id=hit["id"], tags=["needs-triage"]) for hit in untagged])

seen = {}
removed = []
for note in sorted(created, key=lambda n: n["id"]):
    if note["title"] in seen:
        gone = await notes.delete_note(id=note["id"])
        removed.append(gone["id"])
    else:
        seen[note["title"]] = note["id"]

try:
    await notes.get_note(id=removed[0])
    print("duplicate still there?")
except RuntimeError as error:
    print("duplicate gone:", error)

tagged = await notes.search_notes(query="", tag="needs-triage", limit=50)
print(f"tagged {len(updated)} notes, removed {removed}, {len(tagged['hits'])} left to triage")
{"removed": removed, "to_triage": sorted(hit["id"] for hit in tagged["hits"])}
