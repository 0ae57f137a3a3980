"""Run the local suite end to end: servers, predictions in each mode, scores, one JSON.

    python -m eval.suite.run --suite DIR [--model MODEL_DIR] [--window 8192]
        [--full-lengths 2048,4096] [--budgets 512,1024] [--retrieval-budgets 1024]
        [--compare-budgets 1024 [--retriever default]]
        [--limit N] [--work DIR] [--out eval/results/suite_cpu.json]

Starts plain vLLM (``vllm serve``) for the ``full`` mode and the plugin (``landmark serve
--landmark``) for the ``plugin`` and ``retrieval-only`` modes, on the same model, dtype
(float32), window and flags, one server at a time. Each mode writes its predictions under
``--work`` (resumable: rerunning skips what is done), is scored by ``eval.suite.score``, and
everything lands in ``--out`` with the machine, the commands and the subset.

``--compare-budgets B`` adds the equal-budget comparison, every arm giving the document at most
``B`` tokens of the LLM's context: ``truncate-bB`` (the context middle-truncated, plain vLLM),
``retrieval-m3-bB`` (only the retriever's top spans, pasted raw, plain vLLM), ``plugin-bB``
(the whole document at one factor) and ``plugin-retrieval-bB`` (a plugin server started with
``--landmark-retriever R --landmark-budget B`` plans each document for its question: retrieved
spans near raw, the rest compressed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.longbench.pred import main as pred_main
from eval.provenance import provenance, write_result
from eval.suite.generate import parse_lengths
from eval.suite.score import score_dir
from vllm_landmark.config import DEFAULT_RETRIEVER, parse_retriever


def default_work_dir(name: str) -> Path:
    """Scratch space outside the repository: ``~/.cache/vllm-landmark/eval/NAME``."""
    from vllm_landmark.default_models import default_cache_dir

    return default_cache_dir() / "eval" / name


def machine() -> dict[str, Any]:
    """What the numbers were measured on (``eval.provenance.machine``), plus the checkout and
    the load average, as the suite's results record them."""
    from eval.provenance import code_revision, load_average
    from eval.provenance import machine as host

    return {**host(), "code": code_revision(), "load_avg": load_average()}


def filtered_suite(suite: Path, lengths: Sequence[int], work: Path) -> Path:
    """A copy of the suite restricted to some target lengths (config shared)."""
    out = work / f"suite-{'-'.join(str(n) for n in lengths)}"
    (out / "data").mkdir(parents=True, exist_ok=True)
    for path in sorted((suite / "data").glob("*.jsonl")):
        keep = [
            line
            for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
            if line.strip() and json.loads(line).get("target_length") in lengths
        ]
        (out / "data" / path.name).write_text("".join(keep), encoding="utf-8")
    config = out / "config"
    config.mkdir(exist_ok=True)
    for name in ("dataset2prompt.json", "dataset2maxlen.json"):
        (config / name).write_text((suite / "config" / name).read_text(encoding="utf-8"))
    return out


def run_pred(args: list[str]) -> tuple[int, float]:
    """Run eval.longbench.pred in-process; return (exit code, seconds)."""
    started = time.perf_counter()
    code = pred_main(args)
    return code, time.perf_counter() - started


def rescore(path: Path) -> int:
    """Score the prediction folders of an existing result file again (no servers)."""
    report = json.loads(path.read_text())
    for run in report["runs"]:
        out = Path(run["pred_args"][run["pred_args"].index("--out") + 1])
        run["result"] = score_dir(out, run["label"])
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"rescored {len(report['runs'])} run(s) in {path}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m eval.suite.run", description=__doc__)
    parser.add_argument("--suite", type=Path, required=True, help="eval.suite.generate output")
    parser.add_argument("--model", help="model folder (default: the prepared SmolLM2)")
    parser.add_argument("--window", type=int, default=8192, help="--max-model-len of both")
    parser.add_argument("--full-lengths", default="2048,4096", help="target lengths, full mode")
    parser.add_argument("--budgets", default="512,1024", help="plugin mode soft-token budgets")
    parser.add_argument("--retrieval-budgets", default="1024", help="retrieval-only budgets")
    parser.add_argument(
        "--compare-budgets", default="", help="equal-budget comparison at these budgets"
    )
    parser.add_argument(
        "--retriever", default="default", help="M3 folder for --compare-budgets, or 'default'"
    )
    parser.add_argument("--limit", type=int, help="items per data set")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--work", type=Path, default=default_work_dir("suite-work"))
    parser.add_argument("--out", type=Path, default=Path("eval/results/suite_cpu.json"))
    parser.add_argument("--server-arg", action="append", default=[], help="extra server flag")
    parser.add_argument("--note", action="append", default=[], help="a line for the report")
    parser.add_argument(
        "--rescore", action="store_true", help="only score the predictions of --out's runs again"
    )
    args = parser.parse_args(argv)
    header = provenance(  # before the work: its load average is the run's start
        "eval.suite.run", argv, config=vars(args), embedder="auto (server default)"
    )
    if args.rescore:
        return rescore(args.out)

    from vllm_landmark.testing.server_process import ServerProcess

    host = machine()  # before the servers load the CPUs
    model = args.model
    if model is None:
        from vllm_landmark.default_models import prepare_default_llm

        model = str(prepare_default_llm())
    manifest = json.loads((args.suite / "manifest.json").read_text())
    args.work.mkdir(parents=True, exist_ok=True)
    common = ["--max-model-len", str(args.window), *args.server_arg]
    budgets = [int(b) for b in args.budgets.split(",") if b]
    retrieval = [int(b) for b in args.retrieval_budgets.split(",") if b]
    compare = [int(b) for b in args.compare_budgets.split(",") if b]
    budgets = sorted(set(budgets) | set(compare))
    retriever = args.retriever
    if compare and parse_retriever(retriever) is DEFAULT_RETRIEVER:
        from vllm_landmark.default_models import prepare_default_retriever

        retriever = str(prepare_default_retriever())
    full_lengths = parse_lengths(args.full_lengths) if args.full_lengths else []
    limit = ["--limit", str(args.limit)] if args.limit else []
    runs: list[dict[str, Any]] = []

    def predict(label: str, server: Any, data: Path, extra: list[str]) -> None:
        out = args.work / label
        pred_args = [
            "--data-dir", str(data), "--base-url", server.base_url, "--model", model,
            "--out", str(out), "--concurrency", str(args.concurrency), "--no-progress",
            *limit, *extra,
        ]  # fmt: skip
        print(f"== {label}: pred {' '.join(pred_args)}", file=sys.stderr, flush=True)
        code, seconds = run_pred(pred_args)
        result = score_dir(out, label)
        runs.append(
            {
                "label": label,
                "server": "vllm" if not server.landmark else "landmark",
                "pred_args": pred_args,
                "exit_code": code,
                "seconds": round(seconds, 1),
                "result": result,
            }
        )
        print(f"== {label}: average {result['average']} in {seconds:.0f} s", file=sys.stderr)

    started = time.perf_counter()
    servers: dict[str, float | None] = {}
    if full_lengths or compare:
        with ServerProcess(model, common, landmark=False, log_dir=args.work) as plain:
            servers["vllm_startup_s"] = plain.startup_seconds
            if full_lengths:
                data = filtered_suite(args.suite, full_lengths, args.work)
                predict("full", plain, data, ["--mode", "full"])
            for budget in compare:
                predict(
                    f"truncate-b{budget}",
                    plain,
                    args.suite,
                    ["--mode", "truncate", "--budget", str(budget)],
                )
                predict(
                    f"retrieval-m3-b{budget}",
                    plain,
                    args.suite,
                    ["--mode", "retrieval-only", "--budget", str(budget), "--retriever", "m3",
                     "--retriever-model", retriever],
                )  # fmt: skip
    for budget in compare:
        planned = [*common, "--landmark-budget", str(budget), "--landmark-retriever", retriever]
        with ServerProcess(model, planned, landmark=True, log_dir=args.work) as plugin:
            servers[f"landmark_retriever_b{budget}_startup_s"] = plugin.startup_seconds
            predict(
                f"plugin-retrieval-b{budget}",
                plugin,
                args.suite,
                ["--mode", "plugin", "--server-plans", "--budget", str(budget)],
            )
    if budgets or retrieval:
        landmark_args = [*common, "--landmark-budget", str(max(budgets or [1024]))]
        with ServerProcess(model, landmark_args, landmark=True, log_dir=args.work) as plugin:
            servers["landmark_startup_s"] = plugin.startup_seconds
            for budget in budgets:
                predict(
                    f"plugin-b{budget}",
                    plugin,
                    args.suite,
                    ["--mode", "plugin", "--budget", str(budget)],
                )
            for budget in retrieval:
                predict(
                    f"retrieval-lexical-b{budget}",
                    plugin,
                    args.suite,
                    ["--mode", "retrieval-only", "--budget", str(budget)],
                )
    report = {
        "kind": "suite",
        "machine": host,
        "model": Path(model).name,
        "dtype": "float32",
        "window": args.window,
        "subset": {
            "languages": manifest["languages"],
            "tasks": manifest["tasks"],
            "lengths": manifest["lengths"],
            "per_length": manifest["per_length"],
            "full_mode_lengths": full_lengths,
            "compare_budgets": compare,
            "retriever": retriever if compare else None,
            "limit": args.limit,
            "seed": manifest["seed"],
            "regenerate": manifest["regenerate"],
            "packages": manifest["packages"],
        },
        "servers": servers,
        "notes": args.note,
        "command": "python -m eval.suite.run " + " ".join(argv or sys.argv[1:]),
        "total_seconds": round(time.perf_counter() - started, 1),
        "runs": runs,
    }
    write_result(args.out, report, header, indent=1, ensure_ascii=False)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if all(r["exit_code"] in (0, 1) for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
