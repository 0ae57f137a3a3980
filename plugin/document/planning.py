"""One planned document, from the request to the model.

A document is read and tokenized once, where the request is parsed (`DocumentPlanner.parse`,
giving a `ParsedDocument`); once the rest of the prompt is tokenized, `DocumentPlanner.plan`
decides which of its tokens the LLM reads and at which factor (a `PlannedDocument`). The
multimodal processor, the model and the response's `landmark` block all consume that object
as it is.

The budget rule (no `--landmark-budget`): a document is read whole at k=1 whenever the whole
prompt fits the window: text tokens + every document's tokens + the answer's reserve (the
request's `max_tokens`, else `LandmarkConfig.output_reserve`) <= `max_model_len`. Otherwise the
room left (window - text - reserve) is shared between the documents by water-filling: every
document gets the same share, a document shorter than its share keeps all of it at k=1 and
gives the rest back to the others. `--landmark-budget` caps each document's share. A document
over its share is planned into it: with a retriever, windows around the spans that best match
the question stay raw (k=1, `compression.windows.landmark_windows_plan`) and the gaps between
them are compressed (only with a trained embedder, at the factors its checkpoint records as
helping: `EmbedderChoice.planning_factors`) or left out; without one, the middle of the
document goes first (head and tail are kept, as LongBench's middle truncation does),
compressed with a trained embedder or left out without one.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ..compression.choice import EmbedderChoice
from ..compression.factors import DocumentTooLongError, choose_factor, num_soft_tokens
from ..compression.planner import (
    Plan,
    PlanError,
    PlannedSpan,
    head_and_tail,
    plan_spans,
    uniform_plan,
)
from ..compression.windows import landmark_windows_plan
from ..config import LandmarkConfig
from .items import DocumentError
from .marker import SegmentTokenizer
from .tokens import DocumentTokenizer

logger = logging.getLogger(__name__)

#: Token block used to rank positions when no retriever scores a document (middle first out).
POSITION_BLOCK = 64


@dataclass(frozen=True)
class SpanScores:
    """Retriever scores of a document: LLM-token spans in order and one score per span."""

    bounds: tuple[tuple[int, int], ...]
    values: tuple[float, ...]


@dataclass(eq=False)
class ParsedDocument:
    """One document of a request, tokenized once where the request is parsed.

    factor / plan: set by the request (then used as is); query: the question the retriever
    plans for; marker: the text that stands for the document in the rendered prompt; scores:
    the retriever's span scores, added when a retriever is configured and they may be needed;
    planned: what the LLM reads of it, set once by `DocumentPlanner.plan` when the prompt
    around it is known (the response's `landmark` block reads it there).
    """

    token_ids: tuple[int, ...]
    marker: str
    text: str | None = None
    factor: int | None = None
    plan: tuple[tuple[int, int, int], ...] | None = None
    query: str | None = None
    scores: SpanScores | None = None
    planned: PlannedDocument | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class PlannedDocument:
    """What the LLM reads of one document, and why.

    reason: "fits" (the whole prompt fits the window: read at k=1), "window" (planned into
    the room the window leaves), "budget" (planned into --landmark-budget), "factor" / "plan"
    (given by the request). selection: "whole", "retriever" (question-ranked spans),
    "position" (head and tail first, middle out) or "uniform" (one factor for everything).
    position: token index of the prompt (before expansion) where the document goes.
    """

    token_ids: tuple[int, ...]
    plan: Plan
    reason: str
    selection: str
    position: int

    @cached_property
    def cache_key(self) -> str:
        """Identity of (document, plan): vLLM's multimodal and prefix caches key on it."""
        digest = hashlib.sha256()
        digest.update(b"landmark-document-v2")
        digest.update(",".join(map(str, self.token_ids)).encode())
        digest.update(repr(self.plan.as_triples()).encode())
        return digest.hexdigest()

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


def position_scores(num_tokens: int) -> SpanScores:
    """Blocks of the document scored by distance from its middle: head and tail first."""
    bounds = tuple(
        (start, min(start + POSITION_BLOCK, num_tokens))
        for start in range(0, num_tokens, POSITION_BLOCK)
    )
    middle = num_tokens / 2
    values = tuple(abs((start + end) / 2 - middle) for start, end in bounds)
    return SpanScores(bounds, values)


class DocumentPlanner:
    """Parses and plans the documents of one model's requests (one per API-server process)."""

    def __init__(
        self,
        config: LandmarkConfig,
        tokenizer: Any,
        max_model_len: int,
        embedder: EmbedderChoice,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.embedder = embedder
        served = (1, *embedder.factors)
        #: Factors a request's explicit plan or factor may use (everything served).
        self.factors = tuple(k for k in config.factors if k in served) or (1,)
        #: Factors the planner chooses by itself: those the checkpoint records as helping.
        helpful = (1, *embedder.planning_factors)
        self.plan_factors = tuple(k for k in self.factors if k in helpful) or self.factors
        self.segments = SegmentTokenizer.for_tokenizer(tokenizer)
        self.document_tokens = DocumentTokenizer(tokenizer)

    # -- parsing -------------------------------------------------------------------------

    def parse(self, item: dict, marker: str, query: str | None = None) -> ParsedDocument:
        """A normalised document item (see `items.normalize_document`), tokenized once."""
        token_ids = (
            tuple(item["token_ids"])
            if "token_ids" in item
            else self.document_tokens.encode(item["text"])
        )
        if not token_ids:
            raise DocumentError("the document is empty (it has no tokens)")
        if len(token_ids) > self.config.max_document_tokens:
            raise DocumentError(
                f"the document has {len(token_ids)} tokens, over the limit of "
                f"{self.config.max_document_tokens} (--landmark-max-document-tokens)"
            )
        factor = item.get("factor")
        if factor is not None:
            self._check_factor(int(factor), "document")
        plan = item.get("plan")
        if plan is not None:
            for index, span in enumerate(plan):
                self._check_factor(span[2], f"plan[{index}]")
            if plan[-1][1] > len(token_ids):
                raise DocumentError(
                    f"the plan ends at token {plan[-1][1]}, past the document's "
                    f"{len(token_ids)} tokens"
                )
        cap = self.config.budget
        if plan is not None and cap is not None:
            needed = _plan_soft_tokens(plan)
            if needed > cap:
                raise DocumentError(
                    f"the plan needs {needed} soft tokens, over the budget of {cap} "
                    "(--landmark-budget)"
                )
        return ParsedDocument(
            token_ids=token_ids,
            marker=marker,
            text=item.get("text"),
            factor=None if factor is None else int(factor),
            plan=None if plan is None else tuple(tuple(span) for span in plan),
            query=item.get("query") or query,
        )

    def add_scores(self, document: ParsedDocument) -> None:
        """Give the document the retriever's span scores for its question, if it can get them."""
        if (
            document.scores is not None
            or not self.config.retriever
            or document.text is None
            or document.query is None
            or document.factor is not None
            or document.plan is not None
        ):
            return
        from ..retrieval.service import get_span_ranker

        try:
            scores = get_span_ranker(self.config.retriever_folder()).score_all_spans(
                document.text, document.query, llm_tokenizer=self.tokenizer, lexical_fusion=True
            )
        except (ValueError, RuntimeError) as exc:
            logger.warning("vllm-landmark: retrieval failed, planning by position: %s", exc)
            return
        if scores.llm_num_tokens != document.num_tokens:
            logger.warning(
                "vllm-landmark: the retriever saw %s LLM tokens, the LLM %s; planning by position",
                scores.llm_num_tokens,
                document.num_tokens,
            )
            return
        bounds, values = [], []
        for (start, end), value in zip(
            scores.llm_token_offsets.tolist(), scores.score.tolist(), strict=True
        ):
            if end > start:
                bounds.append((int(start), int(end)))
                values.append(float(value))
        document.scores = SpanScores(tuple(bounds), tuple(values))

    def may_need_scores(
        self, documents: Sequence[ParsedDocument], text_tokens: Callable[[], int]
    ) -> bool:
        """Whether some document may not be read whole (so retrieval is worth running).

        `text_tokens` estimates the rest of the prompt; it is called only when the answer
        depends on it (a retriever is configured and no cap already decides).
        """
        free = [d for d in documents if d.factor is None and d.plan is None]
        if not free or not self.config.retriever:
            return False
        cap = self.config.budget
        if cap is not None and any(d.num_tokens > cap for d in free):
            return True
        fixed = sum(_fixed_soft_tokens(d) for d in documents if d not in free)
        total = text_tokens() + fixed + sum(d.num_tokens for d in free)
        return total + self.default_reserve() > self.max_model_len

    # -- planning ------------------------------------------------------------------------

    def default_reserve(self) -> int:
        return min(self.config.output_reserve, self.max_model_len // 4)

    def plan(
        self,
        documents: Sequence[ParsedDocument],
        positions: Sequence[int],
        text_tokens: int,
        max_output_tokens: int = 0,
    ) -> list[PlannedDocument]:
        """Plan every document of one prompt under the budget rule (module docstring)."""
        reserve = max_output_tokens if max_output_tokens > 0 else self.default_reserve()
        room = self.max_model_len - text_tokens - reserve
        free = [i for i, d in enumerate(documents) if d.factor is None and d.plan is None]
        room -= sum(_fixed_soft_tokens(d) for i, d in enumerate(documents) if i not in free)
        cap = self.config.budget
        lengths = [documents[i].num_tokens for i in free]
        everything_fits = sum(lengths) <= room and (cap is None or max(lengths, default=0) <= cap)
        shares = dict(zip(free, share_room(lengths, room, cap), strict=True))
        planned = []
        for index, (document, position) in enumerate(zip(documents, positions, strict=True)):
            if index not in shares:
                plan, reason, selection = self._given_plan(document)
            elif everything_fits and 1 in self.factors:
                plan, reason, selection = uniform_plan(document.num_tokens, 1), "fits", "whole"
            else:
                plan, selection = self._plan_into(document, shares[index])
                if document.num_tokens <= shares[index]:
                    reason = "fits"
                else:
                    reason = "budget" if cap is not None and shares[index] == cap else "window"
            document.planned = PlannedDocument(
                document.token_ids, plan, reason, selection, int(position)
            )
            planned.append(document.planned)
        return planned

    def can_paste(self, document: ParsedDocument) -> bool:
        """Whether a planned document is read whole at k=1 and can go into the prompt as text.

        Text holding a special-token string of the tokenizer is never pasted: there it would
        read as a control token; as the document's own tokens it reads as plain text.
        """
        planned = document.planned
        return (
            planned is not None
            and document.text is not None
            and planned.selection == "whole"
            and planned.plan.as_triples() == [(0, document.num_tokens, 1)]
            and not any(special in document.text for special in self.segments.special_texts)
        )

    def _given_plan(self, document: ParsedDocument) -> tuple[Plan, str, str]:
        if document.factor is not None:
            return uniform_plan(document.num_tokens, document.factor), "factor", "uniform"
        assert document.plan is not None
        spans = tuple(PlannedSpan(*span) for span in document.plan)
        return Plan(spans), "plan", "given"

    def _plan_into(self, document: ParsedDocument, share: int) -> tuple[Plan, str]:
        """The document planned into `share` soft tokens (at least one token is kept)."""
        n = document.num_tokens
        if share < 1:
            raise DocumentError(
                "the prompt leaves no room for the document: the other messages and the "
                f"answer's reserve already fill the model window of {self.max_model_len} tokens; "
                "lower max_tokens, shorten the messages, or raise --max-model-len"
            )
        if n <= share and 1 in self.factors:
            return uniform_plan(n, 1), "whole"
        if self.config.factor is not None:
            factor = self.config.factor
            if num_soft_tokens(n, factor) <= share:
                return uniform_plan(n, factor), "uniform"
        if document.scores is None and self.config.retriever:
            self.add_scores(document)
        try:
            if document.scores is not None:  # windows around the best spans, then the gaps
                scores = document.scores
                plan = landmark_windows_plan(
                    scores.bounds, scores.values, n, share, self.plan_factors
                )
                return plan, "retriever"
            compress = [k for k in self.plan_factors if k > 1]
            if not compress:
                return head_and_tail(n, share), "position"
            if self.config.factor is None:
                try:
                    factor = choose_factor(n, share, self.config, factors=self.plan_factors)
                    return uniform_plan(n, factor), "uniform"
                except DocumentTooLongError:
                    pass
            positions = position_scores(n)
            plan = plan_spans(positions.bounds, positions.values, share, self.plan_factors)
            return plan, "position"
        except PlanError as exc:
            raise DocumentError(str(exc)) from exc

    def _check_factor(self, factor: int, where: str) -> None:
        if factor not in self.factors and factor != self.config.factor:
            raise DocumentError(
                f"{where} factor={factor} is not served here; the embedder "
                f"{self.embedder.name!r} serves factors {self.factors}"
            )


def _fixed_soft_tokens(document: ParsedDocument) -> int:
    if document.factor is not None:
        return num_soft_tokens(document.num_tokens, document.factor)
    if document.plan is not None:
        return _plan_soft_tokens(document.plan)
    return 0


def _plan_soft_tokens(plan: Sequence[Sequence[int]]) -> int:
    """Soft tokens of a request's explicit plan of [start, end, k] spans."""
    return sum(num_soft_tokens(end - start, k) for start, end, k in plan)
