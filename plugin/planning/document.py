"""The one planning function: the documents of a prompt, planned into the room the window leaves.

`plan_prompt` is pure: (each document's tokens, span scores and request overrides, the prompt's
text tokens, the window, the answer's reserve, `PlanSettings`) -> one `PlannedDocument` per
document. The server, the offline engine, the proxy, the evaluation's plan arm and the
embedder recipe's plan stage all plan through it (or `plan_document`, its one-document step).

The budget rule (no `--landmark-budget`): a document is read whole at k=1 whenever the whole
prompt fits the window: text tokens + every document's tokens + the answer's reserve <= the
window. Otherwise the room left (window - text - reserve) is shared between the documents by
water-filling (`share_room`). `--landmark-budget` caps each document's share. A document over
its share is planned into it (`plan_document`): with span scores, windows of whole sentences
around the best spans stay raw (k=1, `windows.landmark_windows_plan`) and the gaps between them
are compressed at the factors the embedder's record says help (`PlanSettings.plan_factors`) or
left out; without scores, the middle goes first (head and tail kept, as LongBench's middle
truncation does), compressed where factors help or left out.

`needs_scores` says, with the same arithmetic, which documents `plan_prompt` would read the
scores of, so the retriever runs once, exactly where it is needed, before planning.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .ladder import plan_spans
from .plan import Plan, PlanError, head_and_tail, num_soft_tokens, uniform_plan
from .scores import ScoredSpans, position_scores
from .windows import RAW_SHARE, landmark_windows_plan

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class PlanSettings:
    """What the planner may do, from the configuration and the embedder's decision record.

    factors: what a request's explicit factor or plan may use (every factor served);
    plan_factors: what the planner chooses by itself (1 plus the factors the embedder's record
    says help); budget: the cap on one document's soft tokens (`--landmark-budget`);
    factor: one factor forced on every document over its share (`--landmark-factor`);
    raw_share: the share of a document's room its raw windows take when gaps are compressed;
    window_tokens: the size of a window (None: `windows.window_tokens_for` the room).
    """

    factors: tuple[int, ...] = (1,)
    plan_factors: tuple[int, ...] = (1,)
    budget: int | None = None
    factor: int | None = None
    raw_share: float = RAW_SHARE
    window_tokens: int | None = None

    @classmethod
    def from_config(
        cls, config: Any, served: Sequence[int], helpful: Sequence[int]
    ) -> PlanSettings:
        """Settings from a `LandmarkConfig` and the embedder's served and helpful factors."""
        served = (1, *served)
        factors = tuple(k for k in config.factors if k in served) or (1,)
        plan_factors = tuple(k for k in factors if k in (1, *helpful)) or factors
        return cls(factors, plan_factors, config.budget, config.factor)

    @property
    def compress_factors(self) -> tuple[int, ...]:
        return tuple(k for k in self.plan_factors if k > 1)


@dataclass(frozen=True)
class DocumentToPlan:
    """One document of a prompt as the planner reads it.

    position: the token index of the prompt (before expansion) where it goes; scores: the
    retriever's, when there are any; factor / plan: set by the request (then used as is).
    """

    token_ids: tuple[int, ...]
    position: int = 0
    scores: ScoredSpans | None = None
    factor: int | None = None
    plan: tuple[Triple, ...] | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def is_free(self) -> bool:
        """Whether the planner decides (the request gave neither a factor nor a plan)."""
        return self.factor is None and self.plan is None

    @property
    def fixed_soft_tokens(self) -> int:
        """Soft tokens of the request's own factor or plan (0 when the planner decides)."""
        if self.factor is not None:
            return num_soft_tokens(self.num_tokens, self.factor)
        if self.plan is not None:
            return Plan.from_triples(self.plan).soft_tokens
        return 0


@dataclass(frozen=True)
class PlannedDocument:
    """What the LLM reads of one document, and why.

    reason: "fits" (the whole prompt fits the window: read at k=1), "window" (planned into
    the room the window leaves), "budget" (planned into --landmark-budget), "factor" / "plan"
    (given by the request). selection: "whole", "retriever" (question-ranked spans),
    "position" (head and tail first, middle out), "uniform" (one factor for everything) or
    "given". position: token index of the prompt (before expansion) where the document goes.
    retrieval_rounds: the retriever's rounds behind a "retriever" selection (else 0).
    """

    token_ids: tuple[int, ...]
    plan: Plan
    reason: str
    selection: str
    position: int
    retrieval_rounds: int = 0

    @cached_property
    def cache_key(self) -> str:
        """Identity of (document, plan): vLLM's multimodal and prefix caches key on it."""
        digest = hashlib.sha256()
        digest.update(b"landmark-document-v2")
        digest.update(",".join(map(str, self.token_ids)).encode())
        digest.update(repr(self.plan.as_triples()).encode())
        return digest.hexdigest()

    @property
    def is_whole(self) -> bool:
        """Read whole at k=1 (token-identical to pasting the document)."""
        return self.selection == "whole" and self.plan.as_triples() == [(0, len(self.token_ids), 1)]

    def summary(self) -> dict[str, Any]:
        """The document's row of the response's `landmark` block."""
        return {
            "raw_tokens": len(self.token_ids),
            "kept_tokens": self.plan.kept_tokens,
            "factors": sorted({span.factor for span in self.plan.spans}),
            "spans": len(self.plan.spans),
            "injected_tokens": self.plan.soft_tokens,
            "reason": self.reason,
            "selection": self.selection,
            "retrieval_rounds": self.retrieval_rounds,
        }


def share_room(lengths: Sequence[int], room: int, cap: int | None) -> list[int]:
    """Water-filling: each document's share of `room`, never above its length or `cap`."""
    wants = [min(n, cap) if cap is not None else n for n in lengths]
    shares = [0] * len(wants)
    pending = sorted(range(len(wants)), key=lambda i: (wants[i], i))
    left = max(0, room)
    while pending:
        fair = left // len(pending)
        index = pending[0]
        if wants[index] <= fair:
            shares[index] = wants[index]
            left -= wants[index]
            pending.pop(0)
            continue
        for position, index in enumerate(pending):
            shares[index] = fair + (1 if position < left - fair * len(pending) else 0)
        break
    return shares


class NoRoomError(PlanError):
    """The other messages and the answer's reserve leave a document no room."""


def plan_document(
    num_tokens: int,
    share: int,
    settings: PlanSettings,
    scores: ScoredSpans | None = None,
    *,
    paragraphs: Sequence[tuple[int, int]] | None = None,
) -> tuple[Plan, str]:
    """One document of `num_tokens` tokens planned into `share` soft tokens: (plan, selection).

    `paragraphs`: grow windows to whole paragraphs that fit a window (the proxy's text rule).
    Raises `NoRoomError` when `share` < 1 and `PlanError` when nothing fits.
    """
    if share < 1:
        raise NoRoomError(f"no room for the document (a share of {share} tokens)")
    simple = _plan_without_scores(num_tokens, share, settings)
    if simple is not None:
        return simple
    compress = settings.compress_factors
    if scores is not None and scores.bounds:  # windows around the best spans, then the gaps
        plan = landmark_windows_plan(
            scores.bounds,
            scores.values,
            num_tokens,
            share,
            compress,
            window_tokens=settings.window_tokens,
            raw_share=settings.raw_share,
            paragraphs=paragraphs,
        )
        return plan, "retriever"
    if not compress:
        return head_and_tail(num_tokens, share), "position"
    if settings.factor is None:
        fitting = [k for k in settings.plan_factors if num_soft_tokens(num_tokens, k) <= share]
        if fitting:
            return uniform_plan(num_tokens, fitting[0]), "uniform"
    positions = position_scores(num_tokens)
    return plan_spans(positions.bounds, positions.values, share, settings.plan_factors), "position"


def _plan_without_scores(
    num_tokens: int, share: int, settings: PlanSettings
) -> tuple[Plan, str] | None:
    """The plan when scores cannot change it: the document fits its share, or the forced
    factor does; None otherwise (then `plan_document` reads the scores)."""
    if num_tokens <= share and 1 in settings.factors:
        return uniform_plan(num_tokens, 1), "whole"
    if settings.factor is not None and num_soft_tokens(num_tokens, settings.factor) <= share:
        return uniform_plan(num_tokens, settings.factor), "uniform"
    return None


@dataclass(frozen=True)
class _Room:
    shares: dict[int, int]  # index of each free document -> its share
    everything_fits: bool


def _room(
    documents: Sequence[DocumentToPlan],
    text_tokens: int,
    window: int,
    reserve: int,
    settings: PlanSettings,
) -> _Room:
    room = window - text_tokens - reserve
    room -= sum(d.fixed_soft_tokens for d in documents if not d.is_free)
    free = [i for i, d in enumerate(documents) if d.is_free]
    lengths = [documents[i].num_tokens for i in free]
    cap = settings.budget
    fits = sum(lengths) <= room and (cap is None or max(lengths, default=0) <= cap)
    return _Room(dict(zip(free, share_room(lengths, room, cap), strict=True)), fits)


def needs_scores(
    documents: Sequence[DocumentToPlan],
    text_tokens: int,
    window: int,
    reserve: int,
    settings: PlanSettings,
) -> list[bool]:
    """For each document, whether `plan_prompt` would read its span scores."""
    room = _room(documents, text_tokens, window, reserve, settings)
    if room.everything_fits and 1 in settings.factors:
        return [False] * len(documents)
    out = []
    for index, document in enumerate(documents):
        share = room.shares.get(index)
        out.append(
            share is not None
            and share >= 1
            and _plan_without_scores(document.num_tokens, share, settings) is None
        )
    return out


def plan_prompt(
    documents: Sequence[DocumentToPlan],
    text_tokens: int,
    window: int,
    reserve: int,
    settings: PlanSettings,
) -> list[PlannedDocument]:
    """Every document of one prompt planned under the budget rule (module docstring).

    `text_tokens`: the prompt's tokens without the documents; `reserve`: tokens kept for the
    answer. Raises `NoRoomError` when a document gets no room, `PlanError` when a plan fails.
    """
    room = _room(documents, text_tokens, window, reserve, settings)
    planned = []
    for index, document in enumerate(documents):
        n = document.num_tokens
        if document.factor is not None:
            plan, reason, selection = uniform_plan(n, document.factor), "factor", "uniform"
        elif document.plan is not None:
            plan, reason, selection = Plan.from_triples(document.plan), "plan", "given"
        elif room.everything_fits and 1 in settings.factors:
            plan, reason, selection = uniform_plan(n, 1), "fits", "whole"
        else:
            share = room.shares[index]
            if share < 1:
                raise NoRoomError(
                    "the prompt leaves no room for the document: the other messages and the "
                    f"answer's reserve already fill the model window of {window} tokens; "
                    "lower max_tokens, shorten the messages, or raise --max-model-len"
                )
            plan, selection = plan_document(n, share, settings, document.scores)
            if n <= share:
                reason = "fits"
            elif settings.budget is not None and share == settings.budget:
                reason = "budget"
            else:
                reason = "window"
        rounds = document.scores.rounds if selection == "retriever" and document.scores else 0
        planned.append(
            PlannedDocument(document.token_ids, plan, reason, selection, document.position, rounds)
        )
    return planned
