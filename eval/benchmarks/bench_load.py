"""Mixed-load benchmark: do plain requests wait behind document requests?

    python -m eval.benchmarks.bench_load [--model DIR] [--n 6] [--budget 1024] [--retriever default]
        [--max-tokens 16] [--base-url URL] [--server-arg=--max-num-batched-tokens=512]
        [--out eval/results/bench_load.json]

Starts ``landmark serve`` (default: the prepared SmolLM2, float32, 8,192-token window,
``--landmark-budget 1024``, the default retriever, ``--enforce-eager``) unless ``--base-url``
names a running server, warms it, then runs:
1. ``plain_alone``: N plain requests ("hello"-sized) sent together;
2. ``mixed``: N document requests (the bundled 7.4K-token document, made distinct per request
   so no cache helps) and N plain requests sent together;
3. ``staggered``: N new document requests at once and N plain requests one every
   ``--stagger`` seconds, so that plain requests meet the documents' prefills in the engine.
The reported ratio is plain p50 under load (the worse of 2 and 3) over plain p50 alone.
Every request streams with ``ignore_eos`` (the same decode length for all). Per kind: time to
first token and end-to-end p50/p99, and how many were lost (errors). A probe thread asks
``/health`` every 0.2 s during each phase: its worst latency shows whether the API server's
event loop stalled; the plugin's /metrics counters (plan and retrieval seconds, document
tokens) are read before and after each phase. Results go to JSON; ``eval.report`` puts them
in eval/RESULTS.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from eval.benchmarks.chat_stream import stream_chat
from eval.provenance import provenance, write_result

PLAIN_TEXT = "hello, how are you today?"


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of values, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return round(ordered[rank], 3)


def one_request(client: Any, model: str, content: Any, max_tokens: int) -> dict[str, Any]:
    """One streaming chat request: time to first token and end to end (or the error)."""
    try:
        answer = stream_chat(client, model, content, max_tokens)
    except Exception as exc:  # noqa: BLE001 - a lost request is a result, not a crash
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"ok": True, "ttft_s": round(answer.ttft_s, 3), "e2e_s": round(answer.e2e_s, 3)}


class HealthProbe:
    """Asks /health every `interval` seconds in a thread; keeps the worst latency."""

    def __init__(self, root_url: str, interval: float = 0.2) -> None:
        self.url = root_url + "/health"
        self.interval = interval
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=120) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                with contextlib.suppress(httpx.HTTPError):
                    client.get(self.url)
                self.latencies.append(time.perf_counter() - started)
                self._stop.wait(self.interval)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def documents(count: int) -> tuple[list[str], str]:
    """`count` distinct copies of the bundled document, and its question."""
    data = resources.files("vllm_landmark.data")
    text = (data / "demo_document.md").read_text(encoding="utf-8").rstrip()
    question = json.loads((data / "demo.json").read_text(encoding="utf-8"))["question"]
    stamp = time.time_ns()
    return [f"Archive copy {i} ({stamp}).\n\n{text}" for i in range(count)], question


WATCHED = (
    "vllm:landmark_plan_seconds_sum",
    "vllm:landmark_retrieval_seconds_sum",
    "vllm:landmark_retrieval_seconds_count",
    "vllm:landmark_document_injected_tokens_total",
    "vllm:landmark_document_raw_tokens_total",
    "vllm:prompt_tokens_total",
)


def scrape(root_url: str) -> dict[str, float]:
    """The watched counters of /metrics (summed over labels)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    text = httpx.get(root_url + "/metrics", timeout=60).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in WATCHED:
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def _delayed(delay: float, *args: Any) -> dict[str, Any]:
    time.sleep(delay)
    return one_request(*args)


def run_phase(
    client: Any,
    model: str,
    root_url: str,
    jobs: list[tuple[str, Any]],
    max_tokens: int,
    plain_every: float = 0.0,
) -> dict[str, Any]:
    """Send every (kind, content) at once (plain ones `plain_every` s apart); per-kind stats."""
    before = scrape(root_url)
    started = time.perf_counter()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs))
    with HealthProbe(root_url) as probe, pool:
        futures = []
        plain_index = 0
        for kind, content in jobs:
            delay = plain_every * plain_index if kind == "plain" else 0.0
            plain_index += kind == "plain"
            futures.append((kind, pool.submit(_delayed, delay, client, model, content, max_tokens)))
        results = [(kind, future.result()) for kind, future in futures]
    wall = time.perf_counter() - started
    after = scrape(root_url)
    out: dict[str, Any] = {
        "wall_s": round(wall, 2),
        "server": {k: round(after.get(k, 0.0) - before.get(k, 0.0), 3) for k in WATCHED},
    }
    for kind in sorted({kind for kind, _ in jobs}):
        rows = [r for k, r in results if k == kind]
        ok = [r for r in rows if r["ok"]]
        out[kind] = {
            "count": len(rows),
            "lost": len(rows) - len(ok),
            "errors": [r["error"] for r in rows if not r["ok"]][:3],
            "ttft_p50_s": percentile([r["ttft_s"] for r in ok], 50),
            "ttft_p99_s": percentile([r["ttft_s"] for r in ok], 99),
            "e2e_p50_s": percentile([r["e2e_s"] for r in ok], 50),
            "e2e_p99_s": percentile([r["e2e_s"] for r in ok], 99),
            "e2e_s": sorted(r["e2e_s"] for r in ok),
        }
    out["health_max_s"] = round(max(probe.latencies, default=0.0), 3)
    out["health_median_s"] = round(statistics.median(probe.latencies or [0.0]), 3)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.benchmarks.bench_load", description=__doc__
    )
    parser.add_argument("--model", help="model folder (default: the prepared SmolLM2)")
    parser.add_argument("--n", type=int, default=6, help="requests of each kind")
    parser.add_argument("--budget", type=int, default=1024)
    parser.add_argument("--retriever", default="default", help="'none' for no retriever")
    parser.add_argument("--window", type=int, default=8192)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument(
        "--stagger", type=float, default=5.0, help="seconds between plain requests (phase 3)"
    )
    parser.add_argument("--base-url", help="a running server's /v1 URL (no server is started)")
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra server flag (repeat)"
    )
    parser.add_argument("--note", action="append", default=[], help="a line for the report")
    parser.add_argument("--out", type=Path, default=Path("eval/results/bench_load.json"))
    args = parser.parse_args(argv)
    header = provenance(  # before the work: its load average is the run's start
        "eval.benchmarks.bench_load", argv, config=vars(args), embedder="auto (server default)"
    )

    import openai

    from vllm_landmark.testing.server_process import ServerProcess

    server = None
    base_url = args.base_url
    if base_url is None:
        from vllm_landmark.default_models import prepare_default_llm

        server_args = [
            "--max-model-len",
            str(args.window),
            "--landmark-budget",
            str(args.budget),
            "--enforce-eager",
            *[a for arg in args.server_arg for a in arg.split("=", 1)],
        ]
        if args.retriever != "none":
            server_args += ["--landmark-retriever", args.retriever]
        log_dir = args.out.parent / "logs"
        server = ServerProcess(args.model or prepare_default_llm(), server_args, log_dir=log_dir)
        server.start()
        base_url = server.base_url
        print(f"server ready in {server.startup_seconds:.1f} s", file=sys.stderr)
    root_url = base_url.removesuffix("/v1")
    try:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
        model = client.models.list().data[0].id
        docs, question = documents(2 * args.n + 1)

        def doc_content(text: str) -> list[dict[str, Any]]:
            return [
                {"type": "document", "document": {"text": text}},
                {"type": "text", "text": f"Question: {question}"},
            ]

        # Warm-up: one of each kind (compiles, loads the retriever, fills nothing reused).
        one_request(client, model, PLAIN_TEXT, args.max_tokens)
        one_request(client, model, doc_content(docs[-1]), args.max_tokens)
        plain = [("plain", PLAIN_TEXT)] * args.n
        phases = {"plain_alone": run_phase(client, model, root_url, plain, args.max_tokens)}
        print(json.dumps(phases["plain_alone"]), file=sys.stderr)
        mixed = [("document", doc_content(d)) for d in docs[: args.n]] + plain
        phases["mixed"] = run_phase(client, model, root_url, mixed, args.max_tokens)
        print(json.dumps(phases["mixed"]), file=sys.stderr)
        # Plain requests spread over the documents' time: most meet document prefills.
        fresh = [("document", doc_content(d)) for d in docs[args.n : 2 * args.n]] + plain
        phases["staggered"] = run_phase(
            client, model, root_url, fresh, args.max_tokens, plain_every=args.stagger
        )
        print(json.dumps(phases["staggered"]), file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
    alone = phases["plain_alone"]["plain"]["e2e_p50_s"]
    loaded = max(phases[p]["plain"]["e2e_p50_s"] or 0.0 for p in ("mixed", "staggered"))
    result = {
        "kind": "load",
        "n": args.n,
        "budget": args.budget,
        "retriever": args.retriever,
        "window": args.window,
        "max_tokens": args.max_tokens,
        "server_args": args.server_arg,
        "cpus": len(os.sched_getaffinity(0)),
        "notes": args.note,
        "phases": phases,
        "plain_p50_loaded_over_alone": round(loaded / alone, 2) if alone and loaded else None,
    }
    write_result(args.out, result, header)
    print(json.dumps({k: result[k] for k in ("plain_p50_loaded_over_alone",)}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
