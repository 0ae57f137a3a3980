"""vLLM's multimodal pieces for the "document" modality.

In the API-server process these turn each document item into LLM token ids and a scaling
factor k, and expand the document's one placeholder token into ceil(n / k) placeholders.
The token ids and k travel to the workers as processed fields; the model turns them into
embeddings (see `modeling.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import torch
from transformers import BatchFeature
from vllm.exceptions import VLLMValidationError
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataParser, ProcessorBatchItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
)

from ..compression.choice import EmbedderChoice, resolve_embedder
from ..compression.factors import DocumentTooLongError, choose_factor
from ..compression.planner import Plan, PlanError, PlannedSpan, plan_spans, uniform_plan
from ..config import HF_CONFIG_KEY, LandmarkConfig
from . import MODALITY
from .items import DocumentError, normalize_document
from .placeholder import Placeholder, choose_placeholder
from .tokens import encode_document

logger = logging.getLogger(__name__)


class DocumentValidationError(VLLMValidationError, ValueError):
    """Bad document input: a 400 on the server, a ValueError for the Python API."""


def config_from_hf(hf_config: Any) -> LandmarkConfig:
    """The LandmarkConfig stored in a model's Hugging Face config."""
    return LandmarkConfig.from_dict(getattr(hf_config, HF_CONFIG_KEY, None) or {})


class DocumentItems(ProcessorBatchItems[dict]):
    """Normalised document items of one prompt."""

    def __init__(self, data: Sequence[dict]) -> None:
        super().__init__(data, MODALITY)

    def get_processor_data(self) -> Mapping[str, object]:
        return {"documents": list(self.data)}


class DocumentDataParser(MultiModalDataParser):
    """vLLM's data parser plus a "document" subparser."""

    def __init__(self, config: LandmarkConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.landmark_config = config

    def _get_subparsers(self) -> Mapping[str, Any]:
        return {**super()._get_subparsers(), MODALITY: self._parse_document_data}

    def _parse_document_data(self, data: Any) -> DocumentItems:
        items = data if isinstance(data, list) else [data]
        try:
            return DocumentItems([normalize_document(item, self.landmark_config) for item in items])
        except DocumentError as exc:
            raise DocumentValidationError(str(exc), parameter=MODALITY) from exc


class DocumentProcessingInfo(BaseProcessingInfo):
    """What vLLM needs to know about documents for this model."""

    @cached_property
    def landmark_config(self) -> LandmarkConfig:
        return config_from_hf(self.get_hf_config())

    @cached_property
    def placeholder(self) -> Placeholder:
        return choose_placeholder(self.get_tokenizer(), self.landmark_config.placeholder_token)

    @cached_property
    def embedder(self) -> EmbedderChoice:
        return resolve_embedder(self.landmark_config.embedder, self.ctx.model_config.model)

    @cached_property
    def factors(self) -> tuple[int, ...]:
        """Factors this server can serve: the configured ones the embedder supports (and 1)."""
        served = (1, *self.embedder.factors)
        return tuple(k for k in self.landmark_config.factors if k in served)

    def _check_factor(self, factor: int, where: str) -> None:
        if factor not in self.factors and factor != self.landmark_config.factor:
            raise DocumentValidationError(
                f"{where} factor={factor} is not served here; the embedder "
                f"{self.embedder.name!r} serves factors {self.factors}",
                parameter=MODALITY,
            )

    @property
    def budget(self) -> int:
        return self.landmark_config.resolved_budget(self.ctx.model_config.max_model_len)

    def get_data_parser(self) -> MultiModalDataParser:
        return DocumentDataParser(
            self.landmark_config,
            expected_hidden_size=self._get_expected_hidden_size(),
            allow_missing_mm_embeddings=self.allow_missing_mm_embeddings,
        )

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {MODALITY: None}

    def get_mm_max_tokens_per_item(
        self, seq_len: int, mm_counts: Mapping[str, int]
    ) -> Mapping[str, int]:
        # A document may fill the whole sequence; the encoder cache must hold it.
        return {MODALITY: seq_len}

    def document_token_ids(self, item: dict) -> list[int]:
        """LLM token ids of a normalised item, with the hard length limit applied."""
        if "token_ids" in item:
            return list(item["token_ids"])
        ids = encode_document(self.get_tokenizer(), item["text"])
        if len(ids) > self.landmark_config.max_document_tokens:
            raise DocumentValidationError(
                f"the document has {len(ids)} tokens, over the limit of "
                f"{self.landmark_config.max_document_tokens} (--landmark-max-document-tokens)",
                parameter=MODALITY,
            )
        return list(ids)

    def document_plan(self, item: dict, token_ids: list[int]) -> Plan:
        """Which spans of the document to keep and at which factor.

        A factor or plan given with the document is used as is; otherwise the smallest
        allowed factor whose soft tokens fit the budget, over the whole document.
        """
        if "factor" in item:
            self._check_factor(int(item["factor"]), "document")
            return uniform_plan(len(token_ids), int(item["factor"]))
        if "plan" in item:
            for index, span in enumerate(item["plan"]):
                self._check_factor(span[2], f"plan[{index}]")
            last_end = item["plan"][-1][1]
            if last_end > len(token_ids):
                raise DocumentValidationError(
                    f"the plan ends at token {last_end}, past the document's {len(token_ids)} "
                    "tokens",
                    parameter=MODALITY,
                )
            plan = Plan(tuple(PlannedSpan(*span) for span in item["plan"]))
            if plan.soft_tokens > self.budget:
                raise DocumentValidationError(
                    f"the plan needs {plan.soft_tokens} soft tokens, over the budget of "
                    f"{self.budget} (--landmark-budget)",
                    parameter=MODALITY,
                )
            return plan
        if "query" in item and "text" in item and self.landmark_config.retriever:
            retrieved = self.retrieval_plan(item["text"], item["query"], token_ids)
            if retrieved is not None:
                return retrieved
        try:
            factor = choose_factor(
                len(token_ids), self.budget, self.landmark_config, factors=self.factors
            )
        except DocumentTooLongError as exc:
            raise DocumentValidationError(str(exc), parameter=MODALITY) from exc
        return uniform_plan(len(token_ids), factor)

    def retrieval_plan(self, text: str, query: str, token_ids: list[int]) -> Plan | None:
        """A plan from the retriever's landmark scores, or None when retrieval cannot help.

        Documents within the budget stay whole at k=1. If the retriever fails (a document it
        cannot take, say), the uniform plan is used and the reason logged.
        """
        if len(token_ids) <= self.budget and 1 in self.factors:
            return None
        from ..retrieval.service import get_span_ranker

        try:
            scores = get_span_ranker(self.landmark_config.retriever).score_all_spans(
                text, query, llm_tokenizer=self.get_tokenizer()
            )
        except (ValueError, RuntimeError) as exc:
            logger.warning("vllm-landmark: retrieval failed, planning uniformly: %s", exc)
            return None
        if scores.llm_num_tokens != len(token_ids):
            logger.warning(
                "vllm-landmark: retriever saw %s LLM tokens, the processor %s; planning uniformly",
                scores.llm_num_tokens,
                len(token_ids),
            )
            return None
        bounds, values = [], []
        for (start, end), value in zip(
            scores.llm_token_offsets.tolist(), scores.score.tolist(), strict=True
        ):
            if end > start:
                bounds.append((int(start), int(end)))
                values.append(float(value))
        try:
            return plan_spans(bounds, values, self.budget, self.factors)
        except PlanError as exc:
            raise DocumentValidationError(str(exc), parameter=MODALITY) from exc

    def plan_item(self, item: dict, query: str | None) -> dict:
        """The item with the retriever's plan written in (the server does this per request).

        Writing the plan, not the question, into the item makes vLLM's cache keys depend on
        (document, plan): two questions that give the same plan share the cached prefix. The
        document's own ``query`` wins over ``query`` (the request's last user message); the
        returned item no longer carries it (the plan, or the uniform plan, replaces it).
        """
        query = item.get("query") or query
        if query is None or "text" not in item or "factor" in item or "plan" in item:
            return item
        if not self.landmark_config.retriever:
            return item
        token_ids = self.document_token_ids(item)
        plan = self.retrieval_plan(item["text"], query, token_ids)
        # The query is used up here: without a plan the processor must not retrieve again.
        planned = {key: value for key, value in item.items() if key != "query"}
        if plan is None:
            return planned
        return {**planned, "plan": [list(t) for t in plan.as_triples()]}


class DocumentDummyInputsBuilder(BaseDummyInputsBuilder[DocumentProcessingInfo]):
    """Dummy documents for vLLM's memory profiling."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return self.info.placeholder.token * mm_counts.get(MODALITY, 0)

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: Any = None
    ) -> dict[str, Any]:
        count = mm_counts.get(MODALITY, 0)
        if not count:
            return {}
        per_item = max(1, seq_len // count - 1)
        filler = 0 if self.info.placeholder.token_id != 0 else 1
        return {MODALITY: [{"token_ids": [filler] * per_item, "factor": 1}] * count}


class DocumentMultiModalProcessor(BaseMultiModalProcessor[DocumentProcessingInfo]):
    """Tokenizes documents, picks their factor, expands their placeholders."""

    def _call_hf_processor(
        self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]
    ) -> BatchFeature:
        """Per document: the kept token ids and, per planned span, its length and factor."""
        documents = list(hf_data.get("documents", []))  # type: ignore[call-overload]
        kept_ids: list[int] = []
        span_lengths: list[int] = []
        span_factors: list[int] = []
        num_tokens, num_spans, soft_tokens = [], [], []
        for document in documents:
            token_ids = self.info.document_token_ids(document)
            plan = self.info.document_plan(document, token_ids)
            for span in plan.spans:
                kept_ids.extend(token_ids[span.start : span.end])
                span_lengths.append(span.num_tokens)
                span_factors.append(span.factor)
            num_tokens.append(plan.kept_tokens)
            num_spans.append(len(plan.spans))
            soft_tokens.append(plan.soft_tokens)
        return BatchFeature(
            {
                "document_token_ids": torch.tensor(kept_ids, dtype=torch.long),
                "document_span_lengths": torch.tensor(span_lengths, dtype=torch.long),
                "document_span_factors": torch.tensor(span_factors, dtype=torch.long),
                "document_num_tokens": torch.tensor(num_tokens, dtype=torch.long),
                "document_num_spans": torch.tensor(num_spans, dtype=torch.long),
                "document_soft_tokens": torch.tensor(soft_tokens, dtype=torch.long),
            }
        )

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        empty = torch.empty(0, dtype=torch.long)
        num_tokens = hf_inputs.get("document_num_tokens", empty)
        num_spans = hf_inputs.get("document_num_spans", empty)
        return {
            "document_token_ids": MultiModalFieldConfig.flat_from_sizes(MODALITY, num_tokens),
            "document_span_lengths": MultiModalFieldConfig.flat_from_sizes(MODALITY, num_spans),
            "document_span_factors": MultiModalFieldConfig.flat_from_sizes(MODALITY, num_spans),
            "document_num_tokens": MultiModalFieldConfig.batched(MODALITY),
            "document_num_spans": MultiModalFieldConfig.batched(MODALITY),
            "document_soft_tokens": MultiModalFieldConfig.batched(MODALITY),
        }

    def _get_prompt_updates(
        self,
        mm_items: Any,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptReplacement]:
        placeholder_id = self.info.placeholder.token_id
        documents = out_mm_kwargs.get(MODALITY, [])

        def replacement(item_idx: int) -> list[int]:
            return [placeholder_id] * int(documents[item_idx]["document_soft_tokens"].data)

        return [
            PromptReplacement(modality=MODALITY, target=[placeholder_id], replacement=replacement)
        ]

    def apply(self, inputs: Any, timing_ctx: Any) -> Any:
        result = super().apply(inputs, timing_ctx)
        self._check_window(result)
        return result

    def _check_window(self, result: Mapping[str, Any]) -> None:
        """Reject a prompt that does not fit the model window, saying by how much and why."""
        max_model_len = self.info.ctx.model_config.max_model_len
        prompt_len = len(result["prompt_token_ids"])
        if prompt_len < max_model_len:
            return
        ranges = result.get("mm_placeholders", {}).get(MODALITY, [])
        soft = sum(r.length for r in ranges)
        raise DocumentValidationError(
            f"the prompt needs {prompt_len} tokens ({soft} soft tokens for {len(ranges)} "
            f"document(s) + {prompt_len - soft} text tokens), {prompt_len - max_model_len + 1} "
            f"more than the model window of {max_model_len} allows with room for one output "
            f"token; lower --landmark-budget (now {self.info.budget} per document), allow "
            "larger factors, or raise --max-model-len",
            parameter=MODALITY,
        )
