"""Serving benchmark: plugin vs plain vLLM on the same model, over document lengths and load.

    python -m eval.benchmarks.bench_serving [--model DIR]
        [--lengths 1024,2048,4096,8192,16384,32768]
        [--concurrency 1,4] [--concurrency-lengths 1024,2048] [--repeats 2]
        [--max-tokens 32] [--budget 1024] [--out eval/results/serving_cpu.json]

Both servers get the same model, dtype (float32), window (``--max-model-len``), flags and
decode length (``max_tokens`` with ``ignore_eos``), run one at a time, and are warmed with one
request first. Every request carries a different document (no prefix-cache hits between
requests). Plain vLLM gets the document pasted into the message (so it is limited by its
window: longer documents are reported as not servable); the plugin gets it as a document part
and compresses it to ``--budget`` soft tokens.

Per request (streaming): time to first token, end-to-end latency, decode tokens/s (tokens
after the first over the time after the first). Per point: medians, and the peak RSS of the
server's process tree (psutil, sampled every 0.1 s). Results go to JSON; ``eval.plots``
draws them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import random
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.benchmarks.chat_stream import stream_chat
from eval.provenance import provenance, write_result
from eval.suite.run import default_work_dir

QUESTION = "In one sentence, what is the document above about?"


class RssSampler:
    """Peak resident memory of a process and all its children, sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> int:
        """Total RSS in bytes now (processes that vanish are skipped)."""
        import psutil

        total = 0
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return 0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = self.current()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def make_documents(tokenizer: Any, length: int, count: int, seed: int) -> list[str]:
    """``count`` different English documents of about ``length`` tokens (kernel docs)."""
    from eval.suite.generate import Counter, build_haystack, render
    from eval.suite.sources import HAYSTACK_SOURCES, Corpus, SourceMissingError

    counter = Counter(tokenizer)
    try:
        corpus = Corpus(HAYSTACK_SOURCES["en"])
    except SourceMissingError:
        corpus = None
    docs = []
    for index in range(count):
        rng = random.Random(f"serving/{seed}/{length}/{index}")
        if corpus is not None:
            docs.append(render(build_haystack(corpus, rng, length, counter, "en")))
        else:  # no Debian docs: deterministic filler text
            from vllm_landmark.testing.documents import make_document

            docs.append(make_document(tokenizer, length, seed=rng.randint(0, 10**6)))
    return docs


def stream_one(client: Any, model: str, content: Any, max_tokens: int) -> dict[str, Any]:
    """One streaming chat request; timings, token counts and the landmark block."""
    answer = stream_chat(client, model, content, max_tokens)
    usage = answer.usage
    return {
        "ttft_s": answer.ttft_s,
        "e2e_s": answer.e2e_s,
        "decode_tok_s": answer.decode_tokens_per_s,
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
        "injected_document_tokens": (answer.landmark or {}).get("injected_document_tokens"),
    }


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


def measure_point(
    client: Any,
    model: str,
    contents: list[Any],
    max_tokens: int,
    concurrency: int,
    sampler: RssSampler,
) -> dict[str, Any]:
    """Send ``contents`` in waves of ``concurrency`` simultaneous requests."""
    requests: list[dict[str, Any]] = []
    sampler.peak = sampler.current()
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        for wave in range(0, len(contents), concurrency):
            batch = contents[wave : wave + concurrency]
            requests.extend(pool.map(lambda c: stream_one(client, model, c, max_tokens), batch))
    wall = time.perf_counter() - started
    tokens = sum(r["completion_tokens"] or 0 for r in requests)
    return {
        "requests": len(requests),
        "ttft_s": _median([r["ttft_s"] for r in requests]),
        "e2e_s": _median([r["e2e_s"] for r in requests]),
        "decode_tok_s": _median([r["decode_tok_s"] for r in requests]),
        "output_tok_s": round(tokens / wall, 3) if wall > 0 else None,
        "prompt_tokens": _median([r["prompt_tokens"] for r in requests]),
        "injected_document_tokens": _median([r["injected_document_tokens"] for r in requests]),
        "peak_rss_gib": round(sampler.peak / 2**30, 3),
        "per_request": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                        for r in requests],
    }  # fmt: skip


def content_for(server: str, document: str) -> Any:
    """The message content: pasted text for plain vLLM, a document part for the plugin."""
    if server == "vllm":
        return document + "\n" + QUESTION
    return [
        {"type": "document", "document": {"text": document}},
        {"type": "text", "text": QUESTION},
    ]


def run_server(
    name: str,
    server: Any,
    model: str,
    tokenizer: Any,
    grid: list[tuple[int, int]],
    documents: dict[tuple[int, int], list[str]],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """All grid points on one running server."""
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=900)
    sampler = RssSampler(server.process.pid)
    warm = make_documents(tokenizer, 256, 1, seed=999)[0]
    stream_one(client, model, content_for(name, warm), args.max_tokens)  # warm-up
    idle = sampler.current()
    points = []
    with sampler:
        for length, concurrency in grid:
            docs = documents[(length, concurrency)]
            doc_tokens = len(tokenizer(docs[0], add_special_tokens=False)["input_ids"])
            point: dict[str, Any] = {
                "server": name,
                "length": length,
                "document_tokens": doc_tokens,
                "concurrency": concurrency,
            }
            if name == "vllm" and doc_tokens + 64 + args.max_tokens > args.window:
                point["skipped"] = f"document does not fit the {args.window}-token window"
                points.append(point)
                print(f"{name} {length} x{concurrency}: skipped (window)", file=sys.stderr)
                continue
            contents = [content_for(name, d) for d in docs]
            point.update(measure_point(client, model, contents, args.max_tokens, concurrency,
                                       sampler))  # fmt: skip
            points.append(point)
            print(
                f"{name} {length} x{concurrency}: ttft {point['ttft_s']} s, e2e "
                f"{point['e2e_s']} s, decode {point['decode_tok_s']} tok/s, "
                f"rss {point['peak_rss_gib']} GiB",
                file=sys.stderr,
                flush=True,
            )
    for point in points:
        point["idle_rss_gib"] = round(idle / 2**30, 3)
    return points


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m eval.benchmarks.bench_serving", description=__doc__
    )
    parser.add_argument("--model", help="model folder (default: the prepared SmolLM2)")
    parser.add_argument("--lengths", default="1024,2048,4096,8192,16384,32768")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument(
        "--concurrency-lengths", default="1024,2048", help="lengths measured at concurrency > 1"
    )
    parser.add_argument("--repeats", type=int, default=2, help="waves per point")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--window", type=int, default=8192)
    parser.add_argument("--budget", type=int, default=1024, help="--landmark-budget")
    parser.add_argument("--servers", default="vllm,landmark")
    parser.add_argument("--note", action="append", default=[], help="a line for the report")
    parser.add_argument("--work", type=Path, default=default_work_dir("serving-work"))
    parser.add_argument("--out", type=Path, default=Path("eval/results/serving_cpu.json"))
    args = parser.parse_args(argv)
    header = provenance(  # before the work: its load average is the run's start
        "eval.benchmarks.bench_serving", argv, config=vars(args), embedder="auto (server default)"
    )

    from eval.longbench.pred import load_tokenizer
    from eval.suite.run import machine
    from vllm_landmark.testing.server_process import ServerProcess

    host = machine()  # before the servers load the CPUs
    model = args.model
    if model is None:
        from vllm_landmark.default_models import prepare_default_llm

        model = str(prepare_default_llm())
    tokenizer = load_tokenizer(model)
    lengths = [int(x) for x in args.lengths.split(",") if x]
    levels = [int(x) for x in args.concurrency.split(",") if x]
    multi = {int(x) for x in args.concurrency_lengths.split(",") if x}
    grid = [(n, c) for c in levels for n in lengths if c == 1 or n in multi]
    documents = {(n, c): make_documents(tokenizer, n, c * args.repeats, seed=c) for n, c in grid}
    common = ["--max-model-len", str(args.window)]
    args.work.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    startup: dict[str, float | None] = {}
    for name in [s for s in args.servers.split(",") if s]:
        flags = common if name == "vllm" else [*common, "--landmark-budget", str(args.budget)]
        with ServerProcess(model, flags, landmark=name != "vllm", log_dir=args.work) as server:
            startup[name] = server.startup_seconds
            results.extend(run_server(name, server, model, tokenizer, grid, documents, args))
    report = {
        "kind": "serving",
        "machine": host,
        "model": Path(model).name,
        "dtype": "float32",
        "window": args.window,
        "budget": args.budget,
        "max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "embedder": "auto",  # the server's default: no --landmark-embedder is passed
        "startup_s": startup,
        "notes": args.note,
        "command": "python -m eval.benchmarks.bench_serving " + " ".join(argv or sys.argv[1:]),
        "points": results,
    }
    write_result(args.out, report, header, indent=1)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
