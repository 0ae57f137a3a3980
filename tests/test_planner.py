"""Properties of the planner, checked on many seeded random documents."""

from __future__ import annotations

import random

import pytest

from vllm_landmark.planning import PlanError, plan_spans, uniform_plan

FACTORS = (1, 2, 4, 8, 16, 32)


def random_case(rng: random.Random) -> tuple[list[tuple[int, int]], list[float], int]:
    bounds, position = [], 0
    for _ in range(rng.randint(1, 40)):
        position += rng.choice([0, 0, 0, rng.randint(1, 5)])  # sometimes gaps
        length = rng.randint(1, 300)
        bounds.append((position, position + length))
        position += length
    scores = [round(rng.uniform(-1, 1), rng.choice([1, 3])) for _ in bounds]  # ties happen
    budget = rng.randint(1, position + 50)
    return bounds, scores, budget


def level(factor: int | None) -> int:
    return 10**6 if factor is None else factor


@pytest.mark.parametrize("seed", range(400))
def test_plan_properties(seed: int) -> None:
    rng = random.Random(seed)
    bounds, scores, budget = random_case(rng)
    factors = tuple(sorted(rng.sample(FACTORS, rng.randint(1, 6)))) if seed % 3 else FACTORS
    try:
        plan = plan_spans(bounds, scores, budget, factors, merge=False)
    except PlanError as error:
        # Only allowed when not even one span fits at the largest factor.
        largest = max(factors)
        assert min(-(-(e - s) // largest) for s, e in bounds) > budget, error
        return
    assert plan.soft_tokens <= budget
    starts = [span.start for span in plan.spans]
    assert starts == sorted(starts)
    assert all(span.factor in factors for span in plan.spans)
    chosen = {(span.start, span.end): span.factor for span in plan.spans}
    per_span = [chosen.get(b) for b in bounds]
    for i in range(len(bounds)):
        for j in range(len(bounds)):
            if scores[i] > scores[j]:
                assert level(per_span[i]) <= level(per_span[j]), (i, j, per_span)
    assert plan_spans(bounds, scores, budget, factors, merge=False) == plan  # deterministic
    merged = plan_spans(bounds, scores, budget, factors)
    assert merged.soft_tokens <= plan.soft_tokens and merged.kept_tokens == plan.kept_tokens


def test_enough_budget_keeps_everything_raw() -> None:
    bounds = [(0, 10), (10, 25), (30, 31)]
    plan = plan_spans(bounds, [0.1, 0.9, 0.5], budget=26)
    assert [(s.start, s.end, s.factor) for s in plan.spans] == [(0, 25, 1), (30, 31, 1)]


def test_relevant_span_near_raw_rest_compressed() -> None:
    bounds = [(i * 100, (i + 1) * 100) for i in range(10)]
    scores = [0.0] * 10
    scores[6] = 1.0
    plan = plan_spans(bounds, scores, budget=140, merge=False)
    factors = {span.start: span.factor for span in plan.spans}
    assert factors[600] == 1
    assert all(factors[s] >= 8 for s in factors if s != 600)
    assert plan.soft_tokens <= 140


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(PlanError, match="span list is empty"):
        plan_spans([], [], 10)
    with pytest.raises(PlanError, match="2 scores for 1 spans"):
        plan_spans([(0, 5)], [1.0, 2.0], 10)
    with pytest.raises(PlanError, match="budget=0"):
        plan_spans([(0, 5)], [1.0], 0)
    with pytest.raises(PlanError, match="factors"):
        plan_spans([(0, 5)], [1.0], 5, factors=(3,))
    with pytest.raises(PlanError, match="before span 0 ends"):
        plan_spans([(0, 5), (4, 8)], [1.0, 1.0], 5)
    with pytest.raises(PlanError, match="cannot hold even one span"):
        plan_spans([(0, 100)], [1.0], 2, factors=(1, 32))
    with pytest.raises(PlanError, match="at least one token"):
        uniform_plan(0, 1)
