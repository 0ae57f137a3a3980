"""The base LLM as the embedder sees it: decoder shape, lazy safetensors reads, fingerprint."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .embedder_config import BaseModelIdentity

#: Config fields that enter the base model fingerprint (with slices of its weights).
_FINGERPRINT_FIELDS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "rms_norm_eps",
    "rope_theta",
)
_FINGERPRINT_ROWS = 64


@dataclass(frozen=True)
class DecoderSpec:
    """The base model's decoder shape, read from its config.json."""

    model_type: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_parameters: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_folder(cls, folder: str | Path) -> DecoderSpec:
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"base model folder {folder} has no config.json")
        cfg = json.loads(path.read_text())
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"base model hidden_act={act!r}: the embedder implements 'silu' only")
        heads = int(cfg["num_attention_heads"])
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        rope.setdefault("rope_type", rope.pop("type", "default"))
        rope.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
        return cls(
            model_type=str(cfg.get("model_type", "llama")),
            hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
            vocab_size=int(cfg["vocab_size"]),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_parameters=rope,
            raw=cfg,
        )

    def rope_inv_freq(self, folder: str | Path) -> tuple[torch.Tensor, float]:
        """Inverse RoPE frequencies (float32) and the cos/sin scaling of the base model."""
        rope_type = self.rope_parameters["rope_type"]
        if rope_type == "default":
            theta = float(self.rope_parameters["rope_theta"])
            exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim
            return 1.0 / (theta**exponents), 1.0
        if rope_type == "dynamic":
            raise ValueError("rope_type='dynamic' depends on the sequence length; not supported")
        # Static scaled variants (linear, llama3, yarn, ...): use transformers' own definition.
        from transformers import AutoConfig
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        if rope_type not in ROPE_INIT_FUNCTIONS:
            raise ValueError(f"rope_type={rope_type!r} is not known to transformers")
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](AutoConfig.from_pretrained(folder))
        return inv_freq.float(), float(scaling)


class BaseWeights:
    """Read single tensors (or row slices) from a base folder's safetensors, lazily."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {name: self.folder / file for name, file in weight_map.items()}
        else:
            single = self.folder / "model.safetensors"
            if not single.is_file():
                raise FileNotFoundError(
                    f"base model folder {self.folder} has no model.safetensors(.index.json)"
                )
            with safe_open(single, framework="pt") as handle:
                self.files = {name: single for name in handle.keys()}  # noqa: SIM118

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def get(self, name: str) -> torch.Tensor:
        if name not in self.files:
            raise KeyError(f"tensor {name!r} not found in {self.folder}")
        with safe_open(self.files[name], framework="pt") as handle:
            return handle.get_tensor(name)

    def slice(self, name: str, dim: int, start: int, end: int) -> torch.Tensor:
        """Rows (dim 0) or columns (dim 1) start:end of a tensor, reading only those."""
        if name not in self.files:
            raise KeyError(f"tensor {name!r} not found in {self.folder}")
        with safe_open(self.files[name], framework="pt") as handle:
            part = handle.get_slice(name)
            return (part[start:end] if dim == 0 else part[:, start:end]).contiguous()


def base_model_identity(folder: str | Path) -> BaseModelIdentity:
    """Name (folder name) and fingerprint of a base model folder.

    The fingerprint is a sha256 over the decoder-shape fields of config.json, two slices of the
    token embedding matrix and the final norm weight, all rounded to bfloat16 first (so a
    float32 and a bfloat16 copy of the same weights agree). Only those slices are read.
    """
    folder = Path(folder)
    spec = DecoderSpec.from_folder(folder)
    weights = BaseWeights(folder)
    fields = {name: spec.raw.get(name) for name in _FINGERPRINT_FIELDS}
    fields["rope_theta"] = spec.rope_parameters.get("rope_theta")
    fields["head_dim"] = spec.head_dim
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    vocab, rows = spec.vocab_size, _FINGERPRINT_ROWS
    parts = [
        weights.slice("model.embed_tokens.weight", 0, 0, rows),
        weights.slice("model.embed_tokens.weight", 0, vocab // 2, vocab // 2 + rows),
    ]
    if "model.norm.weight" in weights:
        parts.append(weights.get("model.norm.weight"))
    for part in parts:
        as_bf16 = part.to(torch.bfloat16).contiguous().view(torch.int16)
        digest.update(as_bf16.numpy().tobytes())
    return BaseModelIdentity(name=folder.name, fingerprint=digest.hexdigest())
