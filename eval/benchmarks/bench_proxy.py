"""The proxy's overhead: `landmark proxy` in front of a plain vLLM vs calling it directly.

    nice -n 10 python -m eval.benchmarks.bench_proxy [--budget 1024] [--document-tokens 7600]

Upstream: plain `vllm serve` (no plugin, prefix caching off) with the prepared SmolLM2-135M;
proxy: `landmark proxy` in its own process, the default retriever, the upstream's tokenizer
folder for the budget. Document: ``eval.benchmarks.bench_ttft``'s (about 7,600 tokens). For each
question (the first one encodes the document, the next ones hit the retriever's cache), one
request through the proxy (``max_tokens=1``: time to first token), then the same selected text
sent to the upstream directly (the messages rebuilt from the ``landmark`` block's windows, so
the upstream does identical work). Overhead = proxy - direct; ``select_s`` is the part the proxy
spent selecting (retriever + exact counting). For scale, the whole document pasted to the
upstream once. Writes ``eval/results/bench_proxy.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from eval.provenance import provenance, write_result
from vllm_landmark.testing.server_process import ServerProcess, free_port

QUESTIONS = (
    "Who designed the rotary snow plough known as the Badger?",
    "When did the railway open?",
    "What powered the locomotives?",
    "Why was the line closed?",
)


def post(url: str, body: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    response = httpx.post(url, json=body, timeout=600)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, response.json()


def start_proxy(
    upstream: str, tokenizer: str, budget: int, log: Path
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "landmark"),
        "proxy",
        "--upstream",
        upstream,
        "--upstream-tokenizer",
        tokenizer,
        "--budget",
        str(budget),
        "--port",
        str(port),
    ]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the proxy exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return process, base + "/v1"
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.terminate()
    raise TimeoutError("the proxy did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=1024)
    parser.add_argument("--document-tokens", type=int, default=7600)
    parser.add_argument("--out", type=Path, default=Path("eval/results/bench_proxy.json"))
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/bench_proxy"))
    args = parser.parse_args()
    header = provenance(  # before the work: its load average is the run's start
        "eval.benchmarks.bench_proxy", None, config=vars(args), embedder=None
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from transformers import AutoTokenizer

    from eval.benchmarks.bench_ttft import window_document
    from vllm_landmark.default_models import prepare_default_llm
    from vllm_landmark.proxy.selection import SEPARATOR

    model = str(prepare_default_llm())
    document = window_document(AutoTokenizer.from_pretrained(model), args.document_tokens)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    upstream = ServerProcess(
        model,
        ["--max-model-len", "8192", "--enforce-eager", "--no-enable-prefix-caching"],
        landmark=False,
        log_dir=args.log_dir,
    )
    rows = []
    with upstream:
        proxy, proxy_url = start_proxy(
            upstream.base_url, model, args.budget, args.log_dir / "proxy.log"
        )
        try:
            warm = {
                "model": model,
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 1,
            }
            post(upstream.base_url + "/chat/completions", warm)
            whole_s, _ = post(
                upstream.base_url + "/chat/completions",
                {
                    "model": model,
                    "messages": [{"role": "user", "content": document + "\n" + QUESTIONS[0]}],
                    "max_tokens": 1,
                    "temperature": 0,
                },
            )
            for question in QUESTIONS:
                parts = [
                    {"type": "document", "document": {"text": document}},
                    {"type": "text", "text": question},
                ]
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": parts}],
                    "max_tokens": 1,
                    "temperature": 0,
                }
                proxy_s, answer = post(proxy_url + "/chat/completions", body)
                block = answer["landmark"]
                windows = block["documents"][0]["windows"]
                text = SEPARATOR.join(document[a:b] for a, b in windows)
                direct_body = {
                    **body,
                    "messages": [{"role": "user", "content": text + "\n" + question}],
                }
                direct_s, direct = post(upstream.base_url + "/chat/completions", direct_body)
                assert direct["usage"]["prompt_tokens"] == answer["usage"]["prompt_tokens"]
                rows.append(
                    {
                        "question": question,
                        "proxy_s": round(proxy_s, 3),
                        "direct_s": round(direct_s, 3),
                        "overhead_s": round(proxy_s - direct_s, 3),
                        "select_s": block["select_s"],
                        "kept_tokens": block["documents"][0]["kept_tokens"],
                        "raw_tokens": block["documents"][0]["raw_tokens"],
                        "prompt_tokens": answer["usage"]["prompt_tokens"],
                    }
                )
                print(rows[-1], flush=True)
        finally:
            proxy.terminate()
            proxy.wait(timeout=30)
    cached = rows[1:]
    out = {
        "command": "python -m eval.benchmarks.bench_proxy",
        "budget": args.budget,
        "retriever": "default, float32"
        if not os.environ.get("LANDMARK_RETRIEVER_QUANTIZE")
        else f"default, {os.environ['LANDMARK_RETRIEVER_QUANTIZE']}",
        "whole_document_direct_s": round(whole_s, 3),
        "first_question": rows[0],
        "cached_questions_median": {
            key: round(statistics.median(r[key] for r in cached), 3)
            for key in ("proxy_s", "direct_s", "overhead_s", "select_s")
        },
        "rows": rows,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    write_result(args.out, out, header)
    print(json.dumps({k: out[k] for k in ("whole_document_direct_s", "cached_questions_median")}))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
