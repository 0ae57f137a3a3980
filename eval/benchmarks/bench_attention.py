"""The embedder's packed causal attention on CPU: per-span SDPA calls vs one masked call.

    python -m eval.benchmarks.bench_attention [--runs 5] [--threads 2] \\
        [--out eval/results/attention_loop_vs_mask_cpu.json]

`plugin/compression/attention.py` attends within each packed span with one `is_causal=True`
SDPA call per run of equal-length spans (`sdpa_packed_causal_attention`, "loop"). The
alternative is one call over the whole packed batch with a block-diagonal causal mask
(`block_diagonal_causal_mask`, "mask"). Shapes: SmolLM2's attention (9 query heads, 3 kv heads,
head_dim 64, float32), random inputs, a few span layouts; each timing is the median of --runs
after one warm-up. Both outputs are compared (max abs difference).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from eval.provenance import load_average, provenance, with_provenance

#: (spans, tokens per span) of each row
LAYOUTS = ((16, 256), (4, 1024), (64, 64), (7, 300))
HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64


def _median_ms(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 2)


def measure(spans: int, span_tokens: int, runs: int) -> dict:
    """One row: the loop and the mask on `spans` spans of `span_tokens` tokens."""
    import torch
    import torch.nn.functional as F

    from vllm_landmark.compression.attention import (
        block_diagonal_causal_mask,
        sdpa_packed_causal_attention,
    )

    generator = torch.Generator().manual_seed(spans * 100_003 + span_tokens)
    total = spans * span_tokens
    q = torch.randn(total, HEADS, HEAD_DIM, generator=generator)
    k = torch.randn(total, KV_HEADS, HEAD_DIM, generator=generator)
    v = torch.randn(total, KV_HEADS, HEAD_DIM, generator=generator)
    cu = torch.arange(0, total + 1, span_tokens, dtype=torch.int32)
    groups = HEADS // KV_HEADS

    def loop() -> torch.Tensor:
        return sdpa_packed_causal_attention(q, k, v, cu)

    def mask() -> torch.Tensor:
        allowed = block_diagonal_causal_mask(cu)
        qh = q.transpose(0, 1)
        kh = k.repeat_interleave(groups, dim=1).transpose(0, 1)
        vh = v.repeat_interleave(groups, dim=1).transpose(0, 1)
        return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=allowed).transpose(0, 1)

    with torch.inference_mode():
        difference = float((loop() - mask()).abs().max())
        return {
            "spans": spans,
            "span_tokens": span_tokens,
            "loop_ms": _median_ms(loop, runs),
            "mask_ms": _median_ms(mask, runs),
            "max_abs_diff": difference,
        }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m eval.benchmarks.bench_attention", description=__doc__
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--out", type=Path, default=Path("eval/results/attention_loop_vs_mask_cpu.json")
    )
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    load = load_average()
    rows = [measure(spans, tokens, args.runs) for spans, tokens in LAYOUTS]
    header = provenance(
        "eval.benchmarks.bench_attention", argv, config=vars(args), embedder=None, load=load
    )
    header["machine"]["torch"] = torch.__version__
    result = with_provenance(
        {
            "what": "packed causal attention on CPU: one SDPA is_causal call per run of "
            "equal-length spans (loop, what plugin/compression/attention.py does) vs one call "
            "with a block-diagonal causal mask over the packed batch (mask)",
            "shape": {
                "num_heads": HEADS,
                "num_kv_heads": KV_HEADS,
                "head_dim": HEAD_DIM,
                "dtype": "float32",
            },  # fmt: skip
            "runs": rows,
        },
        header,
    )
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(json.dumps(row), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
