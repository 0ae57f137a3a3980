"""Causal self-attention over packed variable-length sequences (the embedder's one forward).

All spans of a batch are concatenated along the token axis; `cu_seqlens` (int32, length
num_sequences + 1, starting at 0) marks where each one starts and ends, and no token attends
across a boundary. Two implementations of the same function:

- `flash_attn_varlen_func` (flash-attn 2) when it is importable, the tensors are on CUDA and in
  float16/bfloat16 (flash-attn's only dtypes): one kernel for the whole packed batch.
- torch `scaled_dot_product_attention` otherwise, one `is_causal=True` call per sequence.
  A single call with a block-diagonal causal mask over the packed batch was measured slower on
  CPU: it computes (and allocates) the full total x total score matrix, so its cost grows with the
  square of the *batch* length instead of the sum of squared span lengths, and an explicit mask
  also keeps torch off its fused causal CPU kernel. Measured on the 2-core dev CPU (9 heads /
  3 kv heads, head_dim 64, float32): 16 spans of 256 tokens, loop 30 ms vs mask 890 ms; 4 of
  1,024, 190 ms vs 860 ms; 64 of 64, 13 ms vs 870 ms. The Python loop costs microseconds per
  span, so many short spans stay cheap too. tests/test_attention.py checks the equalities.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.cache
def _flash_attn_varlen():  # pragma: no cover - needs CUDA + flash-attn
    try:
        from flash_attn import flash_attn_varlen_func
    except Exception:  # ImportError, or a wheel built for another torch / CUDA
        return None
    return flash_attn_varlen_func


def flash_attn_available() -> bool:
    """Whether flash-attn imports here (it still needs CUDA tensors to be used)."""
    return _flash_attn_varlen() is not None


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor) -> None:
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError("q, k, v must be (total_tokens, heads, head_dim)")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(
            f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if q.shape[1] % k.shape[1]:
        raise ValueError(
            f"query heads ({q.shape[1]}) must be a multiple of kv heads ({k.shape[1]})"
        )
    if cu.dim() != 1 or cu.numel() < 1 or int(cu[0]) != 0 or int(cu[-1]) != q.shape[0]:
        raise ValueError(
            f"cu_seqlens must run from 0 to total_tokens={q.shape[0]}, got {cu.tolist()}"
        )


def sdpa_packed_causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """The torch path: one causal SDPA call per sequence; GQA by repeating kv heads."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        if end <= start:
            continue
        # (heads, n, head_dim) per sequence; SDPA treats the leading dim as the batch.
        out[start:end] = F.scaled_dot_product_attention(
            q[start:end].transpose(0, 1),
            k[start:end].transpose(0, 1),
            v[start:end].transpose(0, 1),
            is_causal=True,
            scale=scale,
        ).transpose(0, 1)
    return out


def packed_causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal attention within each packed sequence.

    q: (total_tokens, heads, head_dim); k, v: (total_tokens, kv_heads, head_dim) with heads a
    multiple of kv_heads (grouped-query attention). Returns (total_tokens, heads, head_dim).
    `scale` defaults to 1 / sqrt(head_dim).
    """
    _check_inputs(q, k, v, cu_seqlens)
    flash = _flash_attn_varlen()
    if flash is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        cu = cu_seqlens.to(device=q.device, dtype=torch.int32)  # pragma: no cover
        return flash(  # pragma: no cover
            q, k, v, cu, cu, max_seqlen, max_seqlen, softmax_scale=scale, causal=True
        )
    return sdpa_packed_causal_attention(q, k, v, cu_seqlens, scale)


def block_diagonal_causal_mask(cu_seqlens: torch.Tensor, device=None) -> torch.Tensor:
    """(total, total) bool mask, True where attention is allowed (kept for tests and timing)."""
    total = int(cu_seqlens[-1])
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.long)
    seq_id = torch.repeat_interleave(torch.arange(lengths.numel()), lengths).to(device)
    pos = torch.arange(total, device=device)
    return (seq_id[:, None] == seq_id[None, :]) & (pos[:, None] >= pos[None, :])


__all__ = [
    "block_diagonal_causal_mask",
    "flash_attn_available",
    "packed_causal_attention",
    "sdpa_packed_causal_attention",
]
