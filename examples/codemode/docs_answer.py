# ruff: noqa: F704
# A Code Mode program: answer "how do I roll back a deploy?" from the docs, citing where each line comes from.
# Search once, then read the best documents in parallel and keep only the lines that mention the topic.
import asyncio

from tools import docs

found = await docs.search_docs(query="roll back a deploy", limit=3)
paths = [hit["path"] for hit in found["hits"]]
documents = await asyncio.gather(*[docs.read_doc(path=path) for path in paths])

answer = []
for document in documents:
    for number, line in enumerate(document["text"].splitlines(), start=1):
        if "roll back" in line.lower() or "rollback" in line.lower():
            answer.append(f"{document['path']}:{number}: {line.strip()}")

print(f"{len(answer)} lines about rolling back, from {len(documents)} documents:")
for line in answer[:8]:
    print(line)

{"sources": paths, "lines": len(answer)}
