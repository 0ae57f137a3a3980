"""Span scores as the planner reads them: LLM-token spans in order, one score each.

`ScoredSpans.from_landmarks` is the one place where the retriever's per-sentence output
(`retrieval.spans.LandmarkScores`) becomes planner input: sentences that own no LLM token
(they start inside another sentence's token) are dropped, the rest keep their order.
`position_scores` ranks blocks by distance from the middle when there is no retriever.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: Token block used to rank positions when no retriever scores a document (middle first out).
POSITION_BLOCK = 64


@dataclass(frozen=True)
class ScoredSpans:
    """Spans of a document (LLM token offsets `[start, end)`, in order) and a score each;
    `rounds`: the retrieval rounds that scored them (see `retrieval.hops`)."""

    bounds: tuple[tuple[int, int], ...]
    values: tuple[float, ...]
    rounds: int = 1

    @classmethod
    def from_ranges(
        cls, ranges: Sequence[Sequence[int]], values: Sequence[float], rounds: int = 1
    ) -> ScoredSpans:
        """Ranges with their scores, dropping the empty ones (they own no token)."""
        bounds, kept = [], []
        for (start, end), value in zip(ranges, values, strict=True):
            if end > start:
                bounds.append((int(start), int(end)))
                kept.append(float(value))
        return cls(tuple(bounds), tuple(kept), rounds)

    @classmethod
    def from_landmarks(cls, landmarks: Any) -> ScoredSpans:
        """The retriever's sentence scores (`LandmarkScores` with LLM offsets) as spans."""
        if landmarks.llm_token_offsets is None:
            raise ValueError("the landmark scores have no LLM token offsets (no LLM tokenizer)")
        return cls.from_ranges(
            landmarks.llm_token_offsets.tolist(), landmarks.score.tolist(), landmarks.rounds
        )


def position_scores(num_tokens: int) -> ScoredSpans:
    """Blocks of the document scored by distance from its middle: head and tail first."""
    bounds = tuple(
        (start, min(start + POSITION_BLOCK, num_tokens))
        for start in range(0, num_tokens, POSITION_BLOCK)
    )
    middle = num_tokens / 2
    values = tuple(abs((start + end) / 2 - middle) for start, end in bounds)
    return ScoredSpans(bounds, values)
