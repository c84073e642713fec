"""Ranked search over the SDK: BM25 over server names, tool names, descriptions and parameters.

Each tool is one document. Name fields weigh more than prose (a query word in a tool's name says more than the same
word in a long description), which is BM25F done the simple way: a field's tokens are counted several times. Tokens
are lower-cased, split at `_`, `-`, `.` and camelCase humps, and lightly stemmed so "notes" finds `create_note`.
A query naming a tool exactly (`notes.create_note`) puts that tool first whatever the scores say.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache

from codemode.sdk import Sdk, ServerModule, ToolBinding

__all__ = ["SearchHit", "SearchIndex", "tokenize"]

# Words, with camelCase and ACRONYMCase split: "getHTTPResponse" -> get, HTTP, Response.
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_STOP = frozenset(
    {
        "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "in",
        "into", "is", "it", "of", "on", "or", "the", "this", "to", "with",
    }
)  # fmt: skip
_K1 = 1.2
_B = 0.75
# How many times each field's tokens count (BM25F by repetition).
_WEIGHT_NAME = 4
_WEIGHT_SERVER = 2
_WEIGHT_PARAM = 2
_WEIGHT_TEXT = 1
_EXACT_NAME_BONUS = 1000.0


@lru_cache(maxsize=65_536)
def _term(word: str) -> str:
    # Just enough folding for tool catalogs, applied alike to documents and queries: plurals, then the commonest verb
    # endings, then a final "e", so note/notes and create/created/creating each meet in one term.
    word = word.lower()
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        word = word[:-1]
    if word.endswith("ing") and len(word) > 5:
        word = word[:-3]
    elif word.endswith("ed") and len(word) > 4:
        word = word[:-2]
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    """Lower-cased, stemmed word tokens of `text`, stop words dropped."""
    return [_term(word) for word in _WORD.findall(text) if word.lower() not in _STOP]


@dataclass(frozen=True)
class SearchHit:
    """One ranked tool."""

    server: str
    tool: str
    qualified: str
    signature: str
    summary: str
    score: float

    def line(self) -> str:
        """The compact listing line: the call as a program writes it, its return type and one line of doc."""
        call = self.signature.removeprefix("async def ")
        return f"{call}  # {self.summary}" if self.summary else call


class SearchIndex:
    """A BM25 index over every tool of an `Sdk`, inverted so a query touches only the tools sharing its terms."""

    def __init__(self, sdk: Sdk) -> None:
        self._tools = [(module, binding) for module in sdk.modules for binding in module.tools]
        self._postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self._names: dict[str, list[int]] = defaultdict(list)
        lengths = []
        for position, (module, binding) in enumerate(self._tools):
            terms: Counter[str] = Counter()
            for text, weight in _fields(module, binding):
                for token in tokenize(text):
                    terms[token] += weight
            for term, frequency in terms.items():
                self._postings[term].append((position, frequency))
            lengths.append(sum(terms.values()))
            for name in _names(module, binding):
                self._names[name].append(position)
        count = len(self._tools)
        average = sum(lengths) / count if count else 1.0
        self._norms = [_K1 * (1 - _B + _B * length / average) for length in lengths]
        self._idf = {
            term: math.log(1 + (count - len(postings) + 0.5) / (len(postings) + 0.5))
            for term, postings in self._postings.items()
        }

    def __len__(self) -> int:
        return len(self._tools)

    def search(self, query: str, limit: int = 10) -> list[SearchHit]:
        """The best `limit` tools for `query`, best first; ties keep catalog order."""
        scores: dict[int, float] = defaultdict(float)
        for term in set(tokenize(query)):
            idf = self._idf.get(term, 0.0)
            for position, frequency in self._postings.get(term, ()):
                scores[position] += idf * frequency * (_K1 + 1) / (frequency + self._norms[position])
        for position in self._names.get(query.strip().lower(), ()):
            scores[position] += _EXACT_NAME_BONUS  # an exact tool name is what the caller means
        ranked = sorted((position for position, score in scores.items() if score > 0), key=lambda p: (-scores[p], p))
        return [self._hit(position, scores[position]) for position in ranked[: max(limit, 0)]]

    def _hit(self, position: int, score: float) -> SearchHit:
        module, binding = self._tools[position]
        return SearchHit(
            server=module.server,
            tool=binding.tool,
            qualified=binding.qualified,
            signature=binding.signature(),
            summary=binding.summary(),
            score=round(score, 4),
        )


def _fields(module: ServerModule, binding: ToolBinding) -> list[tuple[str, int]]:
    params = " ".join(f"{param.name} {param.real_name}" for param in binding.params)
    param_docs = " ".join(param.description for param in binding.params)
    return [
        (f"{binding.tool} {binding.function}", _WEIGHT_NAME),
        (f"{module.server} {module.module}", _WEIGHT_SERVER),
        (params, _WEIGHT_PARAM),
        (f"{binding.description} {param_docs}", _WEIGHT_TEXT),
    ]


def _names(module: ServerModule, binding: ToolBinding) -> set[str]:
    spellings = (binding.qualified, binding.tool, f"{module.server}.{binding.tool}", f"{module.server}_{binding.tool}")
    return {name.lower() for name in spellings}
