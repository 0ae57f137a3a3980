"""What the LLM gets in each arm of the QA comparison, all at one budget of context tokens.

Text arms paste text into the prompt (at most ``budget`` LLM tokens of it, plus the
``"\\n...\\n"`` separators between retrieved spans); plan arms send the document to the plugin
with an explicit ``[start, end, k]`` plan whose soft tokens are at most ``budget``.

=================  =====  ===============================================================
arm                kind   what the LLM gets
=================  =====  ===============================================================
``truncate``       text   the context middle-truncated (LongBench's rule)
``bm25``           text   the best BM25 spans (windows of 2 sentences), pasted
``m3``             text   the best spans of the project's M3 ranker (default retriever)
``oracle``         plan   one k=1 window of ``budget`` tokens centred on the gold sentence
``fragments``      plan   M3 sentence scores -> ``plan_spans`` (the first planner)
``plan``           plan   the server's plan: :func:`vllm_landmark.planning.plan_document`
                          (the planner's own call) on the fused M3 + BM25 scores,
                          compressing at ``factors`` (none: windows fill the budget; the
                          runner passes the served checkpoint's helpful ones)
``win-tN``         plan   :func:`select_windows` token windows of N tokens at k=1 in
                          ``raw_share`` of the budget, the rest compressed
                          (:func:`windows_plan`, factors 2-32)
``win-pN``         plan   the same, but a span's paragraph is taken whole when it has at
                          most N tokens
``win-tN-drop``    plan   windows fill the whole budget at k=1; the rest is dropped
``win-tN-only``    plan   the windows of ``win-tN`` (``raw_share`` of the budget) alone: the
                          rest is dropped (the reference of ``win-tN-kK``)
``win-tN-kK``      plan   the windows of ``win-tN``, the rest compressed at factor K only:
                          ``win-tN-kK`` minus ``win-tN-only`` is what K's soft tokens add
=================  =====  ===============================================================

``win-tN`` compresses at ``factors`` (default: all of :data:`COMPRESSION_FACTORS`; the runner
can pass the factors a checkpoint records as helpful, ``eval.suite.factor_help``); with no
factor it is ``win-tN-drop`` (windows fill the budget: nothing is worth compressing).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from eval.longbench.prompts import middle_truncate
from eval.longbench.retrieval import (
    SPAN_SEPARATOR,
    RetrievedSpan,
    select_spans,
    sentence_bounds,
)
from eval.suite.qa import word_count
from vllm_landmark.planning import (
    PlanSettings,
    ScoredSpans,
    landmark_windows_plan,
    paragraph_token_bounds,
    plan_document,
    plan_spans,
    select_windows,
    windows_plan,
)
from vllm_landmark.retrieval.lexical import bm25_rank_texts

COMPRESSION_FACTORS = (2, 4, 8, 16, 32)
_ARM = re.compile(
    r"^(?P<form>win|txt)-(?P<kind>[tps])(?P<size>\d+)"
    r"(?:-(?P<rest>drop|only|k(?P<k>\d+)))?(?P<rrf>-rrf)?$"
)
_BM25_TOKEN = re.compile(r"(?u)\b\w\w+\b")
#: The ``bm25`` arm's k1: the ``bm25s`` library's default, which the stored runs used.
BM25_ARM_K1 = 1.5


class Bm25Retriever:
    """BM25 (:func:`vllm_landmark.retrieval.lexical.bm25_rank_texts`) over windows of
    ``window`` consecutive sentences.

    Candidates step one sentence at a time, as the project's lexical baseline does; words are
    lower-cased ``\\w\\w+`` runs, no stemming, no stop words; every occurrence of a query word
    counts (the same scores as the ``bm25s`` library with its defaults, tested).
    """

    name = "bm25"

    def __init__(self, window: int = 2) -> None:
        self.window = window

    def rank(self, document: str, query: str) -> list[RetrievedSpan]:
        """Every candidate span with its BM25 score against ``query``."""
        sentences = sentence_bounds(document)
        if not sentences:
            return []
        spans = []
        for first in range(max(1, len(sentences) - self.window + 1)):
            last = min(len(sentences), first + self.window) - 1
            spans.append((sentences[first][0], sentences[last][1]))
        corpus = [_BM25_TOKEN.findall(document[s:e].lower()) for s, e in spans]
        scores = bm25_rank_texts(corpus, _BM25_TOKEN.findall(query.lower()), k1=BM25_ARM_K1)
        return [RetrievedSpan(s, e, float(v)) for (s, e), v in zip(spans, scores, strict=True)]


@dataclass
class DocumentView:
    """One item's document as the plan arms see it: tokens, paragraphs, scored sentences."""

    token_ids: list[int]
    paragraphs: list[tuple[int, int]]
    spans: list[tuple[int, int]]
    scores: list[float]
    evidence: tuple[int, int]
    answer: tuple[int, int]
    fused_scores: list[float] | None = None  # the scores with lexical fusion (``-rrf`` arms)


def token_range(starts: Sequence[int], ends: Sequence[int], low: int, high: int) -> tuple[int, int]:
    """The tokens that overlap characters ``[low, high)``."""
    first = next(i for i in range(len(starts)) if ends[i] > low)
    last = max(i for i in range(len(starts)) if starts[i] < high)
    return first, last + 1


def plugin_token_offsets(
    tokenizer: Any, text: str, name: str
) -> tuple[list[int], list[tuple[int, int]]]:
    """A document's LLM tokens as the plugin tokenizes it, with each token's character range
    (ValueError naming ``name`` if the offset tokenization differs from the plugin's)."""
    from vllm_landmark.document.tokens import encode_document

    ids = list(encode_document(tokenizer, text))
    enc = tokenizer(
        text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True
    )
    if list(enc["input_ids"]) != ids:
        raise ValueError(f"{name}: offset tokenization differs from the plugin's")
    return ids, [(int(a), int(b)) for a, b in enc["offset_mapping"]]


def document_view(item: dict[str, Any], tokenizer: Any, ranker: Any) -> DocumentView:
    """Tokens (as the plugin tokenizes the document), paragraphs and M3 sentence scores."""
    context = item["context"]
    ids, offsets = plugin_token_offsets(tokenizer, context, item["id"])
    starts = [a for a, _ in offsets]
    ends = [b for _, b in offsets]
    scored = ranker.score_all_spans(context, item["question"], llm_tokenizer=tokenizer)
    fused = ranker.score_all_spans(
        context, item["question"], llm_tokenizer=tokenizer, lexical_fusion=True
    )
    if scored.llm_num_tokens != len(ids):
        raise ValueError(f"{item['id']}: the retriever saw {scored.llm_num_tokens} LLM tokens")
    ranges = scored.llm_token_offsets.tolist()
    plain = ScoredSpans.from_ranges(ranges, scored.score.tolist())
    fused_spans = ScoredSpans.from_ranges(ranges, fused.score.tolist())
    spans, scores, fused_scores = list(plain.bounds), list(plain.values), list(fused_spans.values)
    a_start = item["answer_start"]
    return DocumentView(
        token_ids=ids,
        paragraphs=paragraph_token_bounds(context, starts),
        spans=spans,
        scores=scores,
        fused_scores=fused_scores,
        evidence=token_range(starts, ends, *item["evidence"]),
        answer=token_range(starts, ends, a_start, a_start + len(item["answer_word"])),
    )


@dataclass
class ArmInput:
    """One arm's context for one item: pasted ``text`` or a document ``plan``."""

    arm: str
    text: str | None = None
    plan: list[list[int]] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def is_plan_arm(arm: str) -> bool:
    """Whether the arm sends the document with a plan (else it pastes text)."""
    match = _ARM.match(arm)
    return arm in ("oracle", "fragments", "plan") or (match is not None and match["form"] == "win")


def needs_view(arm: str) -> bool:
    """Whether the arm is built from the document view (plan arms and ``txt-`` arms)."""
    return is_plan_arm(arm) or _ARM.match(arm) is not None


def check_arm(arm: str) -> None:
    """Raise ValueError for an arm name this module does not know."""
    if arm not in ("truncate", "bm25", "m3") and not needs_view(arm):
        raise ValueError(
            f"unknown arm {arm!r}: truncate, bm25, m3, oracle, fragments, plan, win-tN, win-pN, "
            "win-tN-drop, win-tN-only, win-tN-kK (the same with pN and sN, each optionally "
            "ending in -rrf), and txt- for any win- arm"
        )
    match = _ARM.match(arm)
    if match is not None and match["k"] is not None and int(match["k"]) not in COMPRESSION_FACTORS:
        raise ValueError(f"arm {arm!r}: K must be one of {COMPRESSION_FACTORS}")


def _fused_scores(view: DocumentView, arm: str) -> list[float]:
    """The view's fused (M3 + BM25) scores, which ``arm`` needs."""
    if view.fused_scores is None:
        raise ValueError(f"arm {arm!r} needs the document view's fused scores")
    return view.fused_scores


def plan_arm(
    arm: str,
    view: DocumentView,
    budget: int,
    raw_share: float,
    factors: Sequence[int] = COMPRESSION_FACTORS,
) -> list[list[int]]:
    """The ``[start, end, k]`` plan of a plan arm (``factors``: what ``win-tN`` compresses at)."""
    n = len(view.token_ids)
    if arm == "oracle":
        windows = select_windows([view.evidence], [1.0], budget, budget, num_tokens=n)
        return [[a, b, 1] for a, b in windows]
    if arm == "plan":  # the planner's own call, as the server makes it
        settings = PlanSettings((1, *factors), (1, *factors), raw_share=raw_share)
        scores = ScoredSpans(tuple(view.spans), tuple(_fused_scores(view, arm)))
        plan, _ = plan_document(n, budget, settings, scores)
        return [list(t) for t in plan.as_triples()]
    if arm == "fragments":
        plan = plan_spans(view.spans, view.scores, budget, (1, *COMPRESSION_FACTORS))
        return [list(t) for t in plan.as_triples()]
    match = _ARM.match(arm)
    if match is None:
        raise ValueError(f"not a plan arm: {arm!r}")
    size = int(match["size"])
    rest = match["rest"]
    scores = _fused_scores(view, arm) if match["rrf"] else view.scores
    paragraphs = view.paragraphs if match["kind"] == "p" else None
    whole_spans = match["kind"] == "s"
    if rest == "only":  # the windows of win-tN alone: their share of the budget, no gaps
        raw_budget = int(budget * raw_share)
        windows = select_windows(view.spans, scores, raw_budget, size, paragraphs, n, whole_spans)
        plan = windows_plan(windows, view.spans, scores, n, budget, ())
    else:  # the server's rule; no factor to compress at: the windows take the whole budget
        if rest == "drop":
            factors = ()
        elif match["k"] is not None:
            factors = (int(match["k"]),)
        plan = landmark_windows_plan(
            view.spans,
            scores,
            n,
            budget,
            factors,
            window_tokens=size,
            raw_share=raw_share,
            paragraphs=paragraphs,
            whole_spans=whole_spans,
        )
    return [list(t) for t in plan.as_triples()]


def arm_input(
    arm: str,
    item: dict[str, Any],
    tokenizer: Any,
    budget: int,
    *,
    view: DocumentView | None = None,
    m3: Any = None,
    raw_share: float = 0.75,
    factors: Sequence[int] = COMPRESSION_FACTORS,
) -> ArmInput:
    """The context of ``arm`` for ``item`` (``view`` for plan arms, ``m3`` for the m3 arm)."""
    check_arm(arm)
    context = item["context"]
    if arm == "truncate":
        text, _, _ = middle_truncate(context, tokenizer, budget)
        found = word_count(text, item["answer_word"]) > 0
        return ArmInput(arm, text=text, info={"answer_in_context": found})
    if arm in ("bm25", "m3"):
        retriever = Bm25Retriever() if arm == "bm25" else m3
        ranked = retriever.rank(context, item["question"])
        spans = select_spans(context, ranked, tokenizer, budget)
        text = SPAN_SEPARATOR.join(context[s.start : s.end].strip() for s in spans)
        low = item["answer_start"]
        covered = any(s.start <= low and low + len(item["answer_word"]) <= s.end for s in spans)
        return ArmInput(
            arm,
            text=text,
            info={"answer_in_context": covered, "spans": [[s.start, s.end] for s in spans]},
        )
    if view is None:
        raise ValueError(f"arm {arm!r} needs the document view")
    if not is_plan_arm(arm):  # txt-: the windows of the win- arm, pasted
        plan = plan_arm("win" + arm[3:], view, budget, raw_share, factors)
        windows = [(s, e) for s, e, k in plan if k == 1]
        text = SPAN_SEPARATOR.join(
            tokenizer.decode(view.token_ids[s:e]).strip() for s, e in windows
        )
        a_low, a_high = view.answer
        covered = any(s <= a_low and a_high <= e for s, e in windows)
        return ArmInput(arm, text=text, info={"answer_in_context": covered, "windows": windows})
    plan = plan_arm(arm, view, budget, raw_share, factors)
    a_low, a_high = view.answer
    raw = any(s <= a_low and a_high <= e and k == 1 for s, e, k in plan)
    return ArmInput(
        arm,
        plan=plan,
        info={
            "answer_in_context": raw,
            "raw_tokens": sum(e - s for s, e, k in plan if k == 1),
            "soft_tokens": sum(-(-(e - s) // k) for s, e, k in plan),
            "windows": sum(1 for s, e, k in plan if k == 1),
        },
    )
