"""Benchmark: the default retriever's pass over long documents, time and peak memory by length.

For each length (LLM tokens of the prepared SmolLM2), a fresh process builds a document of that
length from the bundled demo document (its paragraphs shuffled, so every window differs) and
scores it for one question the way the planner does (``score_all_spans(lexical_fusion=True)``,
encoding included, no cache). Reports seconds, seconds per 1K tokens (and its ratio to the
shortest length) and the process's peak resident memory.

    python -m eval.benchmarks.bench_long_retrieval [--lengths 8192,32768,131072]
        [--out eval/results/bench_long_retrieval.json]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

from eval.provenance import provenance, write_result

QUESTION = "Who designed the rotary snow plough known as the Badger?"


def measure(length: int, seed: int) -> dict:
    """One length in this process: build, score, report (run in a child process)."""
    from importlib import resources

    from transformers import AutoTokenizer

    from vllm_landmark.default_models import prepare_default_llm, prepare_default_retriever
    from vllm_landmark.retrieval.m3 import M3Encoder
    from vllm_landmark.retrieval.service import retriever_mode
    from vllm_landmark.retrieval.spans import SpanRanker

    tokenizer = AutoTokenizer.from_pretrained(prepare_default_llm())
    text = resources.files("vllm_landmark.data").joinpath("demo_document.md").read_text()
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    rng = random.Random(seed)
    pieces: list[str] = []
    tokens = 0
    while tokens < length:
        paragraph = rng.choice(paragraphs)
        pieces.append(paragraph)
        tokens += len(tokenizer.encode(paragraph + "\n\n", add_special_tokens=False))
    document = "\n\n".join(pieces)
    llm_tokens = len(tokenizer.encode(document, add_special_tokens=False))
    device, quantize, backend = retriever_mode()
    ranker = SpanRanker(
        M3Encoder(
            str(prepare_default_retriever()), device=device, quantize=quantize, backend=backend
        )
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    scores = ranker.score_all_spans(
        document, QUESTION, llm_tokenizer=tokenizer, lexical_fusion=True
    )
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "length": length,
        "llm_tokens": llm_tokens,
        "retriever_tokens": int(scores.num_tokens),
        "sentences": len(scores.segments),
        "seconds": seconds,
        "seconds_per_1k_llm_tokens": 1000 * seconds / llm_tokens,
        "peak_rss_mib": peak / 1024,
        "peak_rss_before_scoring_mib": before / 1024,
        "backend": backend,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="8192,32768,131072")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("eval/results/bench_long_retrieval.json"))
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.seed)))
        return
    header = provenance(
        "eval.benchmarks.bench_long_retrieval", None, config=vars(args), embedder=None
    )
    rows = []
    for length in [int(x) for x in args.lengths.split(",")]:
        child = [sys.executable, "-m", "eval.benchmarks.bench_long_retrieval"]
        out = subprocess.run(
            [*child, "--child", str(length), "--seed", str(args.seed)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        row = json.loads(out.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{row['llm_tokens']:>8} LLM tokens: {row['seconds']:.1f} s "
            f"({row['seconds_per_1k_llm_tokens']:.2f} s per 1K), "
            f"peak {row['peak_rss_mib']:.0f} MiB",
            flush=True,
        )
    base = rows[0]["seconds_per_1k_llm_tokens"]
    for row in rows:
        row["per_token_vs_shortest"] = row["seconds_per_1k_llm_tokens"] / base
    result = {
        "retriever": "default (multilingual-e5-small + trained heads)",
        "method": "one process per length: the demo document's paragraphs drawn at random up to "
        "the length, scored for one question as the planner does (encoding included, no "
        "cache); peak resident memory of that process",
        "question": QUESTION,
        "rows": rows,
    }
    write_result(args.out, result, header)


if __name__ == "__main__":
    main()
