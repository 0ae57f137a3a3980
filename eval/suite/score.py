"""Score predictions of the local suite with LongBench's metrics (its own data set table).

The suite's names (``needle_en`` ...) are kept out of ``eval.longbench.metrics.DATASET2METRIC``
so LongBench scoring stays exactly the published one. Metrics per task:

* ``needle``: LongBench's QA F1 (``qa_f1_zh_score`` for Chinese), the single-doc QA metric.
* ``multi_needle``: share of the code words found in the answer (normalised as QA F1 does).
* ``passkey``: share of the numbers in the answer equal to the key (LongBench's
  ``count_score`` rule).
* ``section``: share of the numbers in the answer equal to the section number (the rule of
  LongBench's ``passage_retrieval``).
* ``summary``: ROUGE-L F (``rouge_zh_score`` for Chinese), as for LongBench's summaries.

Each item scores its best answer; data set scores are means x 100 rounded to 2 decimals, also
per ``target_length``; task, language and length scores are means of data set scores.

    python -m eval.suite.score --pred-dir DIR [--output FILE] [--label NAME]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.longbench.data import jsonl_lines
from eval.longbench.metrics import (
    Metric,
    count_score,
    normalize_answer,
    normalize_zh_answer,
    qa_f1_score,
    qa_f1_zh_score,
    rouge_score,
    rouge_zh_score,
)
from eval.longbench.score import mean2, score_v1
from eval.suite.tasks import TASKS, parse_dataset

_NUMBER = re.compile(r"\d+")


def needle_recall(
    prediction: str, ground_truth: str, *, all_classes: Sequence[str] | None = None
) -> float:
    """Share of the comma-separated gold values found in the prediction (normalised)."""
    values = [v for v in re.split(r"[,、，]", ground_truth) if v.strip()]
    if not values:
        return 0.0
    is_zh = any("\u4e00" <= ch <= "\u9fff" for ch in ground_truth)
    norm = normalize_zh_answer if is_zh else normalize_answer
    pred = norm(prediction)
    return sum(1 for v in values if norm(v) and norm(v) in pred) / len(values)


def section_score(
    prediction: str, ground_truth: str, *, all_classes: Sequence[str] | None = None
) -> float:
    """Share of the numbers in the prediction equal to the gold section number."""
    gold = _NUMBER.findall(ground_truth)
    numbers = _NUMBER.findall(prediction)
    if not gold or not numbers:
        return 0.0
    return sum(1 for n in numbers if n == gold[0]) / len(numbers)


#: Task -> (metric for English/German, metric for Chinese).
TASK_METRICS: dict[str, tuple[Metric, Metric]] = {
    "needle": (qa_f1_score, qa_f1_zh_score),
    "multi_needle": (needle_recall, needle_recall),
    "passkey": (count_score, count_score),
    "section": (section_score, section_score),
    "summary": (rouge_score, rouge_zh_score),
}
assert set(TASK_METRICS) == set(TASKS)


def metric_for(dataset: str) -> Metric:
    """The metric of a suite data set name."""
    task, lang = parse_dataset(dataset)
    english_like, chinese = TASK_METRICS[task]
    return chinese if lang == "zh" else english_like


def score_item(dataset: str, prediction: str, answers: Sequence[str]) -> float:
    """Best metric value over the answers."""
    metric = metric_for(dataset)
    return max((metric(prediction, a) for a in answers), default=0.0)


def read_predictions(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Valid prediction lines and one ``FILE:LINE: reason`` per skipped line."""
    items, errors = [], []
    for lineno, obj, bad_json in jsonl_lines(path):
        if bad_json is not None:
            errors.append(f"{path}:{lineno}: invalid JSON ({bad_json.msg})")
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("pred"), str):
            errors.append(f"{path}:{lineno}: no string 'pred'")
            continue
        answers = obj.get("answers")
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            errors.append(f"{path}:{lineno}: 'answers' is not a list of strings")
            continue
        items.append(obj)
    return items, errors


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 2) if values else None


def _last_run(pred_dir: Path) -> dict[str, Any] | None:
    path = pred_dir / "run.json"
    try:
        runs = json.loads(path.read_text()).get("runs", [])
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    if not runs:
        return None
    keep = ("command", "backend", "model", "window", "settings", "retriever", "machine")
    return {k: runs[-1].get(k) for k in keep}


def score_dir(pred_dir: Path | str, label: str | None = None) -> dict[str, Any]:
    """Score every suite ``*.jsonl`` in a folder; return the result dictionary."""
    folder = Path(pred_dir)
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no *.jsonl prediction files in {folder}")
    datasets: dict[str, float | None] = {}
    by_length: dict[str, dict[str, float | None]] = {}
    counts: dict[str, dict[str, int]] = {}
    stats: dict[str, dict[str, Any]] = {}
    for path in files:
        name = path.name.split(".")[0]
        try:
            parse_dataset(name)
        except ValueError as exc:
            print(f"note: {path}: skipped ({exc})", file=sys.stderr)
            continue
        items, errors = read_predictions(path)
        for message in errors:
            print(f"warning: skipped line: {message}", file=sys.stderr)
        values = [score_item(name, it["pred"], it["answers"]) for it in items]
        datasets[name] = score_v1(values)
        lengths: dict[int, list[float]] = {}
        for item, value in zip(items, values, strict=True):
            lengths.setdefault(int(item.get("target_length") or 0), []).append(value)
        by_length[name] = {str(k): score_v1(v) for k, v in sorted(lengths.items())}
        counts[name] = {
            "scored": len(values),
            "malformed": len(errors),
            "errors": sum(1 for it in items if it.get("error")),
        }
        stats[name] = _stats(items)
    if not datasets:
        raise FileNotFoundError(f"no suite prediction files (<task>_<lang>.jsonl) in {folder}")

    def group(key: int) -> dict[str, float | None]:
        out: dict[str, list[float]] = {}
        for name, value in datasets.items():
            if value is not None:
                out.setdefault(parse_dataset(name)[key], []).append(value)
        return {k: mean2(v) for k, v in out.items()}

    lengths_all: dict[str, list[float]] = {}
    for per in by_length.values():
        for length, value in per.items():
            if value is not None:
                lengths_all.setdefault(length, []).append(value)
    return {
        "benchmark": "vllm-landmark suite",
        "label": label or folder.name,
        "datasets": datasets,
        "by_length": by_length,
        "tasks": group(0),
        "languages": group(1),
        "lengths": {k: mean2(v) for k, v in sorted(lengths_all.items(), key=lambda p: int(p[0]))},
        "average": mean2([v for v in datasets.values() if v is not None]),
        "counts": counts,
        "stats": stats,
        "run": _last_run(folder),
    }


def _stats(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean prompt tokens, latency, and (plugin) raw vs injected document tokens."""
    prompt = [it["prompt_tokens"] for it in items if isinstance(it.get("prompt_tokens"), int)]
    latency = [it["latency_s"] for it in items if isinstance(it.get("latency_s"), int | float)]
    raw = [it["landmark"]["raw_document_tokens"] for it in items if it.get("landmark")]
    injected = [it["landmark"]["injected_document_tokens"] for it in items if it.get("landmark")]
    out: dict[str, Any] = {"prompt_tokens": _mean(prompt), "latency_s": _mean(latency)}
    if raw:
        out.update(raw_document_tokens=_mean(raw), injected_document_tokens=_mean(injected))
        embedders = sorted(
            {str(it["landmark"].get("embedder")) for it in items if it.get("landmark")}
        )
        out["embedder"] = ",".join(embedders)
    return out


def format_table(result: dict[str, Any]) -> str:
    """Plain-text table: data sets x target lengths."""
    lengths = sorted({k for per in result["by_length"].values() for k in per}, key=int)
    head = f"{'dataset':<18}" + "".join(f"{int(n) // 1024:>7}K" for n in lengths) + f"{'all':>8}"
    lines = [f"suite: {result['label']}", head, "-" * len(head)]
    for name, value in result["datasets"].items():
        per = result["by_length"][name]
        cells = "".join(f"{_fmt(per.get(n)):>8}" for n in lengths)
        lines.append(f"{name:<18}{cells}{_fmt(value):>8}")
    lines.append("-" * len(head))
    cells = "".join(f"{_fmt(result['lengths'].get(n)):>8}" for n in lengths)
    lines.append(f"{'average':<18}{cells}{_fmt(result['average']):>8}")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m eval.suite.score", description=__doc__)
    parser.add_argument("--pred-dir", type=Path, required=True)
    parser.add_argument("--output", type=Path, help="default PRED_DIR/result.json")
    parser.add_argument("--label", help="name of this run in reports (default: folder name)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = score_dir(args.pred_dir, args.label)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.output or args.pred_dir / "result.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    if not args.quiet:
        print(format_table(result))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
