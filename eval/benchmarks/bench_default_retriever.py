"""Benchmark: what the retriever being the default costs requests that do not need it.

Starts the plugin on the same tiny model with `--landmark-retriever none` and with no retriever
flag (the bundled retriever, loaded lazily), one at a time, in pairs whose order alternates
(none, default, default, none, ...), and measures each server's start-up, plain requests (no
document) and requests whose document fits the window. Servers of the same setting differ by
several milliseconds per request from one start to the next, so the result keeps every
server's medians and compares the medians of those. Then, on a default server, the first
over-long document (which loads the retriever) against later ones. Prints ratios
(default / none) and writes JSON.

    python -m eval.benchmarks.bench_default_retriever [--requests 40]
        [--out eval/results/bench_default_retriever.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import openai
from transformers import AutoTokenizer

from eval.provenance import provenance, write_result
from vllm_landmark.testing.documents import make_document
from vllm_landmark.testing.server_process import ServerProcess
from vllm_landmark.testing.tiny_llm import build_tiny_llama

COMMON_ARGS = ["--max-model-len", "1024", "--enforce-eager"]
SETTINGS = {"none": ["--landmark-retriever", "none"], "default": []}
QUESTION = "What did the keeper of the north lighthouse write in the record?"


def timed_chat(client: openai.OpenAI, model: str, content: object) -> float:
    started = time.perf_counter()
    client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        temperature=0.0,
        max_tokens=8,
        extra_body={"ignore_eos": True},
    )
    return time.perf_counter() - started


def document_content(text: str) -> list[dict]:
    return [{"type": "document", "document": {"text": text}}, {"type": "text", "text": QUESTION}]


def median_ms(values: list[float]) -> float:
    return 1000 * statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="of each kind per server")
    parser.add_argument("--long-documents", type=int, default=4)
    parser.add_argument(
        "--rounds", type=int, default=3, help="server pairs, alternating which starts first"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("eval/results/bench_default_retriever.json")
    )
    args = parser.parse_args()
    header = provenance(
        "eval.benchmarks.bench_default_retriever", None, config=vars(args), embedder="auto"
    )
    work = Path(tempfile.mkdtemp(prefix="landmark-bench-"))
    model = str(build_tiny_llama(work / "tiny-llama"))
    tokenizer = AutoTokenizer.from_pretrained(model)
    fitting = document_content(make_document(tokenizer, 300, seed=1))
    startup: dict[str, list[float]] = {name: [] for name in SETTINGS}
    plain: dict[str, list[float]] = {name: [] for name in SETTINGS}
    fits: dict[str, list[float]] = {name: [] for name in SETTINGS}
    long_first: list[float] = []
    long_later: list[float] = []
    runs = []
    order = [("none", "default"), ("default", "none")] * args.rounds
    for name in [name for pair in order[: args.rounds] for name in pair]:
        first_plain, first_fits = len(plain[name]), len(fits[name])
        server = ServerProcess(model, COMMON_ARGS + SETTINGS[name], log_dir=work).start()
        try:
            startup[name].append(float(server.startup_seconds or 0.0))
            client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
            for _ in range(3):  # warm-up
                timed_chat(client, model, "Hello")
            for _ in range(args.requests // 2):
                plain[name].append(timed_chat(client, model, "Write a short note."))
                fits[name].append(timed_chat(client, model, fitting))
            runs.append(
                {
                    "retriever": name,
                    "startup_s": startup[name][-1],
                    "plain_median_ms": median_ms(plain[name][first_plain:]),
                    "fits_median_ms": median_ms(fits[name][first_fits:]),
                }
            )
            if name == "default" and not long_first:
                documents = [
                    make_document(tokenizer, 3000, seed=10 + i) for i in range(args.long_documents)
                ]
                long_first.append(timed_chat(client, model, document_content(documents[0])))
                for text in documents[1:]:
                    long_later.append(timed_chat(client, model, document_content(text)))
        finally:
            server.stop()

    result = {
        "model": "tiny random Llama (2 layers, hidden 64), float32, --enforce-eager, window 1024",
        "method": f"{args.rounds} pairs of plugin servers, one server at a time, alternating "
        f"which setting starts first; {args.requests // 2} plain requests and "
        f"{args.requests // 2} requests with a 300-token document that fits per server, 8 "
        "output tokens; per setting the median of the servers' medians; then on the first "
        "default server one over-long document (3,000 tokens, loads the retriever) and "
        f"{args.long_documents - 1} more (retriever loaded; each a new document, so each is "
        "encoded)",
        "runs": runs,
        "startup_s": {name: statistics.median(v) for name, v in startup.items()},
        "plain_median_ms": {
            name: statistics.median(r["plain_median_ms"] for r in runs if r["retriever"] == name)
            for name in SETTINGS
        },
        "fits_median_ms": {
            name: statistics.median(r["fits_median_ms"] for r in runs if r["retriever"] == name)
            for name in SETTINGS
        },
        "plain_spread_ms": {
            name: [
                min(r["plain_median_ms"] for r in runs if r["retriever"] == name),
                max(r["plain_median_ms"] for r in runs if r["retriever"] == name),
            ]
            for name in SETTINGS
        },
        "over_long_first_ms": 1000 * long_first[0],
        "over_long_later_median_ms": median_ms(long_later) if long_later else None,
    }
    result["ratios"] = {
        "startup": result["startup_s"]["default"] / result["startup_s"]["none"],
        "plain_median": result["plain_median_ms"]["default"] / result["plain_median_ms"]["none"],
        "fits_median": result["fits_median_ms"]["default"] / result["fits_median_ms"]["none"],
    }
    write_result(args.out, result, header)
    print(json.dumps(result, indent=2))
    ratios = result["ratios"]
    print(
        f"\ndefault / none: start-up x{ratios['startup']:.3f}, plain requests "
        f"x{ratios['plain_median']:.3f}, fitting documents x{ratios['fits_median']:.3f}; "
        f"first over-long document {result['over_long_first_ms']:.0f} ms (loads the retriever), "
        f"later ones {result['over_long_later_median_ms']:.0f} ms"
    )


if __name__ == "__main__":
    main()
