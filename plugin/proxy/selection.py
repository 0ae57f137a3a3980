"""Which text of a document the proxy pastes: contiguous windows within an exact token budget.

A document whose tokens (in the upstream tokenizer) fit its budget is pasted whole. A longer
one is ranked by the retriever (:meth:`SpanRanker.score_all_spans`, per sentence, with offsets
in the upstream tokenizer's tokens) and the window rule of
:func:`vllm_landmark.planning.select_windows` picks contiguous windows around the
best sentences (grown to their paragraph or a window of whole sentences, merged, in document
order; the sentences ranked by M3 fused with BM25, as the plugin's planner ranks them). Without
a question, the head and the tail are kept (LongBench's middle truncation).

The windows are pasted as text, joined by :data:`SEPARATOR`, and the result is counted again
exactly with the upstream tokenizer: pieces tokenized apart (and the separators) can take a
few tokens more than the same text inside the document, so the selection is redone with a
smaller budget until the pasted text fits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import DEFAULT_ROUNDS
from ..planning import PlanError, PlanSettings, ScoredSpans, paragraph_token_bounds, plan_document
from .tokenizers import UpstreamTokenizer

#: Between two windows of one document: says to the model that text was left out.
SEPARATOR = "\n\n[...]\n\n"
#: Rounds of re-selection when the pasted text counts more than the budget.
MAX_ROUNDS = 8


class SelectionError(ValueError):
    """The document cannot be selected within its budget."""


@dataclass
class DocumentSelection:
    """What the upstream model reads of one document, and why."""

    text: str
    raw_tokens: int
    kept_tokens: int
    budget: int
    selection: str  # "whole" | "retriever" | "position"
    windows: list[tuple[int, int]] = field(default_factory=list)  # character ranges, in order
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The document's row of the response's ``landmark`` block."""
        return {
            "raw_tokens": self.raw_tokens,
            "kept_tokens": self.kept_tokens,
            "budget": self.budget,
            "spans": len(self.windows),
            "windows": [list(w) for w in self.windows],
            "reason": "fits" if self.selection == "whole" else "budget",
            "selection": self.selection,
        }


def _char_windows(
    windows: list[tuple[int, int]], starts: np.ndarray, length: int
) -> list[tuple[int, int]]:
    """Token windows ``[a, b)`` as character ranges of the text."""
    n = len(starts)
    return [(int(starts[a]), int(starts[b]) if b < n else length) for a, b in windows]


def _paste(text: str, windows: list[tuple[int, int]]) -> tuple[str, list[tuple[int, int]]]:
    """The windows' text (outer whitespace trimmed) joined by the separator."""
    pieces, kept = [], []
    for a, b in windows:
        piece = text[a:b]
        lead = len(piece) - len(piece.lstrip())
        piece = piece.strip()
        if piece:
            pieces.append(piece)
            kept.append((a + lead, a + lead + len(piece)))
    return SEPARATOR.join(pieces), kept


def select_document(
    text: str,
    query: str | None,
    budget: int,
    tokenizer: UpstreamTokenizer,
    ranker: Any,
    *,
    window_tokens: int | None = None,
) -> DocumentSelection:
    """The text of ``text`` to paste for ``query`` in at most ``budget`` upstream tokens.

    ``window_tokens``: the largest paragraph taken whole and the size of a window around a
    sentence (default: the planner's, :func:`vllm_landmark.planning.windows.window_tokens_for`).
    """
    if budget < 1:
        raise SelectionError(f"no room for the document (budget {budget} tokens)")
    starts = tokenizer.token_starts(text)
    n = len(starts)
    if n <= budget:
        return DocumentSelection(text, n, tokenizer.count(text), budget, "whole", [(0, len(text))])
    timings: dict[str, float] = {}
    scores: ScoredSpans | None = None
    if query is not None and ranker is not None:
        landmarks = ranker.score_all_spans(
            text, query, llm_tokenizer=tokenizer, lexical_fusion=True, rounds=DEFAULT_ROUNDS
        )
        timings = dict(landmarks.timings)
        scores = ScoredSpans.from_landmarks(landmarks)
    settings = PlanSettings(window_tokens=window_tokens)
    paragraphs = paragraph_token_bounds(text, starts.tolist())
    room = budget
    for _ in range(MAX_ROUNDS):
        try:
            plan, selection = plan_document(n, room, settings, scores, paragraphs=paragraphs)
        except PlanError:
            break
        token_windows = [(span.start, span.end) for span in plan.spans]
        pasted, windows = _paste(text, _char_windows(token_windows, starts, len(text)))
        kept = tokenizer.count(pasted)
        if kept <= budget:
            if not pasted:
                break
            return DocumentSelection(pasted, n, kept, budget, selection, windows, timings)
        # Less room than the windows took (whole sentences may leave some unused), by the excess.
        room = min(room, sum(b - a for a, b in token_windows)) - max(kept - budget, 1)
        if room < 1:
            break
    raise SelectionError(
        f"cannot paste any of the document within {budget} tokens of the upstream tokenizer"
    )
