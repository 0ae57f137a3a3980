"""A plan: which tokens of a document the LLM reads, and at which scaling factor.

A `Plan` is the `(start, end, k)` list the embedder consumes (LLM token offsets into the
document, in order; k = 1 is the LLM's own token embeddings, k > 1 one soft token per k
tokens). This module holds the types and the plans that need no scores.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import LandmarkConfig


class PlanError(ValueError):
    """The planner's inputs are inconsistent; the message names the value at fault."""


class DocumentTooLongError(ValueError):
    """Even the strongest allowed compression leaves a document over its budget."""


def num_soft_tokens(num_tokens: int, factor: int) -> int:
    """Soft tokens a span of `num_tokens` tokens becomes at factor k: ceil(n / k)."""
    return -(-num_tokens // factor)


@dataclass(frozen=True)
class PlannedSpan:
    start: int
    end: int
    factor: int

    @property
    def num_tokens(self) -> int:
        return self.end - self.start

    @property
    def soft_tokens(self) -> int:
        return num_soft_tokens(self.num_tokens, self.factor)


@dataclass(frozen=True)
class Plan:
    spans: tuple[PlannedSpan, ...]

    @property
    def soft_tokens(self) -> int:
        return sum(span.soft_tokens for span in self.spans)

    @property
    def kept_tokens(self) -> int:
        return sum(span.num_tokens for span in self.spans)

    def as_triples(self) -> list[tuple[int, int, int]]:
        return [(s.start, s.end, s.factor) for s in self.spans]

    @classmethod
    def from_triples(cls, triples: object) -> Plan:
        """A plan from `[start, end, k]` rows (a request's explicit plan)."""
        return cls(tuple(PlannedSpan(int(a), int(b), int(k)) for a, b, k in triples))  # type: ignore[attr-defined]


def uniform_plan(num_tokens: int, factor: int) -> Plan:
    """The whole document as one span at one factor."""
    if num_tokens < 1:
        raise PlanError("a document needs at least one token")
    return Plan((PlannedSpan(0, num_tokens, factor),))


def head_and_tail(num_tokens: int, share: int) -> Plan:
    """The first and last tokens of a document at k=1, `share` tokens in all (middle left out)."""
    head = -(-share // 2)
    tail = share - head
    spans = [PlannedSpan(0, head, 1)]
    if tail:
        spans.append(PlannedSpan(num_tokens - tail, num_tokens, 1))
    return Plan(tuple(spans))


def choose_factor(
    num_tokens: int,
    budget: int,
    config: LandmarkConfig,
    factors: tuple[int, ...] | None = None,
) -> int:
    """The factor for one document: the fixed one, or the smallest allowed one that fits.

    `factors` narrows config.factors (e.g. to what the embedder was trained for). Raises
    DocumentTooLongError (with the numbers and the flags to change) when nothing fits.
    """
    if num_tokens < 1:
        raise ValueError("a document must have at least one token")
    allowed = config.factors if factors is None else factors
    candidates = (config.factor,) if config.factor is not None else allowed
    for factor in candidates:
        if num_soft_tokens(num_tokens, factor) <= budget:
            return factor
    strongest = candidates[-1]
    needed = num_soft_tokens(num_tokens, strongest)
    raise DocumentTooLongError(
        f"document of {num_tokens} tokens needs {needed} soft tokens at factor {strongest}, "
        f"{needed - budget} over the budget of {budget}; raise --landmark-budget "
        f"(or allow larger factors with --landmark-factors / --landmark-factor)"
    )
