"""Causal self-attention over packed variable-length sequences (the embedder's one forward).

All spans of a batch are concatenated along the token axis; `cu_seqlens` (int32, length
num_sequences + 1, starting at 0) marks where each one starts and ends, and no token attends
across a boundary. Two implementations of the same function:

- `flash_attn_varlen_func` (flash-attn 2) when it is importable, the tensors are on CUDA and in
  float16/bfloat16 (flash-attn's only dtypes): one kernel for the whole packed batch.
- torch `scaled_dot_product_attention` otherwise, one `is_causal=True` call per sequence (one
  batched call per run of consecutive equal-length sequences, e.g. a long span's windows).
  A single call with a block-diagonal causal mask over the packed batch was measured slower on
  CPU: it computes (and allocates) the full total x total score matrix, so its cost grows with the
  square of the *batch* length instead of the sum of squared span lengths, and an explicit mask
  also keeps torch off its fused causal CPU kernel (timings in
  eval/results/attention_loop_vs_mask_cpu.json). The Python loop costs microseconds per span,
  so many short spans stay cheap too. tests/test_attention.py checks the equalities.
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


def _equal_length_runs(bounds: list[int]) -> list[tuple[int, int, int]]:
    """(start, count, length) for each run of consecutive sequences of one length (> 0)."""
    runs: list[tuple[int, int, int]] = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        length = end - start
        if length <= 0:
            continue
        if runs and runs[-1][2] == length and runs[-1][0] + runs[-1][1] * length == start:
            first, count, _ = runs[-1]
            runs[-1] = (first, count + 1, length)
        else:
            runs.append((start, 1, length))
    return runs


def sdpa_packed_causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """The torch path: causal SDPA per sequence; GQA by repeating kv heads.

    Consecutive sequences of the same length (a long span cut into equal windows) go through
    one batched call: the same math, far fewer kernel launches on a GPU.
    """
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    out = torch.empty_like(q)
    heads, head_dim = q.shape[1], q.shape[2]
    for start, count, length in _equal_length_runs(cu_seqlens.tolist()):
        end = start + count * length
        # (count, heads, length, head_dim): SDPA treats the leading dims as the batch.
        shape = (count, length, heads, head_dim)
        q_run, k_run, v_run = (x[start:end].reshape(shape).transpose(1, 2) for x in (q, k, v))
        attended = F.scaled_dot_product_attention(q_run, k_run, v_run, is_causal=True, scale=scale)
        out[start:end] = attended.transpose(1, 2).reshape(count * length, heads, head_dim)
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
