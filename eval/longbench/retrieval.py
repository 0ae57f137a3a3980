"""Retrieval-only prediction: the LLM sees only the top-ranked spans of the context, as text.

A ``SpanRetriever`` scores candidate spans (character offsets into the document) against the
question; ``select_spans`` keeps the best ones that fit a token budget and returns them in
document order. Two retrievers:

* ``lexical``: a BM25 baseline over windows of consecutive sentences (the project's segmenter,
  :mod:`vllm_landmark.retrieval.segment`; words for Latin scripts, character bigrams for CJK;
  the project's BM25, :func:`vllm_landmark.retrieval.lexical.bm25_rank_texts`).
  No model: a floor to compare against.
* ``m3``: the project's chunking-free M3 span ranker (``vllm_landmark.retrieval.spans``) with
  a BGE-M3-layout folder; ``RetrieverUnavailable`` when it cannot load.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from eval.longbench.prompts import TokenizerLike
from vllm_landmark.config import DEFAULT_RETRIEVER, parse_retriever
from vllm_landmark.retrieval.lexical import bm25_rank_texts
from vllm_landmark.retrieval.segment import segment

SPAN_SEPARATOR = "\n...\n"

_LATIN_WORD = re.compile(r"[^\W\d_]{2,}|\d+", re.UNICODE)
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")


class RetrieverUnavailable(Exception):
    """The requested retriever cannot run here (e.g. no model folder was given)."""


@dataclass(frozen=True)
class RetrievedSpan:
    """A span of the document, by character offsets, with its relevance score."""

    start: int
    end: int
    score: float


class SpanRetriever(Protocol):
    """Scores spans of a document against a query."""

    name: str

    def rank(self, document: str, query: str) -> list[RetrievedSpan]:
        """Candidate spans with scores (any order; overlaps allowed)."""
        ...


def sentence_bounds(text: str, max_chars: int = 400) -> list[tuple[int, int]]:
    """Character ranges of the units of a text, from the project's segmenter.

    Text without sentence ends (code, lists, word salad) is cut into pieces of at most
    ``max_chars`` characters so that spans stay small enough to select.
    """
    return [(unit.start, unit.end) for unit in segment(text, max_chars=max_chars)]


def terms(text: str) -> list[str]:
    """Lower-cased words of Latin scripts plus character bigrams (and unigrams) of CJK runs."""
    found = [w.lower() for w in _LATIN_WORD.findall(text)]
    for run in _CJK.findall(text):
        found.extend(run)
        found.extend(run[i : i + 2] for i in range(len(run) - 1))
    return found


class LexicalRetriever:
    """BM25 over windows of ``window`` consecutive sentences, stepping ``stride`` sentences."""

    name = "lexical"

    def __init__(self, window: int = 2, stride: int = 1, k1: float = 1.2, b: float = 0.75):
        self.window, self.stride, self.k1, self.b = window, stride, k1, b

    def rank(self, document: str, query: str) -> list[RetrievedSpan]:
        sentences = sentence_bounds(document)
        if not sentences:
            return []
        spans = []
        for first in range(0, max(1, len(sentences) - self.window + self.stride), self.stride):
            last = min(len(sentences), first + self.window) - 1
            spans.append((sentences[first][0], sentences[last][1]))
        corpus = [terms(document[s:e]) for s, e in spans]
        scores = bm25_rank_texts(corpus, sorted(set(terms(query))), k1=self.k1, b=self.b)
        return [RetrievedSpan(s, e, float(v)) for (s, e), v in zip(spans, scores, strict=True)]


class M3SpanRetriever:
    """The project's chunking-free M3 span ranker (``vllm_landmark.retrieval.spans``).

    Candidates are runs of 1-3 sentences, scored with the hybrid M3 score; ``select_spans``
    then keeps the best that fit the budget. Needs a BGE-M3-layout folder.
    """

    name = "m3"

    def __init__(self, model_dir: str | None = None, top_k: int = 256) -> None:
        try:
            from vllm_landmark.retrieval.m3 import M3Encoder
            from vllm_landmark.retrieval.spans import SpanRanker
        except ImportError as exc:
            raise RetrieverUnavailable(
                "retriever 'm3' needs vllm_landmark.retrieval.spans (plugin/retrieval/spans.py), "
                f"which does not import here ({exc}); use --retriever lexical"
            ) from exc
        if not model_dir:
            raise RetrieverUnavailable(
                "retriever 'm3' needs --retriever-model (a BGE-M3 folder, or 'default')"
            )
        if parse_retriever(model_dir) is DEFAULT_RETRIEVER:
            from vllm_landmark.default_models import prepare_default_retriever

            model_dir = str(prepare_default_retriever())
        self.top_k = top_k
        self.ranker = SpanRanker(M3Encoder(model_dir))

    def rank(self, document: str, query: str) -> list[RetrievedSpan]:
        if not query.strip():
            return []
        ranking = self.ranker.rank(document, query, top_k=self.top_k)
        return [RetrievedSpan(s.start_char, s.end_char, float(s.score)) for s in ranking.spans]


def make_retriever(name: str, model_dir: str | None = None) -> SpanRetriever:
    """A retriever by name: ``lexical`` or ``m3``."""
    if name == "lexical":
        return LexicalRetriever()
    if name == "m3":
        return M3SpanRetriever(model_dir)
    raise ValueError(f"unknown retriever {name!r}; choose lexical or m3")


def _count(tokenizer: TokenizerLike, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def select_spans(
    document: str,
    ranked: Sequence[RetrievedSpan],
    tokenizer: TokenizerLike,
    budget: int,
) -> list[RetrievedSpan]:
    """Best-scoring spans, overlaps merged away, that fit ``budget`` tokens; document order.

    When no span scores above zero (e.g. a summary instruction with no query terms), spans
    are taken evenly spread over the document instead.
    """
    if not ranked:
        return []
    if max(s.score for s in ranked) > 0:
        order = sorted(ranked, key=lambda s: (-s.score, s.start))
    else:
        by_pos = sorted(ranked, key=lambda s: s.start)
        order = [by_pos[i] for i in _spread(len(by_pos))]
    chosen: list[RetrievedSpan] = []
    used = 0
    for span in order:
        if any(span.start < c.end and c.start < span.end for c in chosen):
            continue
        cost = _count(tokenizer, document[span.start : span.end]) + 2
        if used + cost > budget:
            if used == 0:
                continue  # a single span over the budget: try smaller ones
            break
        chosen.append(span)
        used += cost
    return sorted(chosen, key=lambda s: s.start)


def _spread(count: int) -> list[int]:
    """Indices 0..count-1 in an order that covers the range evenly (bisection order)."""
    order: list[int] = []
    seen: set[int] = set()
    parts = 1
    while len(order) < count:
        for j in range(parts):
            index = min(count - 1, (2 * j + 1) * count // (2 * parts))
            if index not in seen:
                seen.add(index)
                order.append(index)
        parts *= 2
        if parts > 4 * count:
            order.extend(i for i in range(count) if i not in seen)
            break
    return order


def retrieved_context(
    document: str, query: str, retriever: SpanRetriever, tokenizer: TokenizerLike, budget: int
) -> tuple[str, dict[str, Any]]:
    """The text the LLM gets in retrieval-only mode, and what was kept."""
    ranked = retriever.rank(document, query)
    if not ranked:  # nothing to match (e.g. a summary instruction): spread over the document
        ranked = LexicalRetriever().rank(document, "")
    spans = select_spans(document, ranked, tokenizer, budget)
    text = SPAN_SEPARATOR.join(document[s.start : s.end].strip() for s in spans)
    return text, {"retriever": retriever.name, "spans": [[s.start, s.end] for s in spans]}
