"""Packed causal attention: the SDPA path against a naive reference, flash-attn against SDPA."""

from __future__ import annotations

import math

import pytest
import torch

from vllm_landmark.compression.attention import (
    block_diagonal_causal_mask,
    flash_attn_available,
    packed_causal_attention,
    sdpa_packed_causal_attention,
)


def _naive(q, k, v, cu_seqlens, scale):
    """Explicit softmax(q k^T) v per sequence in float64, kv heads repeated for GQA."""
    groups = q.shape[1] // k.shape[1]
    out = torch.zeros_like(q, dtype=torch.float64)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        qs = q[start:end].double().transpose(0, 1)
        ks = k[start:end].double().repeat_interleave(groups, dim=1).transpose(0, 1)
        vs = v[start:end].double().repeat_interleave(groups, dim=1).transpose(0, 1)
        scores = qs @ ks.transpose(1, 2) * scale
        n = end - start
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        out[start:end] = (scores.softmax(-1) @ vs).transpose(0, 1)
    return out


def _packed(lengths, heads, kv_heads, head_dim, seed=0, dtype=torch.float32, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q = torch.randn(total, heads, head_dim, generator=gen).to(device, dtype)
    k = torch.randn(total, kv_heads, head_dim, generator=gen).to(device, dtype)
    v = torch.randn(total, kv_heads, head_dim, generator=gen).to(device, dtype)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return q, k, v, cu.to(device)


@pytest.mark.parametrize(
    ("lengths", "heads", "kv_heads"),
    [
        ([5, 1, 17, 64], 4, 4),
        ([33, 2, 8], 9, 3),
        ([1], 2, 1),
        ([128, 7], 6, 2),
        # runs of equal lengths (batched into one call), broken by others and by empty ones
        ([16, 16, 16, 5, 16, 16, 0, 16, 3, 3], 9, 3),
    ],
)
def test_sdpa_path_equals_naive_reference(lengths, heads, kv_heads):
    q, k, v, cu = _packed(lengths, heads, kv_heads, 32)
    scale = 1 / math.sqrt(32)
    got = packed_causal_attention(q, k, v, cu, max(lengths), scale)
    torch.testing.assert_close(got.double(), _naive(q, k, v, cu, scale), atol=2e-6, rtol=1e-5)


def test_custom_scale_and_no_cross_sequence_leak():
    q, k, v, cu = _packed([6, 9], 2, 1, 16, seed=1)
    got = packed_causal_attention(q, k, v, cu, 9, scale=0.37)
    torch.testing.assert_close(got.double(), _naive(q, k, v, cu, 0.37), atol=2e-6, rtol=1e-5)
    # Changing the second sequence leaves the first one's output untouched.
    v2 = v.clone()
    v2[6:] += 5.0
    again = packed_causal_attention(q, k, v2, cu, 9, scale=0.37)
    assert torch.equal(again[:6], got[:6])
    assert not torch.allclose(again[6:], got[6:])


def test_block_diagonal_mask_matches_loop():
    q, k, v, cu = _packed([4, 11, 3], 4, 2, 16, seed=2)
    mask = block_diagonal_causal_mask(cu)
    kk, vv = (t.repeat_interleave(2, dim=1).transpose(0, 1) for t in (k, v))
    masked = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), kk, vv, attn_mask=mask
    ).transpose(0, 1)
    torch.testing.assert_close(sdpa_packed_causal_attention(q, k, v, cu), masked)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cu": [0, 5]}, "cu_seqlens"),
        ({"heads": 3, "kv_heads": 2}, "multiple of kv heads"),
    ],
)
def test_bad_inputs_are_refused(kwargs, message):
    q, k, v, _ = _packed([4, 4], kwargs.get("heads", 2), kwargs.get("kv_heads", 1), 8)
    cu = torch.tensor(kwargs.get("cu", [0, 4, 8]), dtype=torch.int32)
    with pytest.raises(ValueError, match=message):
        packed_causal_attention(q, k, v, cu, 4)


_NO_FLASH_REASON = (
    "flash-attn vs SDPA parity needs a CUDA device and the flash-attn package "
    f"(cuda available: {torch.cuda.is_available()}, flash-attn importable: "
    f"{flash_attn_available()})"
)


@pytest.mark.skipif(
    not (torch.cuda.is_available() and flash_attn_available()), reason=_NO_FLASH_REASON
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_flash_attn_equals_sdpa(dtype):  # pragma: no cover - GPU only
    q, k, v, cu = _packed([37, 1, 256, 90], 9, 3, 64, dtype=dtype, device="cuda")
    flash = packed_causal_attention(q, k, v, cu, 256, scale=0.125)
    reference = sdpa_packed_causal_attention(q.float(), k.float(), v.float(), cu, 0.125)
    torch.testing.assert_close(flash.float(), reference, atol=2e-2, rtol=2e-2)


def test_equal_length_runs_are_contiguous_groups():
    from vllm_landmark.compression.attention import _equal_length_runs

    bounds = [0, 4, 8, 12, 13, 17, 17, 21, 25]
    # an empty sequence holds no tokens, so the runs on either side of it join
    assert _equal_length_runs(bounds) == [(0, 3, 4), (12, 1, 1), (13, 3, 4)]
