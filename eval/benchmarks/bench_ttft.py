"""Benchmark: time to first token for a window-filling document, plain text vs the plugin.

SmolLM2-135M-Instruct (8K window) in one offline engine, float32. The same document (about
7.5K tokens) is sent (a) pasted as text and (b) as a document part under a soft-token budget
(default 1K) with the configured embedder. TTFT = wall time of a request with max_tokens=1;
median of N runs after a warm-up; each run starts with its own first line, so no run reuses
another's cached prefix. Then:
- the embedder's cost per 1K document tokens (its own forward, timed in this process) against
  the LLM's prefill per 1K tokens (a 1K-token prompt, same engine);
- prefix caching: the same document and plan sent twice; the second request reuses the KV of
  the first (vLLM reports the cached tokens).

    python -m eval.benchmarks.bench_ttft [--budget 1024] [--embedder auto|mean-baseline|DIR]
        [--runs 3]
        [--retriever default|DIR]

With ``--retriever`` the document part carries the question as its ``query``: the plugin's
TTFT then includes encoding the document with the retriever and planning it span by span.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from importlib import resources
from pathlib import Path

from eval.provenance import provenance, write_result

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))


def window_document(tokenizer, target_tokens: int) -> str:
    """The bundled demo document repeated (with section numbers) up to `target_tokens`."""
    base = (resources.files("vllm_landmark.data") / "demo_document.md").read_text(encoding="utf-8")
    parts, total, copy = [], 0, 0
    while True:
        copy += 1
        piece = f"\n\n# Part {copy}\n\n{base.strip()}"
        count = len(tokenizer.encode(piece, add_special_tokens=False))
        if total + count > target_tokens:
            break
        parts.append(piece)
        total += count
    paragraphs = base.split("\n\n")
    for paragraph in paragraphs:  # top up paragraph by paragraph
        count = len(tokenizer.encode("\n\n" + paragraph, add_special_tokens=False))
        if total + count > target_tokens:
            break
        parts.append("\n\n" + paragraph)
        total += count
    return "".join(parts).strip()


def embedder_cost_per_1k(model: str, config, tokenizer, document: str, runs: int) -> float | None:
    """Seconds the configured embedder takes for 1K document tokens (None: mean baseline)."""
    import torch

    from vllm_landmark.compression.choice import resolve_embedder
    from vllm_landmark.compression.embedder import ExtensibleEmbedder

    choice = resolve_embedder(config.embedder, model)
    if choice.path is None:
        return None
    embedder = ExtensibleEmbedder.from_pretrained(choice.path, model)
    ids = torch.tensor(tokenizer.encode(document, add_special_tokens=False)[:1024])
    factor = max(choice.factors)
    embedder.embed_spans([ids], [factor])  # warm-up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        embedder.embed_spans([ids], [factor])
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000 / len(ids)


def retriever_mode(config) -> dict | None:
    """Where and how the planner's retriever runs (device, quantization, runtime)."""
    if not config.retriever:
        return None
    from vllm_landmark.retrieval.service import retriever_mode

    return retriever_mode()._asdict()


def timed(llm, messages, params) -> float:
    started = time.perf_counter()
    llm.chat(messages, params, use_tqdm=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=int, default=1024)
    parser.add_argument("--embedder", default="auto")
    parser.add_argument("--document-tokens", type=int, default=7600)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--retriever", help="'default' or a BGE-M3 folder: plan per question")
    parser.add_argument("--out", type=Path, default=Path("eval/results/bench_ttft.json"))
    args = parser.parse_args()
    header = provenance(  # before the work: its load average is the run's start
        "eval.benchmarks.bench_ttft", None, config=vars(args), embedder=args.embedder
    )

    from vllm import LLM, SamplingParams

    from vllm_landmark import LandmarkConfig, engine_kwargs
    from vllm_landmark.config import setting_text
    from vllm_landmark.default_models import prepare_default_llm

    model = str(prepare_default_llm())
    config = LandmarkConfig(budget=args.budget, embedder=args.embedder, retriever=args.retriever)
    llm = LLM(
        model=model,
        dtype="float32",
        max_model_len=8192,
        enable_prefix_caching=True,
        enforce_eager=True,
        **engine_kwargs(config),
    )
    tokenizer = llm.get_tokenizer()
    document = window_document(tokenizer, args.document_tokens)
    doc_tokens = len(tokenizer.encode(document, add_special_tokens=False))
    query = "Who designed the rotary snow plough known as the Badger?"
    question = f"\n\nQuestion: {query}"

    def plain(run: int) -> list[dict]:
        return [{"role": "user", "content": f"Run {run}.\n{document}{question}"}]

    def plugin(run: int) -> list[dict]:
        item = {"text": f"Run {run}.\n{document}"}
        if config.retriever:
            item["query"] = query
        parts = [
            {"type": "document", "document": item},
            {"type": "text", "text": question},
        ]
        return [{"role": "user", "content": parts}]

    params = SamplingParams(temperature=0.0, max_tokens=1)
    results: dict[str, list[float]] = {"plain_text": [], "plugin": []}
    timed(llm, [{"role": "user", "content": "warm up"}], params)
    for run in range(args.runs):
        results["plain_text"].append(timed(llm, plain(run), params))
        results["plugin"].append(timed(llm, plugin(run), params))
    medians = {name: statistics.median(values) for name, values in results.items()}

    # Prefill of 1K tokens vs the embedder over 1K document tokens (at the largest factor the
    # planner used for this budget), both in this process.
    thousand = tokenizer.decode(tokenizer.encode(document, add_special_tokens=False)[:1000])
    prefill_1k = statistics.median(
        timed(llm, [{"role": "user", "content": f"Prefill {i}.\n{thousand}"}], params)
        for i in range(args.runs)
    )
    embedder_1k = embedder_cost_per_1k(model, config, tokenizer, document, args.runs)

    # Prefix caching: the same document and plan twice.
    repeat = plugin(10_000)
    first = time.perf_counter()
    llm.chat(repeat, params, use_tqdm=False)
    first = time.perf_counter() - first
    second = time.perf_counter()
    cached = llm.chat(repeat, params, use_tqdm=False)[0]
    second = time.perf_counter() - second
    report = {
        "machine": f"{platform.machine()} ({os.cpu_count()} cpus), CPU only, float32",
        "model": "SmolLM2-135M-Instruct, offline engine, eager, prefix caching on (each timed "
        "run starts with its own line, so none reuses another's prefix)",
        "retriever": setting_text(config.retriever),
        "retriever_mode": retriever_mode(config),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "document_tokens": doc_tokens,
        "budget": args.budget,
        "embedder": args.embedder,
        "ttft_s": results,
        "median_ttft_s": medians,
        "speedup": medians["plain_text"] / medians["plugin"],
        "prefill_per_1k_tokens_s": prefill_1k,
        "embedder_per_1k_document_tokens_s": embedder_1k,
        "embedder_vs_prefill_per_1k": None if embedder_1k is None else embedder_1k / prefill_1k,
        "prefix_cache": {
            "first_request_s": first,
            "same_document_again_s": second,
            "cached_prompt_tokens": getattr(cached, "num_cached_tokens", None),
            "prompt_tokens": len(cached.prompt_token_ids),
        },
    }
    write_result(args.out, report, header)
    print(json.dumps(report, indent=2))
    print(
        f"\nTTFT for a {doc_tokens}-token document: plain text {medians['plain_text']:.2f} s, "
        f"plugin at budget {args.budget} ({args.embedder}) {medians['plugin']:.2f} s: "
        f"x{report['speedup']:.1f} lower; prefill {prefill_1k:.2f} s per 1K tokens, embedder "
        f"{embedder_1k if embedder_1k is not None else float('nan'):.2f} s per 1K; same "
        f"document again: {second:.2f} s after {first:.2f} s"
    )


if __name__ == "__main__":
    main()
