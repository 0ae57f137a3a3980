"""Reading the documents of one model's requests: parse (tokenize once, check), score, plan.

`DocumentReader.parse` turns a normalised document item into a `ParsedDocument` (its LLM
tokens, the request's overrides, the question); `DocumentReader.score` asks the retriever for
its span scores; planning itself is `planning.plan_prompt`, a pure function, which
`DocumentReader.plan` calls with this model's settings. Every step returns a value: nothing is
stored on the documents.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..compression.choice import EmbedderChoice
from ..config import LandmarkConfig
from ..planning import (
    DocumentToPlan,
    Plan,
    PlanError,
    PlannedDocument,
    PlanSettings,
    ScoredSpans,
    needs_scores,
    plan_prompt,
)
from .items import DocumentError
from .marker import SegmentTokenizer
from .tokens import DocumentTokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ParsedDocument:
    """One document of a request, tokenized once where the request is parsed.

    factor / plan: set by the request (then used as is); query: the question the retriever
    plans for; marker: the text that stands for the document in the rendered prompt.
    """

    token_ids: tuple[int, ...]
    marker: str
    text: str | None = None
    factor: int | None = None
    plan: tuple[tuple[int, int, int], ...] | None = None
    query: str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    def to_plan(self, position: int, scores: ScoredSpans | None = None) -> DocumentToPlan:
        """The planner's view of this document, placed at `position` of the prompt."""
        return DocumentToPlan(self.token_ids, position, scores, self.factor, self.plan)


class DocumentReader:
    """Parses, scores and plans the documents of one model's requests (one per process)."""

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
        self.settings = PlanSettings.from_config(
            config, embedder.factors, embedder.planning_factors
        )
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
            needed = Plan.from_triples(plan).soft_tokens
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

    # -- scoring -------------------------------------------------------------------------

    def can_score(self, document: ParsedDocument) -> bool:
        """Whether the retriever can score this document (a retriever, its text, a question)."""
        return bool(self.config.retriever) and document.text is not None and bool(document.query)

    def to_score(
        self,
        documents: Sequence[ParsedDocument],
        positions: Sequence[int],
        text_tokens: int,
        max_output_tokens: int = 0,
    ) -> list[bool]:
        """Which documents the plan will read the span scores of (exact: the prompt is known)."""
        views = [d.to_plan(p) for d, p in zip(documents, positions, strict=True)]
        reserve = self.reserve(max_output_tokens)
        wanted = needs_scores(views, text_tokens, self.max_model_len, reserve, self.settings)
        return [w and self.can_score(d) for w, d in zip(wanted, documents, strict=True)]

    def score(self, document: ParsedDocument) -> ScoredSpans | None:
        """The retriever's span scores of the document for its question (None if it fails)."""
        from ..retrieval.service import get_span_ranker

        try:
            ranker = get_span_ranker(self.config.retriever_folder())  # loads on first use
            landmarks = ranker.score_all_spans(
                document.text,
                document.query,
                llm_tokenizer=self.tokenizer,
                lexical_fusion=True,
                rounds=self.config.retrieval_rounds,
            )
        except Exception as exc:  # noqa: BLE001 - a retriever that fails must not fail the answer
            logger.warning("vllm-landmark: retrieval failed, planning by position: %s", exc)
            return None
        if landmarks.llm_num_tokens != document.num_tokens:
            logger.warning(
                "vllm-landmark: the retriever saw %s LLM tokens, the LLM %s; planning by position",
                landmarks.llm_num_tokens,
                document.num_tokens,
            )
            return None
        return ScoredSpans.from_landmarks(landmarks)

    # -- planning ------------------------------------------------------------------------

    def reserve(self, max_output_tokens: int = 0) -> int:
        """Tokens kept for the answer: the request's max_tokens, else the configured reserve."""
        if max_output_tokens > 0:
            return max_output_tokens
        return min(self.config.output_reserve, self.max_model_len // 4)

    def plan(
        self,
        documents: Sequence[ParsedDocument],
        positions: Sequence[int],
        text_tokens: int,
        max_output_tokens: int = 0,
        scores: Sequence[ScoredSpans | None] | None = None,
    ) -> list[PlannedDocument]:
        """Every document of one prompt planned by `planning.plan_prompt` (DocumentError if
        it cannot be): `text_tokens` is the rest of the prompt, `max_output_tokens` the
        request's (0: the configured reserve), `scores` the retriever's, per document."""
        reserve = self.reserve(max_output_tokens)
        scores = scores if scores is not None else [None] * len(documents)
        views = [d.to_plan(p, s) for d, p, s in zip(documents, positions, scores, strict=True)]
        try:
            return plan_prompt(views, text_tokens, self.max_model_len, reserve, self.settings)
        except PlanError as exc:
            raise DocumentError(str(exc)) from exc

    def can_paste(self, document: ParsedDocument, planned: PlannedDocument) -> bool:
        """Whether a planned document is read whole at k=1 and can go into the prompt as text.

        Text holding a special-token string of the tokenizer is never pasted: there it would
        read as a control token; as the document's own tokens it reads as plain text.
        """
        return (
            document.text is not None
            and planned.is_whole
            and not any(special in document.text for special in self.segments.special_texts)
        )

    def _check_factor(self, factor: int, where: str) -> None:
        if factor not in self.settings.factors and factor != self.config.factor:
            raise DocumentError(
                f"{where} factor={factor} is not served here; the embedder "
                f"{self.embedder.name!r} serves factors {self.settings.factors}"
            )
