"""Landmark windows (plugin/compression/windows.py): contiguous k=1 context around the best spans."""

from __future__ import annotations

import random

import pytest

from vllm_landmark.planning import (
    PlanError,
    paragraph_token_bounds,
    select_windows,
    windows_plan,
)


def tiling(seed: int, n_spans: int = 40) -> tuple[list[tuple[int, int]], list[float], int]:
    """Random spans that tile a document, with random scores."""
    rng = random.Random(seed)
    spans, start = [], 0
    for _ in range(n_spans):
        length = rng.randint(3, 40)
        spans.append((start, start + length))
        start += length
    return spans, [rng.random() for _ in spans], start


def check_windows(windows: list[tuple[int, int]], budget: int, n: int) -> None:
    assert sum(b - a for a, b in windows) <= budget
    for first, second in zip(windows, windows[1:], strict=False):
        assert first[1] < second[0], "windows must be in order, disjoint and not touching"
    assert all(0 <= a < b <= n for a, b in windows)


@pytest.mark.parametrize("seed", range(30))
def test_budget_order_and_best_span_on_random_documents(seed: int) -> None:
    spans, scores, n = tiling(seed)
    rng = random.Random(1000 + seed)
    budget, size = rng.randint(40, 400), rng.choice([16, 64, 128, 256])
    windows = select_windows(spans, scores, budget, size)
    check_windows(windows, budget, n)
    best = spans[max(range(len(spans)), key=lambda i: scores[i])]
    if best[1] - best[0] <= budget:
        assert any(a <= best[0] and best[1] <= b for a, b in windows)
    # the budget is spent, unless the whole document fits
    assert sum(b - a for a, b in windows) == min(budget, n)
    assert select_windows(spans, scores, budget, size) == windows  # deterministic


@pytest.mark.parametrize("seed", range(30))
def test_whole_span_windows_start_and_end_at_span_edges(seed: int) -> None:
    spans, scores, n = tiling(seed)
    rng = random.Random(2000 + seed)
    budget, size = rng.randint(40, 400), rng.choice([16, 64, 128, 256])
    windows = select_windows(spans, scores, budget, size, num_tokens=n, whole_spans=True)
    check_windows(windows, budget, n)
    edges = {b for span in spans for b in span}
    best = spans[max(range(len(spans)), key=lambda i: scores[i])]
    if best[1] - best[0] <= budget:
        assert all(a in edges and b in edges for a, b in windows), windows
        assert any(a <= best[0] and best[1] <= b for a, b in windows)
    else:  # the best sentence alone is over the budget: it is cut, nothing else fits
        assert windows == select_windows([best], [1.0], budget, size, num_tokens=n)


def test_whole_span_window_drops_the_cut_sentences() -> None:
    spans = [(0, 10), (10, 25), (25, 30), (30, 50), (50, 60)]
    scores = [0.0, 0.0, 1.0, 0.0, 0.0]
    # A 20-token window centred on (25, 30) is (18, 38): it cuts (10, 25) and (30, 50).
    assert select_windows(spans, scores, 20, 20) == [(18, 38)]
    # Whole sentences: (25, 30), then the best of the rest that fits whole: (0, 10) (ties go
    # to the earlier span); every other sentence is over the 5 tokens left: 15 tokens used.
    assert select_windows(spans, scores, 20, 20, whole_spans=True) == [(0, 10), (25, 30)]


def test_token_window_is_centred_on_the_span() -> None:
    spans = [(i * 10, i * 10 + 10) for i in range(20)]
    scores = [0.0] * 20
    scores[10] = 1.0  # tokens 100-110
    assert select_windows(spans, scores, 30, 30) == [(90, 120)]
    # at the document start the window is clipped and moved, keeping its size
    scores = [1.0] + [0.0] * 19
    assert select_windows(spans, scores, 30, 30) == [(0, 30)]


def test_paragraph_is_taken_whole_when_it_fits_the_window() -> None:
    spans = [(i * 10, i * 10 + 10) for i in range(20)]
    paragraphs = [(0, 50), (50, 120), (120, 200)]
    scores = [0.0] * 20
    scores[6] = 1.0  # tokens 60-70, in the paragraph 50-120 (70 tokens)
    assert select_windows(spans, scores, 70, 80, paragraphs) == [(50, 120)]
    # a paragraph larger than the window: a centred token window instead
    assert select_windows(spans, scores, 40, 40, paragraphs) == [(45, 85)]


def test_overlapping_windows_merge_and_cost_only_new_tokens() -> None:
    spans = [(i * 10, i * 10 + 10) for i in range(20)]
    scores = [0.0] * 20
    scores[5], scores[7] = 1.0, 0.9  # 50-60 and 70-80: windows of 40 overlap
    windows = select_windows(spans, scores, 60, 40)
    assert windows == [(35, 95)]  # (35, 75) + (55, 95) merged: 60 tokens
    check_windows(windows, 60, 200)


def test_best_span_longer_than_the_budget_is_cut_to_it() -> None:
    spans = [(0, 10), (10, 110), (110, 120)]
    windows = select_windows(spans, [0.1, 0.9, 0.2], 40, 16)
    assert windows == [(40, 80)]


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(PlanError):
        select_windows([(0, 5), (3, 8)], [1.0, 2.0], 10, 4)
    with pytest.raises(PlanError):
        select_windows([(0, 5)], [1.0, 2.0], 10, 4)
    with pytest.raises(PlanError):
        select_windows([(0, 5)], [1.0], 10, 0)
    assert select_windows([], [], 10, 4) == []


@pytest.mark.parametrize("seed", range(20))
def test_windows_plan_keeps_windows_raw_and_fits_the_budget(seed: int) -> None:
    spans, scores, n = tiling(seed)
    budget = 256
    windows = select_windows(spans, scores, budget * 3 // 4, 64)
    plan = windows_plan(windows, spans, scores, n, budget, factors=(4, 8, 16, 32))
    assert plan.soft_tokens <= budget
    raw = [(s.start, s.end) for s in plan.spans if s.factor == 1]
    assert raw == windows
    starts = [s.start for s in plan.spans]
    assert starts == sorted(starts)
    assert all(a.end <= b.start for a, b in zip(plan.spans, plan.spans[1:], strict=False))
    assert any(s.factor > 1 for s in plan.spans), "the remaining budget compresses the gaps"
    dropped = windows_plan(windows, spans, scores, n, budget)
    assert [(s.start, s.end) for s in dropped.spans] == windows
    assert all(s.factor == 1 for s in dropped.spans)


def test_windows_plan_gives_gaps_near_the_best_spans_smaller_factors() -> None:
    spans = [(i * 16, i * 16 + 16) for i in range(16)]
    scores = [float(i) for i in range(16)]  # later spans score higher
    plan = windows_plan([(240, 256)], spans, scores, 256, 16 + 24, factors=(2, 4, 8, 16, 32))
    factors = {s.start: s.factor for s in plan.spans}
    compressed = [s for s in plan.spans if s.factor > 1]
    assert compressed, factors
    first, last = compressed[0], compressed[-1]
    assert first.factor >= last.factor  # low scores (early) get the larger factors


def test_windows_plan_refuses_windows_over_the_budget() -> None:
    with pytest.raises(PlanError):
        windows_plan([(0, 50)], [(0, 50)], [1.0], 50, 40)


def test_paragraph_token_bounds_tile_the_tokens() -> None:
    text = "First para line.\nStill first.\n\nSecond para.\n\n\nThird."
    # one token per word-ish piece: starts of each whitespace-separated word
    starts = [
        i
        for i, ch in enumerate(text)
        if ch != " " and ch != "\n" and (i == 0 or text[i - 1] in " \n")
    ]
    bounds = paragraph_token_bounds(text, starts)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(starts)
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    words = [text[s:].split()[0] for s in starts]
    groups = [" ".join(words[a:b]) for a, b in bounds]
    assert groups == ["First para line. Still first.", "Second para.", "Third."]
