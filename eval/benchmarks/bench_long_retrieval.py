"""Benchmark: the default retriever's pass over long documents, time and peak memory by length.

For each length (LLM tokens of the prepared SmolLM2), a fresh process builds a document of that
length from the bundled demo document (its paragraphs shuffled, so every window differs) and
scores it for one question the way the planner does (``score_all_spans(lexical_fusion=True)``,
encoding included, no cache). Reports seconds, seconds per 1K tokens (and its ratio to the
shortest length) and the process's peak resident memory.

With ``--answer``, each child instead answers the question about that document end to end
through the offline engine with the plugin (the default retriever, budget 1,024, an 8K
window): the document is tokenized, scored, planned and read, and the answer generated; it
reports the call's seconds, the peak resident memory of the whole process (engine included)
and the answer.

    python -m eval.benchmarks.bench_long_retrieval [--lengths 8192,32768,131072]
        [--answer] [--out eval/results/bench_long_retrieval.json]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eval.provenance import provenance, write_result

QUESTION = "Who designed the rotary snow plough known as the Badger?"


def build_document(tokenizer, length: int, seed: int) -> str:
    """The demo document's paragraphs drawn at random until ``length`` LLM tokens."""
    from importlib import resources

    text = resources.files("vllm_landmark.data").joinpath("demo_document.md").read_text()
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    rng = random.Random(seed)
    pieces: list[str] = []
    tokens = 0
    while tokens < length:
        paragraph = rng.choice(paragraphs)
        pieces.append(paragraph)
        tokens += len(tokenizer.encode(paragraph + "\n\n", add_special_tokens=False))
    return "\n\n".join(pieces)


def timed(
    length: int, llm_tokens: int, run: Callable[[], Any], before_key: str
) -> tuple[Any, dict]:
    """``run()``'s result and the row fields every child reports: seconds (and per 1K LLM
    tokens), the process's peak memory after it, and before it under ``before_key``."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return out, {
        "length": length,
        "llm_tokens": llm_tokens,
        "seconds": seconds,
        "seconds_per_1k_llm_tokens": 1000 * seconds / llm_tokens,
        "peak_rss_mib": peak / 1024,
        before_key: before / 1024,
    }


def measure(length: int, seed: int) -> dict:
    """One length in this process: build, score, report (run in a child process)."""
    from transformers import AutoTokenizer

    from vllm_landmark.default_models import prepare_default_llm, prepare_default_retriever
    from vllm_landmark.retrieval.m3 import M3Encoder
    from vllm_landmark.retrieval.service import retriever_mode
    from vllm_landmark.retrieval.spans import SpanRanker

    tokenizer = AutoTokenizer.from_pretrained(prepare_default_llm())
    document = build_document(tokenizer, length, seed)
    llm_tokens = len(tokenizer.encode(document, add_special_tokens=False))
    device, quantize, backend = retriever_mode()
    ranker = SpanRanker(
        M3Encoder(
            str(prepare_default_retriever()), device=device, quantize=quantize, backend=backend
        )
    )
    scores, row = timed(
        length,
        llm_tokens,
        lambda: ranker.score_all_spans(
            document, QUESTION, llm_tokenizer=tokenizer, lexical_fusion=True
        ),
        "peak_rss_before_scoring_mib",
    )
    row.update(
        retriever_tokens=int(scores.num_tokens), sentences=len(scores.segments), backend=backend
    )
    return row


def answer(length: int, seed: int) -> dict:
    """One length in this process: the offline engine answers about the document end to end."""
    import os

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    from vllm_landmark import LandmarkConfig, engine_kwargs
    from vllm_landmark.default_models import prepare_default_llm

    model = str(prepare_default_llm())
    llm = LLM(
        model=model,
        dtype="float32",
        max_model_len=8192,
        enable_prefix_caching=False,
        **engine_kwargs(LandmarkConfig(budget=1024)),
    )
    tokenizer = llm.get_tokenizer()
    document = build_document(tokenizer, length, seed)
    llm_tokens = len(tokenizer.encode(document, add_special_tokens=False))
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "document", "document": {"text": document, "query": QUESTION}},
                {"type": "text", "text": f"\n\nQuestion: {QUESTION}\nAnswer briefly."},
            ],
        }
    ]
    params = SamplingParams(temperature=0.0, max_tokens=24)
    outputs, row = timed(
        length, llm_tokens, lambda: llm.chat(messages, params), "peak_rss_before_answer_mib"
    )
    row.update(
        prompt_tokens=len(outputs[0].prompt_token_ids), answer=outputs[0].outputs[0].text.strip()
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="8192,32768,131072")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--answer", action="store_true", help="answer end to end (engine)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("eval/results/bench_long_retrieval.json"))
    args = parser.parse_args()
    if args.child is not None:
        run = answer if args.answer else measure
        print(json.dumps(run(args.child, args.seed)))
        return
    header = provenance(
        "eval.benchmarks.bench_long_retrieval", None, config=vars(args), embedder=None
    )
    rows = []
    for length in [int(x) for x in args.lengths.split(",")]:
        child = [sys.executable, "-m", "eval.benchmarks.bench_long_retrieval"]
        out = subprocess.run(
            [*child, "--child", str(length), "--seed", str(args.seed)]
            + (["--answer"] if args.answer else []),
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
    method = (
        "one process per length: the offline engine (SmolLM2-135M-Instruct, default retriever, "
        "budget 1,024, 8K window) answers the question about the document end to end; peak "
        "resident memory of that process, engine included"
        if args.answer
        else "one process per length: the demo document's paragraphs drawn at random up to "
        "the length, scored for one question as the planner does (encoding included, no "
        "cache); peak resident memory of that process"
    )
    result = {
        "retriever": "default (multilingual-e5-small + trained heads)",
        "method": method,
        "question": QUESTION,
        "rows": rows,
    }
    write_result(args.out, result, header)


if __name__ == "__main__":
    main()
