"""Landmark windows: contiguous raw context around the best-scoring spans.

The retriever scores short spans (runs of 1-3 sentences). Pasting those spans alone gives the
LLM fragments; this module grows each selected span into a *window* instead:

- to its paragraph, when the paragraph (or the paragraphs the span touches) fits in
  ``window_tokens``;
- otherwise to a token window of ``window_tokens`` centred on the span (clipped to the
  document), shrunk to whole spans (sentences) with ``whole_spans``, the planner's default.

The planner's windows are short (:data:`WINDOW_TOKENS`, :func:`window_tokens_for`): the
budget is spent on many places of the document, a few sentences each, rather than a few long
stretches; neighbouring windows merge, so a passage that keeps scoring is still read whole.

Windows are chosen greedily from the best-scoring span down; a window that overlaps or touches
one already chosen is merged with it and costs only its new tokens. Selection stops adding when
the next window does not fit; a window that does not fit whole is shrunk to the tokens left
(centred on its span), so the budget is spent. :func:`windows_plan` then turns the windows
(k=1) plus whatever budget remains into a full :class:`~.planner.Plan`: the gaps between
windows are compressed by :func:`~.planner.plan_spans` at the given factors, or dropped.

All offsets are LLM token offsets ``[start, end)`` into the document. Guarantees (tested):
windows are in document order, disjoint and not touching; their total length never exceeds the
budget; the best-scoring span is inside a window whenever it fits the budget; the same inputs
give the same windows.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence

from .ladder import plan_spans
from .plan import Plan, PlanError, PlannedSpan

Bounds = tuple[int, int]


def _check_spans(spans: Sequence[Bounds], scores: Sequence[float]) -> None:
    if len(spans) != len(scores):
        raise PlanError(f"{len(scores)} scores for {len(spans)} spans")
    previous_end = 0
    for index, (start, end) in enumerate(spans):
        if not 0 <= start < end:
            raise PlanError(f"span {index} = ({start}, {end}) is empty or negative")
        if start < previous_end:
            raise PlanError(f"span {index} starts at {start}, before span {index - 1} ends")
        previous_end = end


def _grow(
    span: Bounds, window_tokens: int, num_tokens: int, paragraphs: Sequence[Bounds] | None
) -> Bounds:
    """The window of one span: its paragraph(s) if they fit ``window_tokens``, else centred."""
    start, end = span
    if end - start >= window_tokens:
        return span
    if paragraphs:
        touched = [(a, b) for a, b in paragraphs if a < end and start < b]
        if touched:
            low, high = min(start, touched[0][0]), max(end, touched[-1][1])
            if high - low <= window_tokens:
                return low, min(high, num_tokens)
    return _centred(span, window_tokens, num_tokens)


def _centred(span: Bounds, size: int, num_tokens: int) -> Bounds:
    """``size`` tokens centred on ``span`` inside ``[0, num_tokens)`` (the span if longer)."""
    start, end = span
    if end - start >= size:
        middle = (start + end) // 2
        low = max(start, middle - size // 2)
        return low, low + size
    low = max(0, start - (size - (end - start)) // 2)
    high = min(num_tokens, low + size)
    return max(0, high - size), high


def _snap(window: Bounds, span: Bounds, edges: Sequence[int]) -> Bounds:
    """``window`` shrunk to whole spans: its ends moved inward to the nearest span edges
    (``edges``: sorted), never past ``span`` (a window that cuts into ``span`` is kept)."""
    low, high = window
    start, end = span
    if not (low <= start and end <= high):
        return window
    low = edges[bisect.bisect_left(edges, low)]
    high = edges[bisect.bisect_right(edges, high) - 1]
    return min(low, start), max(high, end)


def _union_cost(chosen: list[Bounds], window: Bounds) -> tuple[Bounds, list[int], int]:
    """Merging ``window`` into ``chosen``: the merged bounds, indices absorbed, tokens added."""
    low, high = window
    absorbed = [i for i, (a, b) in enumerate(chosen) if a <= high and low <= b]
    if absorbed:
        low = min(low, chosen[absorbed[0]][0])
        high = max(high, chosen[absorbed[-1]][1])
    added = (high - low) - sum(chosen[i][1] - chosen[i][0] for i in absorbed)
    return (low, high), absorbed, added


def select_windows(
    spans: Sequence[Bounds],
    scores: Sequence[float],
    budget: int,
    window_tokens: int,
    paragraphs: Sequence[Bounds] | None = None,
    num_tokens: int | None = None,
    whole_spans: bool = False,
) -> list[Bounds]:
    """k=1 windows around the best spans: merged, in document order, at most ``budget`` tokens.

    ``spans``: scored spans in document order (LLM token offsets, disjoint); ``scores``: one per
    span, higher is better; ``budget``: raw tokens the windows may hold in all;
    ``window_tokens``: the size of a token window (and the largest paragraph taken whole);
    ``paragraphs``: optional paragraph bounds in document order (token offsets);
    ``num_tokens``: the document length (default: the end of the last span or paragraph);
    ``whole_spans``: shrink each window to whole spans (sentences), so no window starts or
    ends inside one (a span longer than the tokens left is skipped for a shorter one; only
    a best span longer than the whole budget is cut). Ties in score go to the earlier span.
    """
    _check_spans(spans, scores)
    if budget < 0:
        raise PlanError(f"budget={budget} must not be negative")
    if window_tokens < 1:
        raise PlanError(f"window_tokens={window_tokens} must be at least 1")
    if not spans:
        return []
    ends = [spans[-1][1]] + ([paragraphs[-1][1]] if paragraphs else [])
    total = num_tokens if num_tokens is not None else max(ends)
    if total < spans[-1][1]:
        raise PlanError(f"num_tokens={total} ends before the last span ({spans[-1][1]})")
    edges = sorted({b for span in spans for b in span}) if whole_spans else []
    chosen: list[Bounds] = []
    used = 0
    for index in sorted(range(len(spans)), key=lambda i: (-scores[i], i)):
        left = budget - used
        if left <= 0:
            break
        window = _grow(spans[index], window_tokens, total, paragraphs)
        if whole_spans:
            window = _snap(window, spans[index], edges)
        merged, absorbed, added = _union_cost(chosen, window)
        if added > left:  # shrink to what is left, centred on the span
            start, end = spans[index]
            if whole_spans and end - start > left and chosen:
                continue  # a sentence over what is left: a shorter one may fit whole
            window = _centred(spans[index], left, total)
            if whole_spans:
                window = _snap(window, spans[index], edges)
            merged, absorbed, added = _union_cost(chosen, window)  # added <= left now
        if added <= 0:
            continue
        for i in reversed(absorbed):
            del chosen[i]
        bisect.insort(chosen, merged)
        used += added
    return chosen


def _gap_pieces(
    windows: Sequence[Bounds], spans: Sequence[Bounds], scores: Sequence[float], num_tokens: int
) -> tuple[list[Bounds], list[float]]:
    """The tokens outside every window, cut at span bounds, each with its span's score."""
    floor = min(scores) if scores else 0.0
    cuts = sorted({0, num_tokens} | {b for span in spans for b in span if 0 < b < num_tokens})
    pieces: list[Bounds] = []
    values: list[float] = []
    edges = [0] + [b for w in windows for b in w] + [num_tokens]
    for gap_start, gap_end in zip(edges[0::2], edges[1::2], strict=True):
        points = [gap_start, *(c for c in cuts if gap_start < c < gap_end), gap_end]
        for low, high in zip(points, points[1:], strict=False):
            if high <= low:
                continue
            owner = bisect.bisect_right(spans, (low, num_tokens + 1)) - 1
            inside = owner >= 0 and spans[owner][0] <= low < spans[owner][1]
            pieces.append((low, high))
            values.append(scores[owner] if inside else floor)
    return pieces, values


def windows_plan(
    windows: Sequence[Bounds],
    spans: Sequence[Bounds],
    scores: Sequence[float],
    num_tokens: int,
    budget: int,
    factors: Sequence[int] = (),
) -> Plan:
    """A full plan: ``windows`` at k=1, the rest compressed at ``factors`` or dropped.

    ``windows``: from :func:`select_windows` (disjoint, in order); ``spans``/``scores``: the
    same scored spans, which rank the gaps for compression; ``num_tokens``: the document
    length; ``budget``: soft tokens for the whole plan (windows included); ``factors``: the
    factors allowed for the gaps (e.g. ``(8, 16, 32)``); empty drops everything outside the
    windows. Raises :class:`PlanError` when the windows alone exceed the budget or nothing
    is kept.
    """
    _check_spans(spans, scores)
    raw = 0
    previous_end = 0
    for start, end in windows:
        if not previous_end <= start < end <= num_tokens:
            raise PlanError(f"window ({start}, {end}) is empty, out of order or past the end")
        previous_end = end
        raw += end - start
    if raw > budget:
        raise PlanError(f"the windows hold {raw} tokens, over the budget of {budget}")
    planned = [PlannedSpan(start, end, 1) for start, end in windows]
    left = budget - raw
    if factors and left > 0:
        pieces, values = _gap_pieces(windows, spans, scores, num_tokens)
        if pieces:
            try:
                gaps = plan_spans(pieces, values, left, factors)
                planned.extend(gaps.spans)
            except PlanError:
                pass  # not even one gap piece fits at the largest factor: drop the gaps
    planned.sort(key=lambda s: s.start)
    merged: list[PlannedSpan] = []
    for span in planned:
        last = merged[-1] if merged else None
        if last is not None and last.end == span.start and last.factor == span.factor:
            merged[-1] = PlannedSpan(last.start, span.end, span.factor)
        else:
            merged.append(span)
    if not merged:
        raise PlanError("the plan keeps nothing: give windows or a budget for compression")
    return Plan(tuple(merged))


#: The window size in tokens, whatever the document's length or the budget (chosen on the QA
#: dev splits, eval/results/qa_dev_cross_sizes_16k.notes.md: quoted and cross-language questions,
#: 2K-16K documents, budgets 1,024 and 2,048): about two sentences around each selected one, so
#: the budget reaches many places; a window never exceeds the budget it is taken from.
WINDOW_TOKENS = 64
#: With factors to compress at, the windows take this share of the budget and the gaps between
#: them the rest; with none, the windows take the whole budget.
RAW_SHARE = 0.75


def window_tokens_for(budget: int) -> int:
    """The planner's window size for windows that share ``budget`` tokens."""
    if budget < 1:
        raise PlanError(f"budget={budget} must be positive")
    return min(WINDOW_TOKENS, budget)


def landmark_windows_plan(
    spans: Sequence[Bounds],
    scores: Sequence[float],
    num_tokens: int,
    budget: int,
    factors: Sequence[int] = (),
    *,
    window_tokens: int | None = None,
    raw_share: float = RAW_SHARE,
    paragraphs: Sequence[Bounds] | None = None,
    whole_spans: bool = True,
) -> Plan:
    """The retriever-guided plan: windows around the best spans at k=1, then the gaps.

    ``factors``: the k>1 factors the gaps may be compressed at (an embedder's helpful ones);
    none: the windows fill ``budget`` and everything else is dropped. ``window_tokens``: the
    window size (default :func:`window_tokens_for` the windows' budget);
    ``paragraphs``: grow windows to paragraphs that fit; ``whole_spans``: windows of whole
    spans (see :func:`select_windows`).
    """
    compress = tuple(k for k in factors if k > 1)
    raw_budget = int(budget * raw_share) if compress else budget
    if window_tokens is None:
        window_tokens = window_tokens_for(max(raw_budget, 1))
    windows = select_windows(
        spans, scores, raw_budget, window_tokens, paragraphs, num_tokens, whole_spans
    )
    return windows_plan(windows, spans, scores, num_tokens, budget, compress)


_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")


def paragraph_token_bounds(text: str, token_starts: Sequence[int]) -> list[Bounds]:
    """Paragraphs (text separated by blank lines) as token ranges that tile the document.

    ``token_starts``: the character offset where each LLM token starts (from the tokenizer's
    offset mapping), non-decreasing. A token belongs to the paragraph its first character is
    in; tokens of a blank-line separator go to the paragraph before it.
    """
    n = len(token_starts)
    if n == 0:
        return []
    para_starts = [0] + [m.end() for m in _PARAGRAPH_BREAK.finditer(text)]
    firsts = sorted({bisect.bisect_left(token_starts, c) for c in para_starts if c > 0})
    edges = [0, *(f for f in firsts if 0 < f < n), n]
    return [(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]
