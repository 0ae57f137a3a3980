"""Document affinity under data parallelism: a second question about a document, same engine?

    python -m eval.benchmarks.bench_affinity [--model DIR] [--dp 2] [--documents 4] [--max-tokens 8]
        [--base-url URL] [--out eval/results/bench_affinity.json]

Starts ``landmark serve`` with ``--data-parallel-size DP`` (default: the prepared SmolLM2,
float32, 8,192-token window, ``--enable-prompt-tokens-details``; on the CPU build each engine
is bound to its own core) unless ``--base-url`` names a running server. Then, for each of
``--documents`` pairs of distinct copies of the bundled document (4.4K SmolLM2 tokens), two
questions about the first copy and two about the second, one request at a time:

* ``affinity``: the copy travels as a ``document`` part. It fits the window, so the plugin
  pastes it into the prompt (token-identical to pasting the text yourself) and names the
  engine from its content: both questions go to the same engine.
* ``load_balanced``: the copy is pasted as plain text in the message, so vLLM's own
  data-parallel load balancer picks the engine, as it would for any client.

The two arms share the server and alternate, so load and warm-up hit both alike. Per second
question: time to first token, the prompt tokens served from the prefix cache
(``usage.prompt_tokens_details.cached_tokens``), and whether it ran on the first question's
engine (per-engine finished-request counters in /metrics). The ratio reported is the median
second-question TTFT of ``load_balanced`` over ``affinity``. ``eval.report`` renders the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.benchmarks.bench_load import documents
from eval.benchmarks.chat_stream import stream_chat
from eval.provenance import provenance, write_result
from vllm_landmark.testing.server_process import finished_per_engine


def ask(client: Any, model: str, root_url: str, content: Any, max_tokens: int) -> dict[str, Any]:
    """One streaming request: TTFT, cached prompt tokens, and the engine that finished it."""
    before = finished_per_engine(root_url)
    answer = stream_chat(client, model, content, max_tokens)
    moved = finished_per_engine(root_url) - before
    usage = answer.usage
    details = getattr(usage, "prompt_tokens_details", None)
    return {
        "ttft_s": round(answer.ttft_s, 3),
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "cached_tokens": getattr(details, "cached_tokens", None) or 0,
        "engine": next(iter(moved)) if len(moved) == 1 else None,
    }


def summarize(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    second = [p["second"] for p in pairs]
    return {
        "pairs": len(pairs),
        "second_ttft_median_s": round(statistics.median(s["ttft_s"] for s in second), 3),
        "first_ttft_median_s": round(statistics.median(p["first"]["ttft_s"] for p in pairs), 3),
        "second_cached_tokens_mean": round(statistics.mean(s["cached_tokens"] for s in second)),
        "second_prompt_tokens_mean": round(statistics.mean(s["prompt_tokens"] for s in second)),
        "same_engine": sum(p["first"]["engine"] == p["second"]["engine"] for p in pairs),
        "engines": dict(Counter(p["first"]["engine"] for p in pairs)),
    }


def report_section(data: dict[str, Any], name: str) -> str:
    """Markdown for eval/RESULTS.md (``eval.report`` calls it for bench_affinity*.json)."""
    out = [
        f"## Document affinity under data parallelism (`{name}`)",
        "",
        f"{data['dp']} engines ({data['cpus']} vCPU), {data['documents']} document pairs (copies"
        " of the bundled document, read whole), two questions each, one request at a"
        " time; load average at the end "
        + ", ".join(f"{x:.1f}" for x in data["load_average"])
        + ".",
        *[f"{note}." for note in data.get("notes", [])],
        "",
        "| arm | 1st question TTFT p50 (s) | 2nd question TTFT p50 (s) | 2nd: cached / prompt "
        "tokens (mean) | 2nd on the 1st's engine | 1st questions per engine |",
        "|---|---|---|---|---|---|",
    ]
    for arm, row in data["summary"].items():
        out.append(
            f"| {arm} | {row['first_ttft_median_s']} | {row['second_ttft_median_s']} | "
            f"{row['second_cached_tokens_mean']} / {row['second_prompt_tokens_mean']} | "
            f"{row['same_engine']} of {row['pairs']} | {row['engines']} |"
        )
    out += [
        "",
        "Second-question TTFT, load-balanced / affinity: "
        f"x{data['second_ttft_load_balanced_over_affinity']}. "
        "See `python -m eval.benchmarks.bench_affinity`.",
        "",
    ]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.benchmarks.bench_affinity", description=__doc__
    )
    parser.add_argument("--model", help="model folder (default: the prepared SmolLM2)")
    parser.add_argument("--dp", type=int, default=2, help="data-parallel engines")
    parser.add_argument("--documents", type=int, default=4, help="document pairs")
    parser.add_argument("--window", type=int, default=8192)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--base-url", help="a running server's /v1 URL (no server is started)")
    parser.add_argument("--note", action="append", default=[], help="a line for the report")
    parser.add_argument("--out", type=Path, default=Path("eval/results/bench_affinity.json"))
    args = parser.parse_args(argv)
    header = provenance(  # before the work: its load average is the run's start
        "eval.benchmarks.bench_affinity", argv, config=vars(args), embedder="auto (server default)"
    )

    import openai

    from vllm_landmark.testing.server_process import ServerProcess

    server = None
    base_url = args.base_url
    cpus = sorted(os.sched_getaffinity(0))
    if base_url is None:
        from vllm_landmark.default_models import prepare_default_llm

        if len(cpus) >= args.dp:  # the CPU build binds each engine's threads: one core each
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "|".join(map(str, cpus[: args.dp])))
        server_args = [
            "--max-model-len",
            str(args.window),
            "--data-parallel-size",
            str(args.dp),
            "--enable-prompt-tokens-details",
            "--enforce-eager",
        ]
        log_dir = args.out.parent / "logs"
        server = ServerProcess(
            args.model or prepare_default_llm(),
            server_args,
            log_dir=log_dir,
            startup_timeout=900.0,
        )
        server.start()
        base_url = server.base_url
        print(f"server ready in {server.startup_seconds:.1f} s", file=sys.stderr)
    root_url = base_url.removesuffix("/v1")
    arms: dict[str, list[dict[str, Any]]] = {"affinity": [], "load_balanced": []}
    try:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=900)
        model = client.models.list().data[0].id
        texts, question = documents(2 * args.documents + 1)
        follow_up = "Summarize the first section in one sentence."

        def content(arm: str, text: str, ask_this: str) -> Any:
            if arm == "affinity":
                return [
                    {"type": "document", "document": {"text": text}},
                    {"type": "text", "text": ask_this},
                ]
            return f"{text}\n{ask_this}"

        ask(client, model, root_url, content("affinity", texts[-1], question), args.max_tokens)
        for i in range(args.documents):
            for j, arm in enumerate(arms):
                text = texts[2 * i + j]
                pair = {
                    "first": ask(client, model, root_url, content(arm, text, question), 1),
                    "second": ask(
                        client, model, root_url, content(arm, text, follow_up), args.max_tokens
                    ),
                }
                arms[arm].append(pair)
                print(arm, json.dumps(pair), file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
    summary = {arm: summarize(pairs) for arm, pairs in arms.items()}
    ratio = summary["load_balanced"]["second_ttft_median_s"] / max(
        summary["affinity"]["second_ttft_median_s"], 1e-9
    )
    result = {
        "kind": "affinity",
        "dp": args.dp,
        "documents": args.documents,
        "window": args.window,
        "max_tokens": args.max_tokens,
        "cpus": len(cpus),
        "load_average": os.getloadavg(),
        "notes": args.note,
        "summary": summary,
        "second_ttft_load_balanced_over_affinity": round(ratio, 2),
        "pairs": arms,
    }
    write_result(args.out, result, header)
    print(
        json.dumps(
            {"summary": summary, "ratio": result["second_ttft_load_balanced_over_affinity"]}
        ),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
