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
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .attention import packed_causal_attention

EMBEDDER_CONFIG_NAME = "embedder_config.json"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
PROJECTION_NAME = "projection.safetensors"
FORMAT_VERSION = 1
#: Prefix peft's PeftModel puts before module names in a saved adapter.
PEFT_KEY_PREFIX = "base_model.model."
DEFAULT_TARGET_MODULES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)
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


class EmbedderMismatchError(ValueError):
    """The embedder checkpoint was trained for another base model than the one given."""


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class BaseModelIdentity:
    """Which base LLM an embedder belongs to: a readable name and a content fingerprint."""

    name: str
    fingerprint: str

    def __str__(self) -> str:
        return f"{self.name!r} (fingerprint {self.fingerprint[:16]})"


@dataclass(frozen=True)
class LoraSettings:
    """peft LoRA hyper-parameters of the embedder's decoder layers."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    use_rslora: bool = False

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


@dataclass(frozen=True)
class EmbedderConfig:
    """What `embedder_config.json` holds."""

    base_model: BaseModelIdentity
    num_layers: int
    factors: tuple[int, ...]
    hidden_size: int
    lora: LoraSettings = field(default_factory=LoraSettings)
    pooling: str = "mean"
    format_version: int = FORMAT_VERSION
    #: Free-form notes about how it was trained (steps, data, recipe config); not used to load.
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        factors = tuple(sorted({int(k) for k in self.factors}))
        object.__setattr__(self, "factors", factors)
        if not factors or any(k < 2 for k in factors):
            raise ValueError(f"factors must be integers >= 2, got {list(self.factors)}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.pooling != "mean":
            raise ValueError(f"pooling={self.pooling!r}: only 'mean' is implemented")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["factors"] = list(self.factors)
        data["lora"]["target_modules"] = list(self.lora.target_modules)
        return data

    @classmethod
    def from_folder(cls, folder: str | Path) -> EmbedderConfig:
        """Read `embedder_config.json` only (cheap: e.g. the API server's trained factors)."""
        path = Path(folder) / EMBEDDER_CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{folder} is not an embedder folder: no {EMBEDDER_CONFIG_NAME}"
            )
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbedderConfig:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{EMBEDDER_CONFIG_NAME} has format_version={version!r}; this version of "
                f"vllm_landmark reads {FORMAT_VERSION}"
            )
        lora = dict(data.get("lora", {}))
        lora["target_modules"] = tuple(lora.get("target_modules", DEFAULT_TARGET_MODULES))
        return cls(
            base_model=BaseModelIdentity(**data["base_model"]),
            num_layers=int(data["num_layers"]),
            factors=tuple(data["factors"]),
            hidden_size=int(data["hidden_size"]),
            lora=LoraSettings(**lora),
            pooling=data.get("pooling", "mean"),
            format_version=version,
            training=dict(data.get("training", {})),
        )


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


# ------------------------------------------------------------------ base model safetensors


class _BaseWeights:
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

    def rows(self, name: str, start: int, end: int) -> torch.Tensor:
        with safe_open(self.files[name], framework="pt") as handle:
            return handle.get_slice(name)[start:end]


def base_model_identity(folder: str | Path) -> BaseModelIdentity:
    """Name (folder name) and fingerprint of a base model folder.

    The fingerprint is a sha256 over the decoder-shape fields of config.json, two slices of the
    token embedding matrix and the final norm weight, all rounded to bfloat16 first (so a
    float32 and a bfloat16 copy of the same weights agree). Only those slices are read.
    """
    folder = Path(folder)
    spec = DecoderSpec.from_folder(folder)
    weights = _BaseWeights(folder)
    fields = {name: spec.raw.get(name) for name in _FINGERPRINT_FIELDS}
    fields["rope_theta"] = spec.rope_parameters.get("rope_theta")
    fields["head_dim"] = spec.head_dim
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    vocab, rows = spec.vocab_size, _FINGERPRINT_ROWS
    parts = [
        weights.rows("model.embed_tokens.weight", 0, rows),
        weights.rows("model.embed_tokens.weight", vocab // 2, vocab // 2 + rows),
    ]
    if "model.norm.weight" in weights:
        parts.append(weights.get("model.norm.weight"))
    for part in parts:
        as_bf16 = part.to(torch.bfloat16).contiguous().view(torch.int16)
        digest.update(as_bf16.numpy().tobytes())
    return BaseModelIdentity(name=folder.name, fingerprint=digest.hexdigest())


# ------------------------------------------------------------------ the decoder, plain torch


class RMSNorm(nn.Module):
    """Llama RMSNorm: normalise in float32, scale by the weight in the input dtype."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    """Grouped-query self-attention over packed spans with rotary positions."""

    def __init__(self, spec: DecoderSpec, qkv_bias: bool, o_bias: bool) -> None:
        super().__init__()
        h, d = spec.hidden_size, spec.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = (
            spec.num_attention_heads,
            spec.num_key_value_heads,
            d,
        )
        self.q_proj = nn.Linear(h, self.num_heads * d, bias=qkv_bias)
        self.k_proj = nn.Linear(h, self.num_kv_heads * d, bias=qkv_bias)
        self.v_proj = nn.Linear(h, self.num_kv_heads * d, bias=qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=o_bias)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
    ) -> torch.Tensor:
        tokens = x.shape[0]
        q = self.q_proj(x).view(tokens, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(tokens, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(tokens, self.num_kv_heads, self.head_dim)
        cos, sin = cos[:, None, :], sin[:, None, :]
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        out = packed_causal_attention(q, k, v, cu_seqlens, max_seqlen, self.head_dim**-0.5)
        return self.o_proj(out.reshape(tokens, self.num_heads * self.head_dim))


class MLP(nn.Module):
    """SiLU-gated feed-forward."""

    def __init__(self, spec: DecoderSpec, bias: bool) -> None:
        super().__init__()
        h, i = spec.hidden_size, spec.intermediate_size
        self.gate_proj = nn.Linear(h, i, bias=bias)
        self.up_proj = nn.Linear(h, i, bias=bias)
        self.down_proj = nn.Linear(i, h, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm Llama decoder layer (same parameter names as transformers)."""

    def __init__(self, spec: DecoderSpec, qkv_bias: bool, o_bias: bool, mlp_bias: bool) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.self_attn = Attention(spec, qkv_bias, o_bias)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.mlp = MLP(spec, mlp_bias)

    def forward(self, x, cos, sin, cu_seqlens, max_seqlen):  # noqa: ANN001 - hot path
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cu_seqlens, max_seqlen)
        return x + self.mlp(self.post_attention_layernorm(x))


class EmbedderStack(nn.Module):
    """Token embedding + the first L decoder layers; named like the base model's `model`."""

    def __init__(
        self,
        spec: DecoderSpec,
        num_layers: int,
        *,
        with_embedding: bool,
        qkv_bias: bool = False,
        o_bias: bool = False,
        mlp_bias: bool = False,
    ) -> None:
        super().__init__()
        self.embed_tokens = (
            nn.Embedding(spec.vocab_size, spec.hidden_size) if with_embedding else None
        )
        self.layers = nn.ModuleList(
            DecoderLayer(spec, qkv_bias, o_bias, mlp_bias) for _ in range(num_layers)
        )


# ------------------------------------------------------------------------- the embedder


def _layer_tensor_names(index: int, qkv_bias: bool, o_bias: bool, mlp_bias: bool) -> list[str]:
    prefix = f"model.layers.{index}."
    names = ["input_layernorm.weight", "post_attention_layernorm.weight"]
    for proj in ("q_proj", "k_proj", "v_proj"):
        names.append(f"self_attn.{proj}.weight")
        if qkv_bias:
            names.append(f"self_attn.{proj}.bias")
    names.append("self_attn.o_proj.weight")
    if o_bias:
        names.append("self_attn.o_proj.bias")
    for proj in ("gate_proj", "up_proj", "down_proj"):
        names.append(f"mlp.{proj}.weight")
        if mlp_bias:
            names.append(f"mlp.{proj}.bias")
    return [prefix + name for name in names]


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
        )
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
    ) -> ExtensibleEmbedder:
        weights = _BaseWeights(base)
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
            )
        names = [
            name
            for i in range(config.num_layers)
            for name in _layer_tensor_names(i, qkv_bias, o_bias, mlp_bias)
        ]
        if token_embedding is None:
            names.append("model.embed_tokens.weight")
        state = {name: weights.get(name) for name in names}
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
    ) -> ExtensibleEmbedder:
        """Load a saved embedder onto its base model.

        Reads `embedder_config.json`, checks the base model identity (EmbedderMismatchError
        names both), loads only the first L layers (and the token embedding unless
        `token_embedding`, e.g. the LLM's own embedding module, is given to share it), then
        merges the LoRA into those weights (`trainable=True` keeps it as a live peft adapter
        to continue training; that needs peft) and loads the projection.
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
        module = cls._build(config, spec, base, "cpu", torch.float32, token_embedding)
        adapter = _read_adapter(folder, config)
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
        from peft import LoraConfig

        lora = self.config.lora
        return LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            use_rslora=lora.use_rslora,
            bias="none",
            layers_to_transform=list(range(self.config.num_layers)),
            layers_pattern="layers",
            base_model_name_or_path=self.config.base_model.name,
        )

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

    @torch.no_grad()
    def merge_lora_weights(self, adapter: dict[str, torch.Tensor]) -> None:
        """W += scaling * B @ A for each adapted projection, on plain Linear layers."""
        scaling = self.config.lora.scaling
        modules = dict(self.named_modules())
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in adapter.items():
            if not key.startswith(PEFT_KEY_PREFIX):
                raise ValueError(f"adapter tensor {key!r} lacks the {PEFT_KEY_PREFIX!r} prefix")
            name = key[len(PEFT_KEY_PREFIX) :]
            for part in ("lora_A", "lora_B"):
                marker = f".{part}.weight"
                if name.endswith(marker):
                    pairs.setdefault(name[: -len(marker)], {})[part] = value
                    break
            else:
                raise ValueError(f"unsupported adapter tensor {key!r} (plain LoRA only)")
        for module_name, pair in sorted(pairs.items()):
            target = modules.get(module_name)
            if not isinstance(target, nn.Linear) or set(pair) != {"lora_A", "lora_B"}:
                raise ValueError(f"adapter names {module_name!r}, not a linear layer of the stack")
            delta = pair["lora_B"].float() @ pair["lora_A"].float()
            target.weight.copy_((target.weight.float() + scaling * delta).to(target.weight.dtype))
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


def shipped_embedders_dir() -> Path:
    """Where trained embedders ship inside the package (vllm_landmark/data/embedders)."""
    return Path(__file__).resolve().parents[1] / "data" / "embedders"


def find_shipped_embedder(
    base_model_folder: str | Path, root: str | Path | None = None
) -> Path | None:
    """The shipped embedder folder trained for this base model (by fingerprint), or None."""
    root = Path(root) if root is not None else shipped_embedders_dir()
    if not root.is_dir():
        return None
    fingerprint = base_model_identity(base_model_folder).fingerprint
    for config_path in sorted(root.glob(f"*/{EMBEDDER_CONFIG_NAME}")):
        try:
            data = json.loads(config_path.read_text())
            if data["base_model"]["fingerprint"] == fingerprint:
                return config_path.parent
        except (ValueError, KeyError, TypeError):
            continue
    return None


def _read_adapter(folder: Path, config: EmbedderConfig) -> dict[str, torch.Tensor]:
    """The adapter tensors, after checking adapter_config.json describes plain LoRA."""
    adapter_config = json.loads((folder / ADAPTER_CONFIG_NAME).read_text())
    problems = []
    if adapter_config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type={adapter_config.get('peft_type')!r}")
    if adapter_config.get("use_dora"):
        problems.append("use_dora=true")
    if adapter_config.get("rank_pattern") or adapter_config.get("alpha_pattern"):
        problems.append("rank/alpha patterns")
    lora = config.lora
    if (adapter_config.get("r"), adapter_config.get("lora_alpha")) != (lora.r, lora.alpha):
        problems.append("r/lora_alpha differ from embedder_config.json")
    if bool(adapter_config.get("use_rslora", False)) != lora.use_rslora:
        problems.append("use_rslora differs from embedder_config.json")
    if problems:
        raise ValueError(f"unsupported adapter in {folder}: {', '.join(problems)}")
    with safe_open(folder / ADAPTER_WEIGHTS_NAME, framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118


__all__ = [
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
