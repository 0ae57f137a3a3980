"""The factor ladder: which scored spans of a document to keep, and at which factor.

Input: spans in document order (LLM token offsets), a relevance score per span (from the
retriever), a soft-token budget and the allowed factors. Output: a `Plan`, the
`(start, end, k)` list the embedder consumes. Guarantees (tested):
- the plan's soft tokens never exceed the budget;
- spans keep document order;
- a higher-scoring span never gets a larger k than a lower-scoring one (dropping a span counts
  as the largest k);
- with a budget >= the document length every span is at k=1;
- the same inputs give the same plan.

Method: every span starts at the largest factor; if even that is over budget, the
lowest-scoring spans are dropped. Then, from the highest score down, each span gets the
smallest factor the remaining budget allows, but never a smaller one than the span ranked
just above it. Adjacent kept spans with the same factor are merged (fewer rounding losses).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..config import ALLOWED_FACTORS
from .plan import Plan, PlanError, PlannedSpan, num_soft_tokens


def _check_inputs(
    bounds: Sequence[tuple[int, int]], scores: Sequence[float], budget: int, factors: Sequence[int]
) -> None:
    if not bounds:
        raise PlanError("the span list is empty: a plan needs at least one span")
    if len(scores) != len(bounds):
        raise PlanError(f"{len(scores)} scores for {len(bounds)} spans")
    if budget < 1:
        raise PlanError(f"budget={budget} must be at least 1 soft token")
    bad = [k for k in factors if k not in ALLOWED_FACTORS]
    if not factors or bad:
        raise PlanError(f"factors {list(factors)} must be a non-empty subset of {ALLOWED_FACTORS}")
    previous_end = None
    for index, (start, end) in enumerate(bounds):
        if not 0 <= start < end:
            raise PlanError(f"span {index} = ({start}, {end}) is empty or negative")
        if previous_end is not None and start < previous_end:
            raise PlanError(f"span {index} starts at {start}, before span {index - 1} ends")
        previous_end = end


def plan_spans(
    bounds: Sequence[tuple[int, int]],
    scores: Sequence[float],
    budget: int,
    factors: Sequence[int] = ALLOWED_FACTORS,
    *,
    merge: bool = True,
) -> Plan:
    """Choose a factor (or drop) for each span under the soft-token budget.

    merge=False keeps one PlannedSpan per kept input span (useful to inspect decisions).
    """
    _check_inputs(bounds, scores, budget, factors)
    ladder = sorted(set(factors))
    drop = len(ladder)  # level index meaning "not included"
    lengths = [end - start for start, end in bounds]

    def cost(index: int, level: int) -> int:
        return 0 if level == drop else num_soft_tokens(lengths[index], ladder[level])

    if sum(lengths) <= budget and ladder[0] == 1:
        levels = [0] * len(bounds)
    else:
        ranked = sorted(range(len(bounds)), key=lambda i: (-scores[i], i))
        levels = [len(ladder) - 1] * len(bounds)
        total = sum(cost(i, levels[i]) for i in range(len(bounds)))
        for index in reversed(ranked):  # drop from the lowest score up until the floor fits
            if total <= budget:
                break
            total -= cost(index, levels[index])
            levels[index] = drop
        floor_level = 0
        for index in ranked:
            if levels[index] == drop:
                break
            current = cost(index, levels[index])
            for level in range(floor_level, levels[index]):
                if total - current + cost(index, level) <= budget:
                    total += cost(index, level) - current
                    levels[index] = level
                    break
            floor_level = levels[index]

    merged: list[PlannedSpan] = []
    for (start, end), level in zip(bounds, levels, strict=True):
        if level == drop:
            continue
        factor = ladder[level]
        last = merged[-1] if merged else None
        if merge and last is not None and last.end == start and last.factor == factor:
            merged[-1] = PlannedSpan(last.start, end, factor)
        else:
            merged.append(PlannedSpan(start, end, factor))
    if not merged:
        raise PlanError(
            f"budget={budget} cannot hold even one span at factor {ladder[-1]}: "
            f"the shortest span needs {min(cost(i, len(ladder) - 1) for i in range(len(bounds)))}"
        )
    return Plan(tuple(merged))
