"""Llama-style decoder layers in plain torch, over packed spans (no padding).

Same parameter names as transformers, so the base model's safetensors load into them directly;
attention is :func:`.attention.packed_causal_attention` (flash-attn varlen on a GPU, per-span
SDPA on CPU), so all spans of a batch go through one forward. Given a
:class:`.tensor_parallel.TensorParallelShard`, each layer holds this rank's heads and
intermediate rows only and sums the attention and MLP outputs over the ranks (see that module).
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import packed_causal_attention
from .base_model import DecoderSpec
from .tensor_parallel import TensorParallelShard, local_shape


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

    def __init__(
        self,
        spec: DecoderSpec,
        qkv_bias: bool,
        o_bias: bool,
        shard: TensorParallelShard | None = None,
    ) -> None:
        super().__init__()
        h, d = spec.hidden_size, spec.head_dim
        shape = local_shape(spec, shard)
        self.num_heads, self.num_kv_heads, self.head_dim = shape.num_heads, shape.num_kv_heads, d
        self.shard = shard
        self.q_proj = nn.Linear(h, self.num_heads * d, bias=qkv_bias)
        self.k_proj = nn.Linear(h, self.num_kv_heads * d, bias=qkv_bias)
        self.v_proj = nn.Linear(h, self.num_kv_heads * d, bias=qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=o_bias and shape.owns_row_bias)

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
        out = self.o_proj(out.reshape(tokens, self.num_heads * self.head_dim))
        return out if self.shard is None else self.shard.reduce(out)


class MLP(nn.Module):
    """SiLU-gated feed-forward."""

    def __init__(self, spec: DecoderSpec, bias: bool, shard: TensorParallelShard | None = None):
        super().__init__()
        shape = local_shape(spec, shard)
        h, i = spec.hidden_size, shape.intermediate_size
        self.shard = shard
        self.gate_proj = nn.Linear(h, i, bias=bias)
        self.up_proj = nn.Linear(h, i, bias=bias)
        self.down_proj = nn.Linear(i, h, bias=bias and shape.owns_row_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))
        return out if self.shard is None else self.shard.reduce(out)


class DecoderLayer(nn.Module):
    """Pre-norm Llama decoder layer (same parameter names as transformers)."""

    def __init__(
        self,
        spec: DecoderSpec,
        qkv_bias: bool,
        o_bias: bool,
        mlp_bias: bool,
        shard: TensorParallelShard | None = None,
    ) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.self_attn = Attention(spec, qkv_bias, o_bias, shard)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.mlp = MLP(spec, mlp_bias, shard)

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
        shard: TensorParallelShard | None = None,
    ) -> None:
        super().__init__()
        self.embed_tokens = (
            nn.Embedding(spec.vocab_size, spec.hidden_size) if with_embedding else None
        )
        self.layers = nn.ModuleList(
            DecoderLayer(spec, qkv_bias, o_bias, mlp_bias, shard) for _ in range(num_layers)
        )


def layer_tensor_names(index: int, qkv_bias: bool, o_bias: bool, mlp_bias: bool) -> list[str]:
    """Names of the base weights of decoder layer ``index`` (biases where the model has them)."""
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
