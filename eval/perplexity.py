"""Next-segment perplexity of the LLM given a compressed context (held-out documents).

    python -m eval.perplexity            # SmolLM2 + the shipped embedder, prepared data

For each held-out window (context of C tokens, then T target tokens) the frozen LLM scores the
target after reading:
- `none`: nothing; `full`: the context as its own token embeddings (k = 1);
- `mean@k`: the untrained baseline, the mean of each k token embeddings (compression/baseline);
- `embedder@k`: the trained ExtensibleEmbedder at factor k (only the factors it was trained for);
- `swapped-embedder@k` / `swapped-full`: the context of ANOTHER sample, compressed the same way.
  If the embedder's gain only primed the kind of text, swapped would score like embedder@k; the
  gap between them is what the soft tokens carry about this very context.
Target token 0 is not scored in any condition (with no context nothing precedes it), so every
condition scores the same T - 1 tokens. JSON goes to eval/results/perplexity.json.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.provenance import provenance, write_result
from recipes.embedder.data import Sample, TokenShards, ar_sample
from recipes.embedder.objective import load_frozen_llm, target_nll
from vllm_landmark.compression.baseline import mean_pool_groups

RESULTS = Path(__file__).parent / "results"
SHIPPED_EMBEDDER = Path(__file__).parents[1] / "plugin" / "data" / "embedders" / "smollm2-135m"


def default_data_dir() -> Path:
    from vllm_landmark.default_models import default_cache_dir

    return default_cache_dir() / "embedder-data" / "smollm2-135m"


def heldout_samples(
    data_dir: Path, count: int, context: int, target: int, seed: int
) -> list[Sample]:
    shards = TokenShards.load(data_dir, "heldout")
    rng = np.random.default_rng([seed, 7])
    return [
        ar_sample(
            shards, rng, context_tokens=(context, context), target_tokens=target, factors=(1,)
        )
        for _ in range(count)
    ]


@torch.no_grad()
def score(llm, samples: list[Sample], soft: list[torch.Tensor], batch_size: int) -> list[float]:
    """Mean NLL per scored token of each sample."""
    out: list[float] = []
    for start in range(0, len(samples), batch_size):
        sums, counts = target_nll(
            llm, samples[start : start + batch_size], soft[start : start + batch_size], score_from=1
        )
        out.extend((sums / counts).tolist())
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--base-model", type=Path, help="LLM folder (default: prepared SmolLM2)")
    parser.add_argument(
        "--embedder",
        default=str(SHIPPED_EMBEDDER),
        help="trained embedder folder, or 'none' for the baselines only",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="prepared data (held-out)")
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--context-tokens", type=int, default=512)
    parser.add_argument("--target-tokens", type=int, default=64)
    parser.add_argument("--factors", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, default=RESULTS / "perplexity.json")
    args = parser.parse_args(argv)
    header = provenance(  # before the work: its load average is the run's start
        "eval.perplexity",
        argv,
        config=vars(args),
        embedder=None if args.embedder == "none" else str(args.embedder),
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.base_model is None:
        from vllm_landmark.default_models import prepare_default_llm

        args.base_model = prepare_default_llm()
    data_dir = args.data_dir or default_data_dir()
    started = time.monotonic()
    llm = load_frozen_llm(str(args.base_model))
    embed = llm.get_input_embeddings()
    embedder = None
    if args.embedder != "none":
        from vllm_landmark.compression.embedder import ExtensibleEmbedder

        embedder = ExtensibleEmbedder.from_pretrained(args.embedder, args.base_model)
    samples = heldout_samples(
        data_dir, args.samples, args.context_tokens, args.target_tokens, args.seed
    )
    n = len(samples)
    swap = [(i + 1) % n for i in range(n)]  # another sample's context (different window)
    with torch.no_grad():
        token_embeds = [embed(s.context) for s in samples]
    conditions: dict[str, list[torch.Tensor]] = {
        "none": [t[:0] for t in token_embeds],
        "full": token_embeds,
        "swapped-full": [token_embeds[j] for j in swap],
    }
    skipped = []
    trained = tuple(embedder.config.factors) if embedder is not None else ()
    encoded = []
    if embedder is not None:
        with torch.inference_mode():  # the stack output does not depend on k: encode once
            for start in range(0, n, args.batch_size):
                encoded.append(
                    embedder.encode([s.context for s in samples[start : start + args.batch_size]])
                )
    for k in args.factors:
        conditions[f"mean@{k}"] = [mean_pool_groups(t, k) for t in token_embeds]
        if k in trained:
            with torch.inference_mode():
                soft = [
                    out
                    for hidden, cu in encoded
                    for out in embedder.pool(hidden, cu, [k] * (len(cu) - 1))
                ]
            conditions[f"embedder@{k}"] = soft
            conditions[f"swapped-embedder@{k}"] = [soft[j] for j in swap]
        elif embedder is not None:
            skipped += [f"embedder@{k}", f"swapped-embedder@{k}"]
    results: dict[str, dict[str, Any]] = {}
    for name, soft in conditions.items():
        nll = score(llm, samples, soft, args.batch_size)
        mean_nll = float(np.mean(nll))
        results[name] = {
            "ppl": math.exp(mean_nll),
            "nll_per_token": mean_nll,
            "soft_tokens": int(soft[0].shape[0]),
            "per_sample_nll": [round(x, 4) for x in nll],
        }
        print(f"{name:>22}: ppl {results[name]['ppl']:9.2f}", flush=True)
    report = {
        "settings": {
            "base_model": str(args.base_model),
            "embedder": None if embedder is None else str(args.embedder),
            "embedder_factors": list(trained),
            "data_dir": str(data_dir),
            "split": "heldout (by file)",
            "samples": n,
            "context_tokens": args.context_tokens,
            "target_tokens": args.target_tokens,
            "scored_tokens_per_sample": args.target_tokens - 1,
            "seed": args.seed,
            "dtype": "float32",
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
            "elapsed_s": round(time.monotonic() - started, 1),
        },
        "perplexity": results,
        "skipped": skipped,
        "wins": _wins(results, args.factors),
    }
    write_result(args.output, report, header)
    print(format_table(report))
    return report


def _wins(results: dict[str, dict[str, Any]], factors: list[int]) -> dict[str, float]:
    """Share of samples where the embedder beats mean / none / its swapped control."""
    wins = {}
    for k in factors:
        own = results.get(f"embedder@{k}")
        if own is None:
            continue
        for other in (f"mean@{k}", "none", f"swapped-embedder@{k}"):
            pairs = zip(own["per_sample_nll"], results[other]["per_sample_nll"], strict=True)
            wins[f"embedder@{k} < {other}"] = float(np.mean([a < b for a, b in pairs]))
    return wins


def format_table(report: dict[str, Any]) -> str:
    """A Markdown table: one row per factor, with none/full for reference."""
    res = report["perplexity"]

    def cell(name: str) -> str:
        return f"{res[name]['ppl']:.1f}" if name in res else "-"

    lines = [
        f"no context: {cell('none')}   full context (k=1, "
        f"{report['settings']['context_tokens']} tokens): {cell('full')}   "
        f"swapped full context: {cell('swapped-full')}",
        "",
        "| k | soft tokens | mean baseline | trained embedder | swapped context (embedder) |",
        "|---|---|---|---|---|",
    ]
    for name in res:
        if name.startswith("mean@"):
            k = name.split("@")[1]
            soft = res[name]["soft_tokens"]
            lines.append(
                f"| {k} | {soft} | {cell(name)} | {cell('embedder@' + k)} | "
                f"{cell('swapped-embedder@' + k)} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
