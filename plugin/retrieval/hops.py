"""Retrieval in rounds: what a found sentence names becomes the next round's query.

A question can depend on something the document only names on the way: "which variables hold
41822?" over ``X = 41822`` ... ``Y = X`` ... ``Z = Y``, or "where was the director of film F
born?" over "F was directed by N" ... "N was born in C". One round finds the first link; the
next links share nothing with the question, only with the link before them.

Each round (:func:`next_hop`) reads the sentence the last round found and takes its *bridge
terms*: words the question does not hold that are rare in the document (in at least one other
sentence, in at most :func:`rare_bound` of them) -- a name, a code, a number, not the
template words every look-alike line repeats. Candidates are the sentences not yet found that
hold a bridge term, whole; the best is the one the retriever ranks first for the question
expanded with the terms (the question keeps the hop on topic: of two sentences naming the
found entity, the one about what was asked). Rounds stop when a sentence has no bridge term
or no candidate holds one, so a question answered by one sentence costs one extra look at
that sentence's words and no forward.

The planner then reads the found sentences first, in the order found, and the rest by the
first round's scores (:func:`chain_first`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .identifiers import identifier_unit_hits

#: Bridge terms read from one found sentence, rarest first.
MAX_BRIDGE_TERMS = 4

_TERM = re.compile(r"\w(?:[\w\-./:#]*\w)?")


@dataclass(frozen=True)
class Hop:
    """One round after the first: the sentence it found and the terms that led there."""

    unit: int
    terms: tuple[str, ...]


def rare_bound(num_units: int) -> int:
    """The most sentences a bridge term may occur in: 2 % of them, at least 3."""
    return max(3, math.ceil(0.02 * num_units))


def bridge_terms(
    document: str, unit_chars: np.ndarray, unit: int, question: str
) -> list[tuple[str, float]]:
    """``(term, idf)`` of the found sentence ``unit``, rarest first (see the module docstring);
    ties keep the sentence's order."""
    a, b = (int(x) for x in unit_chars[unit])
    asked = {t.lower() for t in _TERM.findall(question)}
    words: list[str] = []
    for word in _TERM.findall(document[a:b]):
        if word.lower() not in asked and word not in words:
            words.append(word)
    if not words:
        return []
    hits = identifier_unit_hits(document, unit_chars, words)
    counts = hits.sum(axis=1)
    bound = rare_bound(len(unit_chars))
    rare = [
        (word, math.log(len(unit_chars) / count))
        for word, count in zip(words, counts.tolist(), strict=True)
        if 2 <= count <= bound
    ]
    rare.sort(key=lambda pair: -pair[1])
    return rare[:MAX_BRIDGE_TERMS]


def next_hop(
    document: str,
    unit_chars: np.ndarray,
    found: Sequence[int],
    question: str,
    score_for: Callable[[str], np.ndarray],
) -> Hop | None:
    """The sentence the last found one leads to, or None (no bridge term or no candidate).

    ``score_for(query)``: the retriever's per-sentence scores for a query (one more round).
    """
    terms = bridge_terms(document, unit_chars, found[-1], question)
    if not terms:
        return None
    words = [word for word, _ in terms]
    hits = identifier_unit_hits(document, unit_chars, words)
    holds = hits.any(axis=0)
    holds[list(found)] = False
    if not holds.any():
        return None
    scores = score_for(question + " " + " ".join(words))
    candidates = np.nonzero(holds)[0]
    unit = int(candidates[np.argmax(scores[candidates])])
    held = tuple(word for word, row in zip(words, hits, strict=True) if row[unit])
    return Hop(unit, held)


def chain_first(scores: np.ndarray, chain: Sequence[int]) -> np.ndarray:
    """Scores with the chain's sentences on top, in chain order; the rest keep theirs."""
    out = np.asarray(scores, dtype=np.float64).copy()
    if not chain:
        return out
    top = float(out.max())
    for place, unit in enumerate(chain):
        out[unit] = top + len(chain) - place
    return out
