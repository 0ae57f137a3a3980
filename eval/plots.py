"""PNG plots from the evaluation JSON: quality vs compression budget, latency vs document length.

    python -m eval.plots [--suite eval/results/suite_cpu.json]
        [--serving eval/results/serving_cpu.json] [--out-dir eval/results]
        [--qa eval/results/qa_test_plan_4k.json eval/results/qa_test_plan_8k.json ...]
        [--qa-cross eval/results/qa_test_cross3_4k.json ...]

Small files on purpose (about 30-60 KB each): they are committed next to the JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DPI = 80


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _k_ticks(ax: Any, axis: str = "x") -> None:
    """Log-2 axis labelled 512, 1K, 2K, ... instead of powers of two."""
    from matplotlib.ticker import FuncFormatter

    def label(value: float, _pos: int) -> str:
        return f"{value / 1024:g}K" if value >= 1024 else f"{value:g}"

    getattr(ax, f"{axis}axis").set_major_formatter(FuncFormatter(label))


def _plain_log_y(ax: Any) -> None:
    """Log y axis with plain numbers."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _budget_of(run: dict[str, Any]) -> int | None:
    settings = ((run.get("result") or {}).get("run") or {}).get("settings") or {}
    return settings.get("budget")


def quality_points(suite: dict[str, Any]) -> dict[str, dict[int, list[tuple[int, float]]]]:
    """{kind: {target length: [(tokens the LLM sees for the document, score)]}}.

    kind is "plugin", "full" or "retrieval"; for full mode the x value is the target length
    (nothing compressed), for the others the run's budget.
    """
    out: dict[str, dict[int, list[tuple[int, float]]]] = {}
    for run in suite["runs"]:
        label = run["label"]
        kind = "full" if label == "full" else "retrieval" if "retrieval" in label else "plugin"
        for length, score in run["result"]["lengths"].items():
            if score is None:
                continue
            x = int(length) if kind == "full" else _budget_of(run)
            if x is None:
                continue
            out.setdefault(kind, {}).setdefault(int(length), []).append((x, score))
    for per in out.values():
        for points in per.values():
            points.sort()
    return out


def plot_quality(suite: dict[str, Any], path: Path) -> Path:
    """Suite average vs the budget, one line per target length; full and retrieval markers."""
    plt = _pyplot()
    points = quality_points(suite)
    lengths = sorted({n for per in points.values() for n in per})
    colors = dict(
        zip(
            lengths,
            plt.cm.viridis([i / max(1, len(lengths)) for i in range(len(lengths))]),
            strict=True,
        )
    )  # noqa: E501
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=DPI)
    styles = {"plugin": ("o-", "plugin (document part)"), "full": ("*", "plain vLLM, pasted"),
              "retrieval": ("^", "retrieval-only (lexical)")}  # fmt: skip
    for kind, (style, name) in styles.items():
        for length in lengths:
            series = points.get(kind, {}).get(length)
            if not series:
                continue
            xs, ys = zip(*series, strict=True)
            ax.plot(xs, ys, style, color=colors[length], markersize=9 if kind != "plugin" else 5,
                    label=f"{name}, {length // 1024}K")  # fmt: skip
    ax.set_xscale("log", base=2)
    _k_ticks(ax)
    ax.set_xlabel("tokens the LLM attends to for the document (budget)")
    ax.set_ylabel("suite score (0-100)")
    subset = suite.get("subset") or {}
    per_point = (
        subset.get("per_length", 0)
        * len(subset.get("tasks", []))
        * len(subset.get("languages", []))
    )
    ax.set_title(
        f"Quality vs compression budget ({suite.get('model', '')}, {per_point} items per point)",
        fontsize=10,
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_latency(serving: dict[str, Any], path: Path, concurrency: int = 1) -> Path:
    """Time to first token, end-to-end latency and peak RSS vs document length, per server."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.3), dpi=DPI)
    names = {"vllm": "plain vLLM (pasted)", "landmark": f"plugin (budget {serving.get('budget')})"}
    for server, label in names.items():
        rows = [p for p in serving["points"] if p["server"] == server
                and p["concurrency"] == concurrency and not p.get("skipped")]  # fmt: skip
        if not rows:
            continue
        rows.sort(key=lambda p: p["document_tokens"])
        xs = [p["document_tokens"] for p in rows]
        for ax, key in zip(axes, ("ttft_s", "e2e_s", "peak_rss_gib"), strict=True):
            ax.plot(xs, [p[key] for p in rows], "o-", label=label)
    titles = ("time to first token (s)", "end-to-end latency (s)", "peak RSS, server tree (GiB)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        _k_ticks(ax)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("document tokens", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
    _plain_log_y(axes[0])
    _plain_log_y(axes[1])
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"{serving.get('model', '')}, {serving.get('max_tokens')} new tokens, "
        f"concurrency {concurrency}, window {serving.get('window')}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def qa_length(report: dict[str, Any]) -> int:
    """The document length of a QA run: its items' target length (``qa-8k``, ``qa-cross-8k``,
    ``qa-cross3-8k`` -> 8192)."""
    match = re.search(r"qa-(?:cross\d*-)?(\d+)k", Path(report["items_file"]).name)
    if match:
        return int(match[1]) * 1024
    return int(report["mean_length"])


def plot_qa_lengths(reports: Sequence[dict[str, Any]], path: Path, what: str = "QA") -> Path:
    """Answer log-prob (95% interval) and degeneration rate of each arm vs document length."""
    budget = max(reports, key=qa_length)["budget"]
    title = f"held-out {what}, budget {budget}"
    return _plot_qa(reports, path, qa_length, "document length (LLM tokens)", title)


def plot_qa_budgets(reports: Sequence[dict[str, Any]], path: Path) -> Path:
    """The same vs the budget (runs over one document length at several budgets)."""
    lengths = sorted({qa_length(r) for r in reports})
    title = f"held-out QA, {'/'.join(f'{n // 1024}K' for n in lengths)} documents"
    return _plot_qa(reports, path, lambda r: int(r["budget"]), "budget (tokens of context)", title)


def _plot_qa(
    reports: Sequence[dict[str, Any]],
    path: Path,
    x_of: Any,
    xlabel: str,
    title: str,
) -> Path:
    """One point per (report, arm) at ``x_of(report)``: log-prob with its interval (left) and
    the degeneration rate (right); arms of the report with the largest x."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    by_x = sorted(reports, key=x_of)
    arms = [a for a in by_x[-1]["summary"]["arms"] if not a.startswith("fragments")]
    for index, arm in enumerate(arms):
        xs, ys, los, his, degen = [], [], [], [], []
        for report in by_x:
            stats = report["summary"]["arms"].get(arm)
            if not stats or "logprob" not in stats:
                continue
            x = x_of(report) * 2 ** ((index - len(arms) / 2) * 0.025)  # spread the bars
            lp = stats["logprob"]
            xs.append(x)
            ys.append(lp["mean"])
            los.append(lp["mean"] - lp["low"])
            his.append(lp["high"] - lp["mean"])
            degen.append(100 * stats["degenerate"]["mean"] if "degenerate" in stats else None)
        if not xs:
            continue
        left.errorbar(xs, ys, yerr=[los, his], marker="o", capsize=3, label=arm)
        points = [(x, d) for x, d in zip(xs, degen, strict=True) if d is not None]
        if points:
            right.plot(*zip(*points, strict=True), marker="o", label=arm)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        _k_ticks(ax)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    left.set_ylabel("gold answer log-prob / token")
    right.set_ylabel("degenerate answers (%)")
    left.set_title(f"{title} (95% intervals)", fontsize=9)
    right.set_title("greedy answers: empty or one repeated token", fontsize=9)
    left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m eval.plots", description=__doc__)
    parser.add_argument("--suite", type=Path, default=Path("eval/results/suite_cpu.json"))
    parser.add_argument("--serving", type=Path, default=Path("eval/results/serving_cpu.json"))
    parser.add_argument("--out-dir", type=Path, default=Path("eval/results"))
    parser.add_argument(
        "--qa", type=Path, nargs="*", default=[], help="qa_run reports, one per length"
    )
    parser.add_argument(
        "--qa-budgets", type=Path, nargs="*", default=[], help="qa_run reports, one per budget"
    )
    parser.add_argument(
        "--qa-cross",
        type=Path,
        nargs="*",
        default=[],
        help="qa_run reports on cross-language items (eval.suite.qa_cross), one per length",
    )
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    if args.qa:
        reports = [json.loads(p.read_text()) for p in args.qa]
        made.append(plot_qa_lengths(reports, args.out_dir / "qa_vs_length.png"))
    if args.qa_cross:
        reports = [json.loads(p.read_text()) for p in args.qa_cross]
        path = args.out_dir / "qa_vs_length_cross.png"
        made.append(plot_qa_lengths(reports, path, "cross-language QA"))
    if args.qa_budgets:
        reports = [json.loads(p.read_text()) for p in args.qa_budgets]
        made.append(plot_qa_budgets(reports, args.out_dir / "qa_vs_budget.png"))
    if args.suite.is_file():
        suite = json.loads(args.suite.read_text())
        made.append(plot_quality(suite, args.out_dir / "quality_vs_budget.png"))
    if args.serving.is_file():
        serving = json.loads(args.serving.read_text())
        made.append(plot_latency(serving, args.out_dir / "latency_vs_length.png"))
    if not made:
        print(
            "error: no result JSON found; run eval.suite.run / eval.benchmarks.bench_serving",
            file=sys.stderr,
        )
        return 2
    for path in made:
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
