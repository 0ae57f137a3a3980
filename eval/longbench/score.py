"""Score LongBench v1 / LongBench-E prediction files the way the published ``eval.py`` does.

Input: a folder with one ``<dataset>.jsonl`` per data set (``qasper.jsonl``; LongBench-E runs may
also name them ``qasper_e.jsonl``), each line a JSON object with ``pred`` (str), ``answers``
(list of str), ``all_classes`` (list of str or null; needed for trec/lsht) and, for LongBench-E,
``length``. Other keys are ignored.

Per data set, each item scores the best metric value over its answers (trec, triviaqa, samsum
and lsht predictions are first cut to their first line); the data set score is the mean x 100,
rounded to 2 decimals. With ``--e`` items are bucketed by ``length`` into 0-4k, 4-8k and 8k+.
Category scores are the mean of the (rounded) data set scores in each category; the averages
are the mean of the category scores and the flat mean over data sets. Everything is written to
``result.json`` in the folder (or ``--output``) and printed as a table.

Exactness notes: v1 scores sum items left to right and use Python's ``round``; LongBench-E
bucket scores reproduce ``round(100 * numpy.mean(x), 2)`` bit for bit (numpy's pairwise
summation and its multiply-rint-divide rounding) without importing numpy. Unlike the published
script, ``all_classes`` is read per line (the published one uses the last line's for the whole
file; LongBench's files carry the same list on every line), empty buckets give ``null``
instead of NaN, and bad lines are reported and skipped instead of aborting the run.

CLI: ``python -m eval.longbench.score --pred-dir DIR [--e] [--output FILE] [--quiet]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.longbench.data import jsonl_lines
from eval.longbench.metrics import (
    CATEGORIES,
    DATASET2CATEGORY,
    DATASET2METRIC,
    LONGBENCH_E_DATASETS,
    base_dataset,
    classification_score,
    score_item,
)

#: LongBench-E length buckets: label -> [low, high) in the data set's ``length`` unit.
BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("0-4k", 0.0, 4000.0),
    ("4-8k", 4000.0, 8000.0),
    ("8k+", 8000.0, math.inf),
)
BUCKET_NAMES: tuple[str, ...] = tuple(name for name, _, _ in BUCKETS)

#: Canonical order of the data sets (category order, then the published order within it).
DATASET_ORDER: tuple[str, ...] = tuple(name for names in CATEGORIES.values() for name in names)

Score = float | None
DatasetScore = Score | dict[str, Score]


class ScoringError(Exception):
    """Raised for problems that stop the whole run (missing folder, nothing to score)."""


@dataclass
class Item:
    """One prediction line, validated."""

    lineno: int
    pred: str
    answers: list[str]
    all_classes: list[str] | None
    length: float | None


@dataclass
class DatasetResult:
    """Score of one data set file plus bookkeeping."""

    dataset: str
    path: Path
    score: DatasetScore
    scored: int
    malformed: int
    bucket_counts: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- numeric helpers


def _pairwise_sum(values: Sequence[float], start: int, count: int) -> float:
    """numpy's float64 pairwise summation (8-way unrolled blocks of up to 128 values)."""
    if count < 8:
        total = 0.0
        for i in range(start, start + count):
            total += values[i]
        return total
    if count <= 128:
        acc = [values[start + j] for j in range(8)]
        i = 8
        end_unrolled = count - count % 8
        while i < end_unrolled:
            for j in range(8):
                acc[j] += values[start + i + j]
            i += 8
        total = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
        for k in range(i, count):
            total += values[start + k]
        return total
    half = count // 2
    half -= half % 8
    return _pairwise_sum(values, start, half) + _pairwise_sum(values, start + half, count - half)


def numpy_mean(values: Sequence[float]) -> float:
    """Bit-identical to ``numpy.mean`` of a float64 vector; NaN for an empty one."""
    if not values:
        return math.nan
    return _pairwise_sum([float(v) for v in values], 0, len(values)) / len(values)


def numpy_round2(value: float) -> float:
    """``round(numpy.float64(value), 2)``: scale by 100, round half to even, scale back."""
    return round(value * 100.0) / 100.0


def score_v1(scores: Sequence[float]) -> Score:
    """Published v1 data set score: left-to-right sum, ``round(100 * total / n, 2)``."""
    if not scores:
        return None
    total = 0.0
    for value in scores:
        total += value
    return round(100 * total / len(scores), 2)


def score_e(scores: Sequence[float]) -> Score:
    """Published LongBench-E bucket score ``round(100 * np.mean(scores), 2)``; None if empty."""
    if not scores:
        return None
    return numpy_round2(100 * numpy_mean(scores))


def bucket_of(length: float) -> str:
    """LongBench-E bucket label for an input length (< 4000, < 8000, else 8k+)."""
    for name, _, high in BUCKETS[:-1]:
        if length < high:
            return name
    return BUCKETS[-1][0]


def mean2(values: Sequence[Score]) -> Score:
    """Mean of the non-None values, rounded to 2 decimals; None if there are none."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return round(sum(present) / len(present), 2)


# --------------------------------------------------------------------------- reading


def dataset_name(path: Path) -> str:
    """Data set name of a prediction file: the file name up to its first dot."""
    return path.name.split(".")[0]


def _parse_item(obj: Any, lineno: int, need_length: bool, need_classes: bool) -> Item:
    """Validate one decoded JSON line; raise ValueError with the reason."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    pred = obj.get("pred")
    if not isinstance(pred, str):
        raise ValueError('"pred" is missing or not a string')
    answers = obj.get("answers")
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise ValueError('"answers" is missing or not a list of strings')
    classes = obj.get("all_classes")
    if classes is not None and (
        not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)
    ):
        raise ValueError('"all_classes" is not a list of strings')
    if need_classes and classes is None:
        raise ValueError('"all_classes" is required for this data set')
    length = obj.get("length")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int | float)):
        raise ValueError('"length" is not a number')
    if need_length and length is None:
        raise ValueError('"length" is required for LongBench-E scoring')
    return Item(lineno=lineno, pred=pred, answers=answers, all_classes=classes, length=length)


def read_items(
    path: Path, dataset: str, *, need_length: bool = False
) -> tuple[list[Item], list[str]]:
    """Read a prediction file; return the valid items and one message per skipped line.

    Blank lines are ignored. A line that is not valid JSON, lacks a required field or whose
    answers cannot be scored is skipped and reported as ``FILE:LINE: reason``.
    """
    need_classes = DATASET2METRIC[dataset] is classification_score
    items: list[Item] = []
    errors: list[str] = []
    for lineno, obj, bad_json in jsonl_lines(path, errors="strict"):
        if bad_json is not None:
            errors.append(
                f"{path}:{lineno}: invalid JSON ({bad_json.msg}, column {bad_json.colno})"
            )
            continue
        try:
            items.append(_parse_item(obj, lineno, need_length, need_classes))
        except ValueError as exc:
            errors.append(f"{path}:{lineno}: {exc}")
    return items, errors


# --------------------------------------------------------------------------- scoring


def score_file(path: Path, dataset: str, *, longbench_e: bool = False) -> DatasetResult:
    """Score one prediction file (v1 score, or LongBench-E buckets)."""
    items, errors = read_items(path, dataset, need_length=longbench_e)
    values: list[float] = []
    kept: list[Item] = []
    for item in items:
        try:
            values.append(score_item(dataset, item.pred, item.answers, item.all_classes))
        except ValueError as exc:  # e.g. a retrieval answer without "Paragraph N"
            errors.append(f"{path}:{item.lineno}: cannot score: {exc}")
            continue
        kept.append(item)
    for message in errors:
        print(f"warning: skipped line: {message}", file=sys.stderr)
    if not longbench_e:
        return DatasetResult(dataset, path, score_v1(values), len(values), len(errors))
    per_bucket: dict[str, list[float]] = {name: [] for name in BUCKET_NAMES}
    for item, value in zip(kept, values, strict=True):
        assert item.length is not None
        per_bucket[bucket_of(item.length)].append(value)
    return DatasetResult(
        dataset,
        path,
        {name: score_e(vals) for name, vals in per_bucket.items()},
        len(values),
        len(errors),
        {name: len(vals) for name, vals in per_bucket.items()},
    )


def _sort_key(dataset: str) -> tuple[int, str]:
    base = base_dataset(dataset)
    if base in DATASET_ORDER:
        return DATASET_ORDER.index(base), dataset
    return len(DATASET_ORDER), dataset


def aggregate(scores: dict[str, DatasetScore], *, longbench_e: bool = False) -> dict[str, Any]:
    """Category means and the two overall averages from per-data-set scores.

    Returns ``{"categories": ..., "average": {"category_mean": ..., "dataset_mean": ...}}``; with
    ``longbench_e`` every value is a ``{bucket: score}`` dict. Categories without any scored data
    set are None and left out of the category mean.
    """

    def combine(pick: Any) -> dict[str, Any]:
        by_cat: dict[str, list[Score]] = {cat: [] for cat in CATEGORIES}
        for name, value in scores.items():
            by_cat[DATASET2CATEGORY[name]].append(pick(value))
        categories = {cat: mean2(vals) for cat, vals in by_cat.items()}
        return {
            "categories": categories,
            "category_mean": mean2(list(categories.values())),
            "dataset_mean": mean2([pick(v) for v in scores.values()]),
        }

    if not longbench_e:
        out = combine(lambda v: v)
        return {
            "categories": out["categories"],
            "average": {k: out[k] for k in ("category_mean", "dataset_mean")},
        }
    per_bucket = {b: combine(lambda v, b=b: v[b]) for b in BUCKET_NAMES}
    return {
        "categories": {
            cat: {b: per_bucket[b]["categories"][cat] for b in BUCKET_NAMES} for cat in CATEGORIES
        },
        "average": {
            key: {b: per_bucket[b][key] for b in BUCKET_NAMES}
            for key in ("category_mean", "dataset_mean")
        },
    }


def score_dir(pred_dir: Path | str, *, longbench_e: bool = False) -> dict[str, Any]:
    """Score every ``*.jsonl`` in ``pred_dir``; return the result.json content.

    Files with an unknown data set name are reported on stderr and listed under
    ``"skipped_files"``. Raises ``ScoringError`` if the folder is missing or nothing scored.
    """
    folder = Path(pred_dir)
    if not folder.exists():
        raise ScoringError(f"prediction folder not found: {folder}")
    if not folder.is_dir():
        raise ScoringError(f"not a folder: {folder}")
    files = sorted(p for p in folder.iterdir() if p.name.endswith("jsonl") and p.is_file())
    if not files:
        raise ScoringError(f"no *.jsonl prediction files in {folder}")

    results: list[DatasetResult] = []
    skipped: dict[str, str] = {}
    for path in files:
        name = dataset_name(path)
        if name not in DATASET2METRIC:
            reason = f"unknown data set name {name!r}"
            print(
                f"error: {path}: {reason}; expected one of: {', '.join(sorted(DATASET2METRIC))}",
                file=sys.stderr,
            )
            skipped[path.name] = reason
            continue
        if longbench_e and base_dataset(name) not in LONGBENCH_E_DATASETS:
            print(f"note: {path}: {name!r} is not a LongBench-E data set", file=sys.stderr)
        result = score_file(path, name, longbench_e=longbench_e)
        if result.scored == 0:
            print(f"error: {path}: no scorable lines", file=sys.stderr)
        results.append(result)
    if not results:
        raise ScoringError(f"no prediction file in {folder} has a known LongBench data set name")

    results.sort(key=lambda r: _sort_key(r.dataset))
    scores = {r.dataset: r.score for r in results}
    counts: dict[str, dict[str, Any]] = {}
    for r in results:
        counts[r.dataset] = {"scored": r.scored, "malformed": r.malformed}
        if longbench_e:
            counts[r.dataset]["buckets"] = r.bucket_counts
    present = {base_dataset(name) for name in scores}
    expected = LONGBENCH_E_DATASETS if longbench_e else DATASET_ORDER
    return {
        "benchmark": "LongBench-E" if longbench_e else "LongBench",
        "datasets": scores,
        **aggregate(scores, longbench_e=longbench_e),
        "counts": counts,
        "missing_datasets": [name for name in expected if name not in present],
        "skipped_files": skipped,
    }


# --------------------------------------------------------------------------- output


def _fmt(value: Score) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(result: dict[str, Any]) -> str:
    """Plain-text table of a ``score_dir`` result."""
    longbench_e = result["benchmark"] == "LongBench-E"
    cols = list(BUCKET_NAMES) if longbench_e else ["score"]
    width = max([24, *(len(n) + 2 for n in result["datasets"])])

    def row(label: str, value: DatasetScore, extra: str = "") -> str:
        cells = [_fmt(value[c]) for c in cols] if isinstance(value, dict) else [_fmt(value)]
        return f"{label:<{width}}" + "".join(f"{c:>9}" for c in cells) + extra

    lines = [f"{result['benchmark']}", f"{'dataset':<{width}}" + "".join(f"{c:>9}" for c in cols)]
    lines.append("-" * len(lines[-1]))
    for name, value in result["datasets"].items():
        count = result["counts"][name]
        extra = f"   n={count['scored']}"
        if count["malformed"]:
            extra += f" ({count['malformed']} skipped)"
        lines.append(row(name, value, extra))
    lines.append("-" * len(lines[1]))
    for cat, value in result["categories"].items():
        lines.append(row(f"[{cat}]", value))
    lines.append("-" * len(lines[1]))
    lines.append(row("avg of categories", result["average"]["category_mean"]))
    lines.append(row("avg of datasets", result["average"]["dataset_mean"]))
    if result["missing_datasets"]:
        lines.append(f"missing: {', '.join(result['missing_datasets'])}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m eval.longbench.score",
        description="Score LongBench v1 / LongBench-E prediction jsonl files.",
    )
    parser.add_argument("--pred-dir", required=True, help="folder with <dataset>.jsonl files")
    parser.add_argument(
        "--e", dest="longbench_e", action="store_true", help="LongBench-E: bucket by length"
    )
    parser.add_argument("--output", help="where to write the JSON (default PRED_DIR/result.json)")
    parser.add_argument("--quiet", action="store_true", help="do not print the table")
    args = parser.parse_args(argv)

    try:
        result = score_dir(args.pred_dir, longbench_e=args.longbench_e)
    except ScoringError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out_path = Path(args.output) if args.output else Path(args.pred_dir) / "result.json"
    out_path.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    if not args.quiet:
        print(format_table(result))
        print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
