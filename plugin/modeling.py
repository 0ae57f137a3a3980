"""`LandmarkForCausalLM`: the vLLM model wrapper that reads documents as soft tokens.

It wraps the decoder named by the model's own config (kept under
`landmark_base_architectures` when `--landmark` renames the architecture) and adds the
"document" input: the processor put ceil(n / k) placeholder tokens in the prompt for each
document, and this class computes the embeddings that fill them. Decoding, the paged KV
cache, prefix caching and batching stay vLLM's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import SupportsMultiModal, SupportsPP
from vllm.model_executor.models.utils import init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from .compression.baseline import mean_pool_groups
from .config import HF_BASE_ARCHITECTURES_KEY, MEAN_BASELINE
from .document import MODALITY
from .document.processor import (
    DocumentDummyInputsBuilder,
    DocumentMultiModalProcessor,
    DocumentProcessingInfo,
    config_from_hf,
)

ARCHITECTURE = "LandmarkForCausalLM"


def _per_item(value: Any, sizes: list[int]) -> list[torch.Tensor]:
    """A flat field as one tensor per document, whether vLLM concatenated it or not."""
    if isinstance(value, torch.Tensor):
        return list(torch.split(value.reshape(-1), sizes))
    return [torch.as_tensor(v).reshape(-1) for v in value]


def _as_int_list(value: Any) -> list[int]:
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(torch.as_tensor(v).reshape(-1)[0]) for v in value]


@MULTIMODAL_REGISTRY.register_processor(
    DocumentMultiModalProcessor,
    info=DocumentProcessingInfo,
    dummy_inputs=DocumentDummyInputsBuilder,
)
class LandmarkForCausalLM(nn.Module, SupportsMultiModal, SupportsPP):
    """A causal LM that also accepts "document" items, injected as soft tokens."""

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        # The chat patch inserts the tokenizer-specific placeholder itself.
        return None

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        hf_config = vllm_config.model_config.hf_config
        base_architectures = getattr(hf_config, HF_BASE_ARCHITECTURES_KEY, None)
        if not base_architectures:
            raise ValueError(
                f"{ARCHITECTURE} needs '{HF_BASE_ARCHITECTURES_KEY}' in the model config: start "
                "vLLM with --landmark (or pass vllm_landmark.engine_kwargs(...) to LLM) "
                "instead of editing config.json"
            )
        self.landmark_config = config_from_hf(hf_config)
        if self.landmark_config.embedder != MEAN_BASELINE:
            raise NotImplementedError(
                f"embedder={self.landmark_config.embedder!r}: loading trained embedders is not "
                f"available in this version; use {MEAN_BASELINE!r}"
            )
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=hf_config,
                architectures=list(base_architectures),
                prefix=maybe_prefix(prefix, "language_model"),
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def embed_multimodal(self, **kwargs: object) -> list[torch.Tensor]:
        """Soft tokens of each document in the batch, in prompt order."""
        token_ids = kwargs.get("document_token_ids")
        if token_ids is None:
            return []
        sizes = _as_int_list(kwargs["document_num_tokens"])
        factors = _as_int_list(kwargs["document_factor"])
        documents = _per_item(token_ids, sizes)
        device = next(self.language_model.parameters()).device
        flat = torch.cat(documents).to(device)
        token_embeds = self.language_model.embed_input_ids(flat)
        return [
            mean_pool_groups(doc_embeds, factor)
            for doc_embeds, factor in zip(torch.split(token_embeds, sizes), factors, strict=True)
        ]

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(
            input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds
        )

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = self.language_model.load_weights(weights)
        return {f"language_model.{name}" for name in loaded}


__all__ = ["ARCHITECTURE", "LandmarkForCausalLM", "MODALITY"]
