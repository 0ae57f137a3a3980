"""Benchmark: what the plugin costs when a request carries no document.

Starts plain vLLM (`vllm serve`) and the plugin (`landmark serve ... --landmark`) on the same
tiny model, same dtype and settings, one after the other (start-up time of each), then
alternates identical chat requests between them so that machine drift hits both alike.
Prints per-request latency ratios (plugin / plain) and writes JSON.

    python -m eval.benchmarks.bench_overhead [--requests 60] [--concurrency 8]
        [--out eval/results/...]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import openai

from eval.provenance import provenance, write_result
from vllm_landmark.testing.server_process import ServerProcess
from vllm_landmark.testing.tiny_llm import build_tiny_llama

PROMPT = "Write a short note about the lighthouse keeper and the winter storm."
COMMON_ARGS = ["--max-model-len", "1024", "--enforce-eager"]


def one_request(client: openai.OpenAI, model: str, max_tokens: int) -> float:
    started = time.perf_counter()
    client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        temperature=0.0,
        max_tokens=max_tokens,
        extra_body={"ignore_eos": True},
    )
    return time.perf_counter() - started


def concurrent_batch(client: openai.OpenAI, model: str, max_tokens: int, width: int) -> float:
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=width) as pool:
        list(pool.map(lambda _: one_request(client, model, max_tokens), range(width)))
    return time.perf_counter() - started


def summarize(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": 1000 * statistics.median(values),
        "mean_ms": 1000 * statistics.fmean(values),
        "p90_ms": 1000 * sorted(values)[int(0.9 * (len(values) - 1))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=80)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10, help="concurrent batches per server")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("eval/results/bench_overhead.json"))
    args = parser.parse_args()
    header = provenance(  # before the work: its load average is the run's start
        "eval.benchmarks.bench_overhead", None, config=vars(args), embedder=None
    )

    work = Path(tempfile.mkdtemp(prefix="landmark-bench-"))
    model = str(build_tiny_llama(work / "tiny-llama"))
    # One server at a time (2 cores: an idle second server still steals cycles), in the
    # order plain, plugin, plugin, plain, so slow drift of the machine cancels out.
    sequential: dict[str, list[float]] = {"plain": [], "plugin": []}
    batches: dict[str, list[float]] = {"plain": [], "plugin": []}
    startups: dict[str, list[float]] = {"plain": [], "plugin": []}
    for name in ("plain", "plugin", "plugin", "plain"):
        server = ServerProcess(model, COMMON_ARGS, landmark=name == "plugin", log_dir=work).start()
        try:
            startups[name].append(float(server.startup_seconds or 0.0))
            client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
            for _ in range(5):  # warm-up
                one_request(client, model, args.max_tokens)
            for _ in range(args.requests // 2):
                sequential[name].append(one_request(client, model, args.max_tokens))
            for _ in range(max(1, args.rounds // 2)):
                batches[name].append(
                    concurrent_batch(client, model, args.max_tokens, args.concurrency)
                )
        finally:
            server.stop()

    result = {
        "machine": f"{platform.machine()} ({os.cpu_count()} cpus), {platform.platform()}",
        "model": "tiny random Llama (2 layers, hidden 64), float32, --enforce-eager",
        "method": "servers run one at a time in the order plain, plugin, plugin, plain; "
        f"{args.requests} sequential requests and {args.rounds} batches of "
        f"{args.concurrency} concurrent requests per server kind, {args.max_tokens} output "
        "tokens each, no document",
        "startup_s": {name: statistics.fmean(v) for name, v in startups.items()},
        "sequential": {name: summarize(v) for name, v in sequential.items()},
        f"concurrent_{args.concurrency}": {name: summarize(v) for name, v in batches.items()},
    }
    seq, conc = result["sequential"], result[f"concurrent_{args.concurrency}"]
    result["ratios"] = {
        "sequential_median": seq["plugin"]["median_ms"] / seq["plain"]["median_ms"],
        "sequential_mean": seq["plugin"]["mean_ms"] / seq["plain"]["mean_ms"],
        "concurrent_median": conc["plugin"]["median_ms"] / conc["plain"]["median_ms"],
        "startup": result["startup_s"]["plugin"] / result["startup_s"]["plain"],
    }
    write_result(args.out, result, header)
    print(json.dumps(result, indent=2))
    print(
        f"\nplugin/plain per-request latency: median x{result['ratios']['sequential_median']:.3f}, "
        f"mean x{result['ratios']['sequential_mean']:.3f}; {args.concurrency} concurrent: "
        f"x{result['ratios']['concurrent_median']:.3f}; start-up "
        f"{result['startup_s']['plain']:.1f} s plain vs "
        f"{result['startup_s']['plugin']:.1f} s plugin"
    )


if __name__ == "__main__":
    main()
