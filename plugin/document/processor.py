"""vLLM's multimodal pieces for the "document" modality.

Documents reach the processor already planned (`planning.PlannedDocument`: token ids, plan,
and where in the prompt they go), from the chat patch or the tokenization patch. Here each
document becomes processed fields (the kept token ids, per planned span its length and
factor) and a run of soft-token positions inserted at its index in the prompt; the fields
travel to the workers, where the model turns them into embeddings (see `modeling.py`).
"""

from __future__ import annotations

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
    PromptIndexTargets,
    PromptInsertion,
)
from vllm.multimodal.processing.processor import PlaceholderFeaturesInfo

from ..compression.choice import EmbedderChoice, resolve_embedder
from ..config import HF_CONFIG_KEY, LandmarkConfig
from ..planning import PlannedDocument, uniform_plan
from . import MODALITY
from .marker import DOCUMENT_MARKER, filler_token_id
from .reader import DocumentReader


class DocumentValidationError(VLLMValidationError, ValueError):
    """Bad document input: a 400 on the server, a ValueError for the Python API."""


def config_from_hf(hf_config: Any) -> LandmarkConfig:
    """The LandmarkConfig stored in a model's Hugging Face config."""
    return LandmarkConfig.from_dict(getattr(hf_config, HF_CONFIG_KEY, None) or {})


class DocumentItems(ProcessorBatchItems[PlannedDocument]):
    """The planned documents of one prompt."""

    def __init__(self, data: Sequence[PlannedDocument]) -> None:
        super().__init__(data, MODALITY)

    def get_processor_data(self) -> Mapping[str, object]:
        return {"documents": list(self.data)}

    def get_item_for_hash(self, index: int) -> object:
        return self.data[index].cache_key


class DocumentDataParser(MultiModalDataParser):
    """vLLM's data parser plus a "document" subparser (planned documents only)."""

    def _get_subparsers(self) -> Mapping[str, Any]:
        return {**super()._get_subparsers(), MODALITY: self._parse_document_data}

    def _parse_document_data(self, data: Any) -> DocumentItems:
        items = data if isinstance(data, list) else [data]
        if not all(isinstance(item, PlannedDocument) for item in items):
            raise DocumentValidationError(
                "documents need a text prompt: send them in chat messages (the OpenAI API or "
                f"LLM.chat), or put {DOCUMENT_MARKER!r} (vllm_landmark.DOCUMENT_MARKER) in a "
                "text prompt once per document; token-id prompts cannot carry documents",
                parameter=MODALITY,
            )
        return DocumentItems(items)


class DocumentProcessingInfo(BaseProcessingInfo):
    """What vLLM needs to know about documents for this model."""

    @cached_property
    def landmark_config(self) -> LandmarkConfig:
        return config_from_hf(self.get_hf_config())

    @cached_property
    def embedder(self) -> EmbedderChoice:
        return resolve_embedder(self.landmark_config.embedder, self.ctx.model_config.model)

    @cached_property
    def reader(self) -> DocumentReader:
        return DocumentReader(
            self.landmark_config,
            self.get_tokenizer(),
            self.ctx.model_config.max_model_len,
            self.embedder,
        )

    @cached_property
    def filler_token_id(self) -> int:
        return filler_token_id(self.get_tokenizer())

    def get_data_parser(self) -> MultiModalDataParser:
        return DocumentDataParser(
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


class DocumentDummyInputsBuilder(BaseDummyInputsBuilder[DocumentProcessingInfo]):
    """Dummy documents for vLLM's memory profiling."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return ""

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: Any = None
    ) -> dict[str, Any]:
        count = mm_counts.get(MODALITY, 0)
        if not count:
            return {}
        per_item = max(1, seq_len // count - 1)
        filler = self.info.filler_token_id
        document = PlannedDocument(
            (filler,) * per_item, uniform_plan(per_item, 1), "fits", "whole", 0
        )
        return {MODALITY: [document] * count}


class DocumentMultiModalProcessor(BaseMultiModalProcessor[DocumentProcessingInfo]):
    """Turns planned documents into fields and inserts their soft-token runs."""

    def _call_hf_processor(
        self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]
    ) -> BatchFeature:
        """Per document: the kept token ids and, per planned span, its length and factor."""
        documents: list[PlannedDocument] = list(hf_data.get("documents", []))  # type: ignore[call-overload]
        kept_ids: list[int] = []
        span_lengths: list[int] = []
        span_factors: list[int] = []
        for document in documents:
            for span in document.plan.spans:
                kept_ids.extend(document.token_ids[span.start : span.end])
                span_lengths.append(span.num_tokens)
                span_factors.append(span.factor)

        def column(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long)

        return BatchFeature(
            {
                "document_token_ids": column(kept_ids),
                "document_span_lengths": column(span_lengths),
                "document_span_factors": column(span_factors),
                "document_num_tokens": column([d.plan.kept_tokens for d in documents]),
                "document_num_spans": column([len(d.plan.spans) for d in documents]),
                "document_soft_tokens": column([d.plan.soft_tokens for d in documents]),
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
    ) -> Sequence[PromptInsertion]:
        # One update per document, as vLLM's bookkeeping expects; where each run goes is the
        # document's own position (see _maybe_apply_prompt_updates), never a token search.
        filler = self.info.filler_token_id
        documents = out_mm_kwargs.get(MODALITY, [])

        def insertion(item_idx: int) -> list[int]:
            return [filler] * int(documents[item_idx]["document_soft_tokens"].data)

        return [
            PromptInsertion(
                modality=MODALITY, target=PromptIndexTargets.start(), insertion=insertion
            )
        ]

    def _maybe_apply_prompt_updates(self, mm_items: Any, mm_res: Any) -> tuple[list[int], Any]:
        """Insert each document's soft-token run at its planned position in the prompt."""
        if MODALITY not in mm_items:
            return super()._maybe_apply_prompt_updates(mm_items, mm_res)
        documents: list[PlannedDocument] = list(mm_items[MODALITY].get_all())
        prompt_ids = list(mm_res.prompt_ids)
        filler = self.info.filler_token_id
        order = sorted(range(len(documents)), key=lambda i: (documents[i].position, i))
        new_ids: list[int] = []
        placeholders: list[PlaceholderFeaturesInfo | None] = [None] * len(documents)
        cursor = 0
        for item_idx in order:
            position = documents[item_idx].position
            if not 0 <= position <= len(prompt_ids):
                raise DocumentValidationError(
                    f"document {item_idx} is placed at token {position}, outside the prompt's "
                    f"{len(prompt_ids)} tokens (prompt truncation cannot be combined with "
                    "documents)",
                    parameter=MODALITY,
                )
            new_ids.extend(prompt_ids[cursor:position])
            cursor = position
            tokens = [filler] * documents[item_idx].plan.soft_tokens
            placeholders[item_idx] = PlaceholderFeaturesInfo(
                modality=MODALITY,
                item_idx=item_idx,
                start_idx=len(new_ids),
                tokens=tokens,
                is_embed=None,
            )
            new_ids.extend(tokens)
        new_ids.extend(prompt_ids[cursor:])
        return new_ids, {MODALITY: placeholders}

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
            "token; use larger factors or a smaller plan for the documents given with one, "
            "shorten the messages, or raise --max-model-len",
            parameter=MODALITY,
        )
