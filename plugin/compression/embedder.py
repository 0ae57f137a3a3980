"""The trained k>1 embedder: a span of n document tokens -> ceil(n / k) soft tokens.

`ExtensibleEmbedder` is built from the served LLM itself: a copy of its token embedding and its
first L decoder layers (the "lower layers" variant of the Extensible Embedding paper), plus a
peft LoRA adapter on every projection of those layers and a hidden x hidden linear projection
(initialised to the identity) into the LLM's input space. Each span is encoded causally on its
own, then every run of k consecutive outputs is averaged and projected: one soft token per k
document tokens.

Why these choices:
- The LLM's own lower layers already map tokens into its representation space, so the
  untrained stack starts close to what the LLM can read, and a LoRA + one small projection is
  all a checkpoint has to carry (about 4 MB for SmolLM2-135M): it stays tied to one base model.
- Mean pooling keeps every token of a group in its soft token (the last-token alternative has
  to route everything through one position) and costs nothing; with causal attention each
  output already mixes in what came before it in the span.
- The decoder layers are written here in plain torch on the Hugging Face weights so that all
  spans of a batch go through one packed forward (`attention.packed_causal_attention`:
  flash-attn varlen on a GPU, per-span SDPA on CPU) instead of a padded batch.

Folder layout (`save_pretrained`): `embedder_config.json` (base model identity, layers,
factors, LoRA settings), `adapter_config.json` + `adapter_model.safetensors` (a standard peft
LoRA adapter whose keys name the base model's own modules, so `PeftModel.from_pretrained` can
also apply it to the base LLM's first layers), `projection.safetensors`. No base weights.
Loading reads only the tensors it needs from the base folder's safetensors, merges the LoRA
into them and never unpickles anything. peft is needed to train, not to load.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .base_model import BaseWeights, DecoderSpec, base_model_identity
from .decoder import EmbedderStack, layer_tensor_names
from .embedder_config import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    DEFAULT_TARGET_MODULES,
    EMBEDDER_CONFIG_NAME,
    FORMAT_VERSION,
    PROJECTION_NAME,
    BaseModelIdentity,
    EmbedderConfig,
    EmbedderMismatchError,
    LoraSettings,
)
from .lora import PEFT_KEY_PREFIX, merge_lora, peft_lora_config, read_adapter
from .shipped import find_shipped_embedder, shipped_embedders_dir
from .tensor_parallel import TensorParallelShard, local_shape, read_shard, shard_adapter


class ExtensibleEmbedder(nn.Module):
    """Spans of document tokens -> soft tokens in the LLM's input space (k tokens -> 1).

    Build an untrained one with `from_base`, a trained one with `from_pretrained`; call
    `embed_spans` to serve, `forward` (differentiable) to train.
    """

    def __init__(
        self,
        config: EmbedderConfig,
        spec: DecoderSpec,
        inv_freq: torch.Tensor,
        rope_scaling: float = 1.0,
        *,
        token_embedding: Callable[[torch.Tensor], torch.Tensor] | None = None,
        qkv_bias: bool = False,
        o_bias: bool = False,
        mlp_bias: bool = False,
        shard: TensorParallelShard | None = None,
    ) -> None:
        super().__init__()
        if config.num_layers > spec.num_hidden_layers:
            raise ValueError(
                f"num_layers={config.num_layers} exceeds the base model's "
                f"{spec.num_hidden_layers} layers"
            )
        if config.hidden_size != spec.hidden_size:
            raise EmbedderMismatchError(
                f"embedder hidden_size {config.hidden_size} != base model {spec.hidden_size}"
            )
        self.config = config
        self.spec = spec
        self.model = EmbedderStack(
            spec,
            config.num_layers,
            with_embedding=token_embedding is None,
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=mlp_bias,
            shard=shard,
        )
        self.shard = shard  # this rank's place under tensor parallelism (None: whole layers)
        # Not registered as a submodule: a shared LLM embedding must not be saved, moved or cast.
        object.__setattr__(self, "_shared_embedding", token_embedding)
        self.projection = nn.Linear(spec.hidden_size, spec.hidden_size)
        with torch.no_grad():
            self.projection.weight.copy_(torch.eye(spec.hidden_size))
            self.projection.bias.zero_()
        # A plain attribute, not a buffer: `.to(dtype=bfloat16)` must not round the frequencies
        # (at position 4,000 a bf16 inv_freq is off by radians); moved to the device on use.
        object.__setattr__(self, "inv_freq", inv_freq.float())
        self.rope_scaling = rope_scaling
        self.lora_attached = False
        self.lora_merged = False

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_base(
        cls,
        base_model_folder: str | Path,
        *,
        num_layers: int = 4,
        factors: Sequence[int] = (2, 4, 8),
        lora: LoraSettings | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        token_embedding: Callable[[torch.Tensor], torch.Tensor] | None = None,
        training: dict[str, Any] | None = None,
    ) -> ExtensibleEmbedder:
        """An untrained embedder (no LoRA yet, identity projection) from a base model folder."""
        base = Path(base_model_folder)
        spec = DecoderSpec.from_folder(base)
        config = EmbedderConfig(
            base_model=base_model_identity(base),
            num_layers=num_layers,
            factors=tuple(factors),
            hidden_size=spec.hidden_size,
            lora=lora or LoraSettings(),
            training=dict(training or {}),
        )
        return cls._build(config, spec, base, device, dtype, token_embedding)

    @classmethod
    def _build(
        cls,
        config: EmbedderConfig,
        spec: DecoderSpec,
        base: Path,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
        token_embedding: Callable[[torch.Tensor], torch.Tensor] | None,
        shard: TensorParallelShard | None = None,
    ) -> ExtensibleEmbedder:
        weights = BaseWeights(base)
        qkv_bias = "model.layers.0.self_attn.q_proj.bias" in weights
        o_bias = "model.layers.0.self_attn.o_proj.bias" in weights
        mlp_bias = "model.layers.0.mlp.gate_proj.bias" in weights
        inv_freq, scaling = spec.rope_inv_freq(base)
        with torch.device("meta"):
            module = cls(
                config,
                spec,
                inv_freq,
                scaling,
                token_embedding=token_embedding,
                qkv_bias=qkv_bias,
                o_bias=o_bias,
                mlp_bias=mlp_bias,
                shard=shard,
            )
        names = [
            name
            for i in range(config.num_layers)
            for name in layer_tensor_names(i, qkv_bias, o_bias, mlp_bias)
        ]
        if token_embedding is None:
            names.append("model.embed_tokens.weight")
        state = read_shard(weights, names, spec, shard)
        hidden = spec.hidden_size
        state["projection.weight"] = torch.eye(hidden)
        state["projection.bias"] = torch.zeros(hidden)
        module.load_state_dict(state, strict=True, assign=True)
        module.requires_grad_(False)
        target_dtype = dtype or torch.float32
        return module.to(device=device or "cpu", dtype=target_dtype)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        base_model_folder: str | Path,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        token_embedding: Callable[[torch.Tensor], torch.Tensor] | None = None,
        trainable: bool = False,
        shard: TensorParallelShard | None = None,
    ) -> ExtensibleEmbedder:
        """Load a saved embedder onto its base model.

        Reads `embedder_config.json`, checks the base model identity (EmbedderMismatchError
        names both), loads only the first L layers (and the token embedding unless
        `token_embedding`, e.g. the LLM's own embedding module, is given to share it), then
        merges the LoRA into those weights (`trainable=True` keeps it as a live peft adapter
        to continue training; that needs peft) and loads the projection. With a tensor-parallel
        `shard`, only this rank's slices of the layers (and of the LoRA) are read and kept.
        """
        folder, base = Path(folder), Path(base_model_folder)
        config = EmbedderConfig.from_folder(folder)
        actual = base_model_identity(base)
        if actual.fingerprint != config.base_model.fingerprint:
            raise EmbedderMismatchError(
                f"embedder {folder} was trained for base model {config.base_model}, but "
                f"{base} is {actual}; use an embedder trained for this model (or "
                f"--landmark-embedder mean-baseline)"
            )
        spec = DecoderSpec.from_folder(base)
        if trainable and shard is not None and shard.size > 1:
            raise ValueError("training runs on whole layers: load with trainable=False under TP")
        module = cls._build(config, spec, base, "cpu", torch.float32, token_embedding, shard)
        adapter = read_adapter(folder, config)
        if shard is not None and shard.size > 1:
            adapter = shard_adapter(adapter, spec, local_shape(spec, shard))
        if trainable:
            module.attach_lora()
            module.load_lora_state(adapter)
        else:
            module.merge_lora_weights(adapter)
        with safe_open(folder / PROJECTION_NAME, framework="pt") as handle:
            projection = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        module.projection.load_state_dict(
            {"weight": projection["weight"], "bias": projection["bias"]}, strict=True
        )
        if trainable:
            module.projection.requires_grad_(True)
        return module.to(device=device or "cpu", dtype=dtype or torch.float32)

    # ---------------------------------------------------------------- LoRA

    def peft_lora_config(self):  # noqa: ANN201 - peft is an optional dependency
        """The peft LoraConfig of this embedder (layers 0..L-1 of the base model)."""
        return peft_lora_config(self.config)

    def attach_lora(self) -> None:
        """Inject trainable peft LoRA layers; base weights stay frozen, projection trains."""
        if self.lora_attached or self.lora_merged:
            raise RuntimeError("LoRA is already attached or merged")
        from peft import inject_adapter_in_model

        inject_adapter_in_model(self.peft_lora_config(), self)
        for name, param in self.model.named_parameters():
            param.requires_grad_("lora_" in name)
        self.projection.requires_grad_(True)
        self.lora_attached = True

    def lora_state(self) -> dict[str, torch.Tensor]:
        """The adapter tensors under peft's saved names (base_model.model.model.layers...)."""
        if not self.lora_attached:
            raise RuntimeError("no live LoRA adapter (untrained, or merged at load time)")
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(self, save_embedding_layers=False)
        return {PEFT_KEY_PREFIX + k: v.detach().cpu().contiguous() for k, v in state.items()}

    def load_lora_state(self, adapter: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        state = {key.removeprefix(PEFT_KEY_PREFIX): value for key, value in adapter.items()}
        result = set_peft_model_state_dict(self, state)
        if result.unexpected_keys:
            raise ValueError(f"unexpected adapter tensors: {result.unexpected_keys[:5]}")

    def merge_lora_weights(self, adapter: dict[str, torch.Tensor]) -> None:
        """W += scaling * B @ A for each adapted projection, on plain Linear layers."""
        merge_lora(self, adapter, self.config.lora.scaling)
        self.lora_merged = True

    # ---------------------------------------------------------------- saving

    def save_pretrained(self, folder: str | Path, training: dict[str, Any] | None = None) -> Path:
        """Write embedder_config.json, the peft adapter and the projection (no base weights)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = self.config
        if training is not None:
            config = dataclasses.replace(config, training=dict(training))
        adapter = self.lora_state()
        save_file(adapter, folder / ADAPTER_WEIGHTS_NAME, metadata={"format": "pt"})
        self.peft_lora_config().save_pretrained(str(folder))
        projection = {
            "weight": self.projection.weight.detach().float().cpu().contiguous(),
            "bias": self.projection.bias.detach().float().cpu().contiguous(),
        }
        save_file(projection, folder / PROJECTION_NAME, metadata={"format": "pt"})
        (folder / EMBEDDER_CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        return folder

    # ---------------------------------------------------------------- forward

    def _embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        if self._shared_embedding is not None:
            return self._shared_embedding(ids)
        return self.model.embed_tokens(ids)

    def encode(self, token_ids: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """All spans through the stack in one packed forward: (total_tokens, hidden), cu_seqlens."""
        device = self.projection.weight.device
        lengths = [int(ids.numel()) for ids in token_ids]
        flat = torch.cat([ids.reshape(-1) for ids in token_ids]).to(device=device)
        positions = torch.cat([torch.arange(n) for n in lengths]).to(device)
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        x = self._embed_tokens(flat)
        dtype = self.projection.weight.dtype
        x = x.to(dtype)
        freqs = positions[:, None].float() * self.inv_freq.to(device)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.rope_scaling).to(dtype)
        sin = (emb.sin() * self.rope_scaling).to(dtype)
        cu_device = cu.to(device)
        max_len = max(lengths)
        for layer in self.model.layers:
            x = layer(x, cos, sin, cu_device, max_len)
        return x, cu

    def check_factors(self, factors: Sequence[int]) -> None:
        for factor in factors:
            if int(factor) not in self.config.factors:
                raise ValueError(
                    f"factor {factor} is not one this embedder was trained for; allowed: "
                    f"{list(self.config.factors)} (k=1 is the LLM's own token embeddings)"
                )

    def forward(
        self, token_ids: Sequence[torch.Tensor], factors: Sequence[int]
    ) -> list[torch.Tensor]:
        """Differentiable: one (ceil(n_i / k_i), hidden) tensor per span."""
        if len(token_ids) != len(factors):
            raise ValueError(f"{len(token_ids)} spans but {len(factors)} factors")
        if not token_ids:
            return []
        for i, ids in enumerate(token_ids):
            if ids.numel() == 0:
                raise ValueError(f"span {i} is empty; every span needs at least one token")
        self.check_factors(factors)
        hidden, cu = self.encode(token_ids)
        return self.pool(hidden, cu, factors)

    def pool(
        self, hidden: torch.Tensor, cu_seqlens: torch.Tensor, factors: Sequence[int]
    ) -> list[torch.Tensor]:
        """Mean of each k consecutive outputs of every span, then the projection.

        Exposed so one `encode` can be pooled at several factors (evaluation does that).
        """
        self.check_factors(factors)
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
        groups = [-(-n // int(k)) for n, k in zip(lengths, factors, strict=True)]
        group_offsets = torch.tensor([0, *groups[:-1]]).cumsum(0)
        group_ids = torch.cat(
            [
                torch.arange(n) // int(k) + int(offset)
                for n, k, offset in zip(lengths, factors, group_offsets, strict=True)
            ]
        ).to(hidden.device)
        total_groups = sum(groups)
        sums = hidden.new_zeros((total_groups, hidden.shape[1]), dtype=torch.float32)
        sums = sums.index_add(0, group_ids, hidden.float())
        counts = torch.bincount(group_ids, minlength=total_groups).to(torch.float32)
        pooled = (sums / counts[:, None]).to(hidden.dtype)
        return list(torch.split(self.projection(pooled), groups))

    @torch.inference_mode()
    def embed_spans(self, token_ids: list[torch.Tensor], factors: list[int]) -> list[torch.Tensor]:
        """Soft tokens for each span (ceil(n_i / k_i) x hidden, this module's dtype/device).

        One packed forward for all spans. Raises ValueError for a factor it was not trained
        for (naming it and the allowed set), an empty span, or mismatched list lengths; an
        empty list returns [].
        """
        if not token_ids and not factors:
            return []
        return self.forward(token_ids, factors)


__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "DEFAULT_TARGET_MODULES",
    "EMBEDDER_CONFIG_NAME",
    "FORMAT_VERSION",
    "PEFT_KEY_PREFIX",
    "PROJECTION_NAME",
    "BaseModelIdentity",
    "DecoderSpec",
    "EmbedderConfig",
    "EmbedderMismatchError",
    "ExtensibleEmbedder",
    "LoraSettings",
    "base_model_identity",
    "find_shipped_embedder",
    "shipped_embedders_dir",
]
