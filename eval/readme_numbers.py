"""The README's measured numbers, made from the current result files.

``python -m eval.report`` writes each block below between ``<!-- report:NAME -->`` and
``<!-- /report -->`` in README.md (``eval.report.render_readme``), and ``--check`` fails when
the README holds anything else there. So every number the README states is one a file in
``eval/results/`` holds, and each row names its file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from eval.plots import qa_length
from eval.report import load_text, qa_cross_runs, qa_length_runs


def _read(results: Path, name: str) -> dict[str, Any]:
    path = results / name
    if not path.is_file():
        raise FileNotFoundError(f"the README cites {path}, which is not a current result")
    return json.loads(path.read_text())


def _diff(data: dict[str, Any], name: str) -> str:
    """``+0.12 [-0.01, 0.26]``: one paired difference of a QA run, log-prob per token."""
    d = data["summary"]["differences"][name]["logprob"]
    return f"{d['mean']:+.2f} [{d['low']:.2f}, {d['high']:.2f}]"


def _k(n: int) -> str:
    return f"{n // 1024}K"


def _load(data: dict[str, Any]) -> str:
    return load_text((data.get("provenance") or {}).get("load"))


def _files(paths: list[Path]) -> str:
    return ", ".join(f"`{p.name}`" for p in paths)


def _qa_rows(results: Path) -> list[list[str]]:
    quoted = [(p, json.loads(p.read_text())) for p in qa_length_runs(results)]
    quoted.sort(key=lambda pair: qa_length(pair[1]))
    cross = [(p, json.loads(p.read_text())) for p in qa_cross_runs(results)]
    cross.sort(key=lambda pair: qa_length(pair[1]))
    first = quoted[0][1]

    def per_length(runs: list[tuple[Path, dict[str, Any]]], name: str) -> str:
        return ", ".join(f"{_k(qa_length(d))} {_diff(d, name)}" for _, d in runs)

    return [
        [
            "Real-text QA, held-out split, quoted questions (man pages and Python docs in "
            f"{len(first['languages'])} languages; {first['model']}, budget {first['budget']:,}):"
            " the server's plan (windows around M3+BM25's best sentences) minus another arm, "
            "answer log-prob per token, 95% interval over pages",
            f"vs middle truncation {per_length(quoted, 'plan - truncate')}; vs BM25 "
            f"retrieval-only {per_length(quoted, 'plan - bm25')} (the questions quote the "
            "sentence before the answer, so BM25 is the ceiling here)",
            _files([p for p, _ in quoted]),
        ],
        [
            "The same, cross-language questions (the question quotes a sentence in another "
            "language and asks how the document starts it)",
            f"vs BM25 retrieval-only {per_length(cross, 'plan - bm25')}; vs middle truncation "
            f"{per_length(cross, 'plan - truncate')}; vs M3 retrieval-only "
            f"{per_length(cross, 'plan - m3')}",
            _files([p for p, _ in cross]),
        ],
    ]


def _factor_rows(results: Path) -> list[list[str]]:
    dev = _read(results, "qa_dev_factor_help_16k.json")
    test = _read(results, "qa_test_factor_help_16k.json")

    length = _k(qa_length(dev))
    share = 1 - dev["raw_share"]

    def ks(data: dict[str, Any]) -> str:
        names = [n for n in data["summary"]["differences"] if n.startswith("win-s64-k")]
        return ", ".join(
            f"k={n.split('-k', 1)[1].split('-', 1)[0]} {_diff(data, n)}" for n in names
        )

    ppl = _read(results, "perplexity.json")
    p = ppl["perplexity"]
    factors = ppl["settings"]["embedder_factors"]
    return [
        [
            f"Factor check of the shipped SmolLM2 embedder ({length} cross-language questions):"
            f" the window plan with {share:.0%} of the budget compressed at k, minus the same "
            "windows filling the budget",
            f"dev (decides): {ks(dev)}; held-out: {ks(test)}: no factor helps, so automatic "
            "plans stay at k = 1",
            "`qa_dev_factor_help_16k.json`, `qa_test_factor_help_16k.json`",
        ],
        [
            f"Next-{ppl['settings']['scored_tokens_per_sample'] + 1}-token perplexity after "
            f"{ppl['settings']['context_tokens']} context tokens as soft tokens "
            f"({ppl['settings']['samples']} held-out windows)",
            "shipped embedder "
            + " / ".join(f"{p[f'embedder@{k}']['ppl']:.1f}" for k in factors)
            + f" at k = {' / '.join(map(str, factors))}; untrained mean baseline "
            + " / ".join(f"{p[f'mean@{k}']['ppl']:.0f}" for k in factors)
            + f"; no context {p['none']['ppl']:.1f}, full context {p['full']['ppl']:.1f}",
            "`perplexity.json`",
        ],
    ]


def _suite_row(results: Path) -> list[str]:
    suite = _read(results, "suite_cpu.json")
    runs = {r["label"]: r["result"]["average"] for r in suite["runs"]}
    budget = next(r for r in suite["runs"] if r["label"] == "plugin-b1024")["result"]["run"]
    subset = suite["subset"]
    return [
        f"Local suite ({'/'.join(subset['languages'])}, {len(subset['tasks'])} tasks, "
        f"{_k(min(subset['lengths']))}-{_k(max(subset['lengths']))} tokens), score 0-100, "
        f"budget {budget['settings']['budget']:,}: the untrained mean baseline "
        "(`--landmark-embedder mean-baseline`, whole document at one factor) vs retrieval-only "
        "(BM25 spans pasted), same run",
        f"mean baseline {runs['plugin-b1024']:.2f} vs retrieval-only "
        f"{runs['retrieval-lexical-b1024']:.2f}: untrained soft tokens are no default",
        "`suite_cpu.json`",
    ]


def _ttft_rows(results: Path) -> list[list[str]]:
    rows = []
    for name, what in (
        ("bench_ttft_auto_factor_check.json", "no retriever (head and tail at k = 1)"),
        ("bench_ttft_retriever_quiet.json", "`--landmark-retriever default` (ONNX Runtime)"),
    ):
        d = _read(results, name)
        t = d["median_ttft_s"]
        rows.append(
            [
                f"Time to first token, {d['document_tokens']:,}-token document pasted vs sent as "
                f"a document at budget {d['budget']:,}, {what}",
                f"{t['plain_text']:.2f} s vs {t['plugin']:.2f} s (x{d['speedup']:.1f}); the same "
                f"document again {d['prefix_cache']['same_document_again_s']:.2f} s; "
                f"{_load(d)}",
                f"`{name}`",
            ]
        )
    return rows


def _serving_rows(results: Path) -> list[list[str]]:
    overhead = _read(results, "bench_overhead.json")["ratios"]
    affinity = _read(results, "bench_affinity.json")
    a, lb = affinity["summary"]["affinity"], affinity["summary"]["load_balanced"]
    return [
        [
            "Overhead without documents (tiny model): plugin / plain vLLM",
            f"latency median x{overhead['sequential_median']:.3f}, 8 concurrent "
            f"x{overhead['concurrent_median']:.3f}, start-up x{overhead['startup']:.3f}",
            "`bench_overhead.json`",
        ],
        [
            f"Second question about a document, {affinity['dp']} data-parallel engines",
            f"document affinity {a['second_ttft_median_s']:.2f} s ({a['second_cached_tokens_mean']}"
            f" of {a['second_prompt_tokens_mean']} prompt tokens cached) vs load balancing "
            f"{lb['second_ttft_median_s']:.2f} s "
            f"(x{affinity['second_ttft_load_balanced_over_affinity']:.0f}); {_load(affinity)}",
            "`bench_affinity.json`",
        ],
    ]


def _retriever_rows(results: Path) -> list[list[str]]:
    after = _read(results, "retrieval_quality.json")["after"]
    quality = after["mean"]
    speed = _read(results, "bench_retriever_onnx.json")
    onnx, torch = speed["modes"]["onnx"], speed["modes"]["float32"]
    proxy = _read(results, "bench_proxy.json")
    first, later = proxy["first_question"], proxy["cached_questions_median"]
    m3 = _read(results, "bench_m3.json")["throughput"]
    return [
        [
            f"Default retriever, held-out {len(after['languages'])}-language retrieval set, "
            "nDCG@10",
            f"hybrid {quality['corpus']['hybrid']['ndcg@10']:.3f} (dense alone "
            f"{quality['corpus']['dense']['ndcg@10']:.3f}) over all passages; "
            f"{quality['document']['hybrid']['ndcg@10']:.3f} "
            f"({quality['document']['dense']['ndcg@10']:.3f}) inside the query's document",
            "`retrieval_quality.json`",
        ],
        [
            f"The retriever's pass over a {speed['document_retriever_tokens']:,}-token document "
            "(encoder tokens), ONNX Runtime (the CPU default) vs torch",
            f"{onnx['document_encode_s']:.2f} s vs {torch['document_encode_s']:.2f} s "
            f"(x{onnx['speedup']:.2f}), "
            + (
                "same top-10 sentences"
                if set(onnx["top10_overlap"]) == {10}
                else f"top-10 overlap {onnx['top10_overlap']}"
            )
            + f"; {_load(speed)}",
            "`bench_retriever_onnx.json`",
        ],
        [
            "M3 encoder vs FlagEmbedding (BGE-M3's shape, random weights)",
            ", ".join(f"{r['tokens']} tokens x{r['speedup']:.2f}" for r in m3)
            + f"; scores within {max(r['max_abs_score_diff'] for r in m3):.0e}",
            "`bench_m3.json`",
        ],
        [
            f"`landmark proxy` (budget {proxy['budget']:,}) in front of a plain vLLM vs the "
            "same selected text sent directly, time to first token",
            f"first question {first['proxy_s']:.2f} s vs {first['direct_s']:.2f} s (selection "
            f"{first['select_s']:.2f} s); later questions {later['proxy_s']:.2f} s vs "
            f"{later['direct_s']:.2f} s; {_load(proxy)}",
            "`bench_proxy.json`",
        ],
    ]


def _default_rows(results: Path) -> list[list[str]]:
    ranking = _read(results, "identifier_ranking.json")["rows"]
    cost = _read(results, "bench_default_retriever.json")
    lengths = sorted({r["length"] for r in ranking})

    def first(length: int, exact: bool) -> str:
        rows = [r for r in ranking if r["length"] == length and r["exact_identifiers"] == exact]
        hits = sum(round(r["first"] * r["questions"]) for r in rows)
        return f"{hits}/{sum(r['questions'] for r in rows)}"

    def spread(setting: str, key: str, unit: str) -> str:
        values = sorted(r[key] for r in cost["runs"] if r["retriever"] == setting)
        middle = values[len(values) // 2]
        return f"{middle:.0f} [{values[0]:.0f}-{values[-1]:.0f}] {unit}"

    return [
        [
            "Questions quoting an identifier (UUID, hash, error code, path) among look-alike "
            "lines, default retriever: the line holding it ranked first, with / without the "
            "exact-identifier channel",
            ", ".join(f"{_k(n)} {first(n, True)} vs {first(n, False)}" for n in lengths),
            "`identifier_ranking.json`",
        ],
        [
            "The retriever as the default (loaded on first need) vs `--landmark-retriever "
            "none`, tiny model, per server (median [range] over servers): start-up, plain "
            "requests, documents that fit",
            "; ".join(
                f"{label} {spread('default', key, unit)} vs {spread('none', key, unit)}"
                for label, key, unit in (
                    ("start-up", "startup_s", "s"),
                    ("plain", "plain_median_ms", "ms"),
                    ("fitting", "fits_median_ms", "ms"),
                )
            )
            + f"; the first over-long document {cost['over_long_first_ms'] / 1000:.1f} s "
            f"(loads it), later ones {cost['over_long_later_median_ms'] / 1000:.1f} s; "
            f"{_load(cost)}",
            "`bench_default_retriever.json`",
        ],
    ]


def _long_retrieval_row(results: Path) -> list[str]:
    bench = _read(results, "bench_long_retrieval.json")
    rows = bench["rows"]
    return [
        "The default retriever's pass over one long document (LLM tokens), encoding included: "
        "seconds, per-token time vs the shortest, peak memory of the process",
        "; ".join(
            f"{r['llm_tokens']:,}: {r['seconds']:.1f} s (x{r['per_token_vs_shortest']:.2f}), "
            f"{r['peak_rss_mib'] / 1024:.1f} GiB"
            for r in rows
        )
        + f"; {_load(bench)}",
        "`bench_long_retrieval.json`",
    ]


def _long_answer_row(results: Path) -> list[str]:
    bench = _read(results, "bench_long_answer.json")
    return [
        "Long documents answered end to end by the offline engine (SmolLM2, default retriever, "
        "budget 1,024, 8K window): seconds of the call, peak memory of the whole process",
        "; ".join(
            f"{r['llm_tokens']:,} tokens: {r['seconds']:.0f} s, {r['peak_rss_mib'] / 1024:.1f} GiB"
            for r in bench["rows"]
        )
        + f"; {_load(bench)}",
        "`bench_long_answer.json`",
    ]


def _cell(entry: dict[str, Any], key: str) -> str:
    """A long-task score in points (0-100); a difference with its interval."""
    c = entry[key]
    if key.startswith("plan-"):
        return f"{100 * c['mean']:+.0f} [{100 * c['low']:.0f}, {100 * c['high']:.0f}]"
    return f"{100 * c['mean']:.0f}"


def _longtasks_rows(results: Path) -> list[list[str]]:
    from eval.report import longtasks_runs

    runs = [data for _, data in longtasks_runs(results) if data["split"] == "test"]
    if not runs:
        return []
    files = ", ".join(f"`{name}`" for name, d in longtasks_runs(results) if d["split"] == "test")
    by: dict[tuple[str, int], dict[str, Any]] = {
        (e["family"], e["length"]): e for data in runs for e in data["table"]
    }
    lengths = sorted({length for _, length in by})
    families = ("needle", "multikey", "multivalue", "identifier", "chain", "frequent")

    def per_length(family: str, key: str, low: int = 0) -> str | None:
        cells = [
            f"{_k(n)} {_cell(by[(family, n)], key)}"
            for n in lengths
            if (family, n) in by and n >= low and key in by[(family, n)]
        ]
        return f"{family}: " + ", ".join(cells) if cells else None

    def joined(key: str, names: Sequence[str], low: int = 0) -> str:
        return "; ".join(c for c in (per_length(f, key, low) for f in names) if c)

    items = sum(e["items"] for (f, _), e in by.items() if f != "chain-3plus")
    intro = (
        "Long-context tasks from the installed manual pages (`eval.longtasks`, test split, "
        f"{items} items, budget 1,024): "
    )
    rows = [
        [intro + "share of the evidence the server's plan keeps whole, 0-100"],
        ["The same, the plan minus middle truncation (16K and longer), paired 95% interval"],
        [
            "The same, variable chains of 3-5 hops: the plan (retrieval in rounds) minus the "
            "plan with one round"
        ],
    ]
    results_of = [
        joined("plan", families),
        joined("plan-truncate", families, 16384),
        joined("plan-plan-1", ["chain-3plus"]),
    ]
    return [[*row, text, files] for row, text in zip(rows, results_of, strict=True) if text]


def _gpu_row(results: Path) -> list[str]:
    bench = _read(results, "bench_32k_h200.json")
    bf16 = next(s for s in bench["summary"] if s["dtype"] == "bfloat16")
    k32 = bf16["landmark"]["32"]
    return [
        f"One H200, transformers (no vLLM), random weights of SmolLM2's shape: prefill of a "
        f"{bench['document_tokens']:,}-token document vs the embedder at k = 32 + prefill of "
        "its soft tokens, bfloat16",
        f"{1000 * bf16['plain_prefill_s']:.0f} ms vs {1000 * k32['total_s']:.0f} ms "
        f"(x{k32['ttft_x_lower']:.1f}); embedder {k32['embedder_ms_per_1k_document_tokens']:.2f} "
        f"ms per 1K document tokens vs prefill {bf16['plain_prefill_ms_per_1k_tokens']:.2f}",
        "`bench_32k_h200.json`",
    ]


def measured(results: Path) -> str:
    """The README's table of measured results."""
    rows = [
        *_qa_rows(results),
        *_factor_rows(results),
        _suite_row(results),
        *_ttft_rows(results),
        *_serving_rows(results),
        *_retriever_rows(results),
        *_default_rows(results),
        _long_retrieval_row(results),
        _long_answer_row(results),
        *_longtasks_rows(results),
        _gpu_row(results),
    ]
    lines = ["| measured | result | `eval/results/` |", "|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


#: name -> maker of each generated README section
BLOCKS: dict[str, Callable[[Path], str]] = {"measured": measured}


def blocks(results: Path) -> dict[str, str]:
    """Every generated README section, from the current results."""
    return {name: make(results) for name, make in BLOCKS.items()}
