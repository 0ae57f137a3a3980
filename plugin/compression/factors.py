"""Choosing a document's scaling factor k from its length and the soft-token budget."""

from __future__ import annotations

from ..config import LandmarkConfig


class DocumentTooLongError(ValueError):
    """Even the strongest allowed compression leaves a document over its budget."""


def num_soft_tokens(num_tokens: int, factor: int) -> int:
    """Soft tokens a span of `num_tokens` tokens becomes at factor k: ceil(n / k)."""
    return -(-num_tokens // factor)


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
