"""Compare arms on real-text QA in one offline vLLM engine: answer likelihood, answers, intervals.

    python -m eval.suite.qa_run --items ~/.cache/vllm-landmark/eval/qa-4k.jsonl --split dev \\
        --arms truncate,bm25,m3,oracle,fragments,win-t128 --budget 1024 --limit 40 \\
        --out eval/results/qa_dev.json

One engine (the plugin, ``LandmarkConfig(budget=B)``, the trained embedder for k > 1) serves
every arm: text arms paste their context (a request without a document is plain vLLM), plan
arms send the document with an explicit plan (``eval.suite.arms``). Per item and arm:

* ``logprob``: the gold answer's mean log-probability per token, teacher-forced: the prompt
  is the chat prompt followed by the answer, and vLLM's ``prompt_logprobs`` give each answer
  token's log-probability. It separates arms even when a 135M model rarely generates the exact
  answer.
* with ``--max-tokens G`` (0 turns it off): a greedy answer of up to G tokens; ``hit``: it
  contains the word that occurs once (``answer_word``; whole word, case-insensitive);
  ``degenerate``: empty, or dominated by one repeated token or symbol
  (``eval.suite.stats.is_degenerate``).
* ``answer_in_context``: whether the gold word reached the LLM raw (pasted, or at k=1).

The summary gives each arm's means with 95% bootstrap intervals, and paired differences
(paired bootstrap over the same items) against the ``--compare-to`` arms. The bootstrap draws
whole pages (the item's ``key``): questions about one page, and a page in two languages, are
not independent, so counting them as such would narrow the intervals.
``eval.report`` renders the JSON (``kind: "qa"``) into ``eval/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from eval.provenance import provenance, write_result
from eval.suite.arms import (
    COMPRESSION_FACTORS,
    ArmInput,
    arm_input,
    check_arm,
    document_view,
    needs_view,
)
from eval.suite.qa import select, word_count
from eval.suite.run import machine
from eval.suite.stats import is_degenerate, mean_interval, paired_difference

METRICS = ("logprob", "hit", "degenerate", "answer_in_context")


def user_content(arm: ArmInput, item: dict[str, Any]) -> str | list[dict[str, Any]]:
    """The user turn: the arm's context, then ``"\n"`` and the question.

    Plan arms send the document as a ``document`` content part with its plan; the chat patch
    joins parts with ``"\n"``, so at k=1 the prompt equals the pasted text.
    """
    if arm.plan is None:
        return f"{arm.text}\n{item['question']}"
    document = {"text": item["context"], "plan": arm.plan}
    return [
        {"type": "document", "document": document},
        {"type": "text", "text": item["question"]},
    ]


def conversation(
    arm: ArmInput, item: dict[str, Any], answer: str | None = None
) -> list[dict[str, Any]]:
    """Chat messages; with ``answer``, an assistant turn the engine continues (teacher forcing)."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": user_content(arm, item)}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def answer_token_ids(tokenizer: Any, question: str, answer: str) -> list[int]:
    """Token ids the answer adds after the assistant header of the chat template."""
    user = [{"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        [*user, {"role": "assistant", "content": answer}],
        tokenize=False,
        continue_final_message=True,
    )
    if full != prompt + answer:
        raise ValueError("the chat template does not end the prompt with the answer as given")
    before = tokenizer.encode(prompt, add_special_tokens=False)
    after = tokenizer.encode(full, add_special_tokens=False)
    if after[: len(before)] != before or len(after) == len(before):
        raise ValueError(f"the answer {answer!r} merges with the end of the prompt")
    return list(after[len(before) :])


def answer_logprob(output: Any, answer_ids: Sequence[int]) -> float:
    """Mean log-probability of the last ``len(answer_ids)`` prompt tokens (the answer)."""
    m = len(answer_ids)
    tail_ids = list(output.prompt_token_ids[-m:])
    if tail_ids != list(answer_ids):
        raise ValueError(f"prompt tail {tail_ids} is not the answer {list(answer_ids)}")
    entries = output.prompt_logprobs[-m:]
    values = [entry[t].logprob for entry, t in zip(entries, tail_ids, strict=True)]
    return float(sum(values) / m)


def summarize(
    records: dict[str, list[dict[str, Any]]], compare_to: Sequence[str]
) -> dict[str, Any]:
    """Per-arm means with intervals, and paired differences against ``compare_to`` arms.

    Intervals resample pages: records of one page (``key``: several questions about it, or
    the page in another language) move together. Records without ``key`` (runs before it
    was recorded) are their own cluster, the item bootstrap.
    """

    def page(row: dict[str, Any]) -> str:
        return row.get("key", row["id"])

    arms: dict[str, Any] = {}
    for arm, rows in records.items():
        arms[arm] = {}
        for metric in METRICS:
            kept = [r for r in rows if r.get(metric) is not None]
            if kept:
                values = [float(r[metric]) for r in kept]
                interval = mean_interval(values, clusters=[page(r) for r in kept])
                arms[arm][metric] = interval.as_dict()
        arms[arm]["prompt_tokens"] = sum(r["prompt_tokens"] for r in rows) / len(rows)
        arms[arm]["by_language"] = {}
        for lang in sorted({r["lang"] for r in rows}):
            of_lang = [r for r in rows if r["lang"] == lang]
            interval = mean_interval(
                [r["logprob"] for r in of_lang], clusters=[page(r) for r in of_lang]
            )
            arms[arm]["by_language"][lang] = interval.as_dict()
    differences: dict[str, Any] = {}
    for reference in compare_to:
        if reference not in records:
            continue
        for arm, rows in records.items():
            if arm == reference:
                continue
            base = {r["id"]: r for r in records[reference]}
            shared = [r for r in rows if r["id"] in base]
            entry = {}
            for metric in ("logprob", "hit"):
                kept = [
                    r
                    for r in shared
                    if r.get(metric) is not None and base[r["id"]].get(metric) is not None
                ]
                if kept:
                    a = [r[metric] for r in kept]
                    b = [base[r["id"]][metric] for r in kept]
                    pages = [page(r) for r in kept]
                    entry[metric] = paired_difference(a, b, clusters=pages).as_dict()
            differences[f"{arm} - {reference}"] = entry
    return {"arms": arms, "differences": differences}


def _fmt(interval: dict[str, Any] | None, scale: float = 1.0, digits: int = 2) -> str:
    if not interval:
        return "-"
    m, lo, hi = (interval[k] * scale for k in ("mean", "low", "high"))
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def markdown(report: dict[str, Any]) -> str:
    """The tables of one run: per arm, then the paired differences."""
    summary = report["summary"]
    logprobs = [a["logprob"] for a in summary["arms"].values() if "logprob" in a]
    n = max((x["n"] for x in logprobs), default=0)
    pages = max((x.get("clusters", x["n"]) for x in logprobs), default=0)
    resampled = f"pages ({pages} pages)" if pages != n else "items"
    lines = [
        f"Split `{report['split']}`, {n} items, budget {report['budget']} tokens of context per "
        f"arm; means with 95% bootstrap intervals resampling {resampled} (2,000 resamples).",
        "",
        "| arm | answer log-prob / token | answer in raw context (%) | hit (%) | degenerate (%) "
        "| prompt tokens |",
        "|---|---|---|---|---|---|",
    ]
    for arm, stats in summary["arms"].items():
        lines.append(
            f"| {arm} | {_fmt(stats.get('logprob'))} | "
            f"{_fmt(stats.get('answer_in_context'), 100, 0)} | {_fmt(stats.get('hit'), 100, 0)} | "
            f"{_fmt(stats.get('degenerate'), 100, 0)} | {stats['prompt_tokens']:.0f} |"
        )
    languages = sorted(
        {lang for a in summary["arms"].values() for lang in a.get("by_language", {})}
    )
    if len(languages) > 1:
        counts = {
            lang: max(a["by_language"].get(lang, {}).get("n", 0) for a in summary["arms"].values())
            for lang in languages
        }
        lines += [
            "",
            "Answer log-prob / token per language (items per language in the header; fewer than "
            "about 10 items give intervals too wide to rank arms):",
            "",
            "| arm | " + " | ".join(f"{lang} ({counts[lang]})" for lang in languages) + " |",
            "|---|" + "---|" * len(languages),
        ]
        for arm, stats in summary["arms"].items():
            cells = [_fmt(stats.get("by_language", {}).get(lang)) for lang in languages]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if summary["differences"]:
        lines += [
            "",
            "Paired differences (same items; an interval that excludes 0 separates the arms):",
            "",
            "| comparison | answer log-prob / token | hit (points) |",
            "|---|---|---|",
        ]
        for name, diff in summary["differences"].items():
            lines.append(
                f"| {name} | {_fmt(diff.get('logprob'))} | {_fmt(diff.get('hit'), 100, 0)} |"
            )
    return "\n".join(lines)


def redetect_degeneration(records: dict[str, list[dict[str, Any]]]) -> None:
    """Recompute each stored answer's ``degenerate`` flag with the current detector (records
    read back from an earlier run were flagged by the detector of their day)."""
    for rows in records.values():
        for row in rows:
            if row.get("pred") is not None:
                row["degenerate"] = float(is_degenerate(row["pred"]))


def attach_pages(records: dict[str, list[dict[str, Any]]], items: Iterable[dict[str, Any]]) -> None:
    """Give records of runs made before ``key`` was recorded their item's page, so their
    intervals resample pages too; records whose item is not in ``items`` stay per item."""
    page_of = {item["id"]: item["key"] for item in items if "key" in item}
    for rows in records.values():
        for row in rows:
            if "key" not in row and row["id"] in page_of:
                row["key"] = page_of[row["id"]]


def read_items(path: Path) -> list[dict[str, Any]]:
    """An items file (JSON lines), or ``[]`` with a warning when it is gone."""
    if not path.is_file():
        print(f"[qa_run] {path} not found: intervals resample items", file=sys.stderr)
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def reuse_records(
    path: Path,
    items: Sequence[dict[str, Any]],
    arms: Sequence[str],
    earlier_tag: str | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """The records of an earlier run (``path``) for its arms not in ``arms`` (this run's).

    For arms a change does not touch (truncation, BM25, M3, the oracle do not depend on the
    planner): the earlier run must have been on exactly these items, in this order. Read before
    the engine starts, so a mismatch costs nothing. ``earlier_tag``: this run's arms also keep
    their earlier records, as ``ARM@TAG`` (e.g. ``plan@before``), for a paired comparison of a
    change against what it replaced.
    """
    earlier = json.loads(path.read_text(encoding="utf-8"))
    ids = [item["id"] for item in items]
    reused = {}
    for arm, rows in earlier["records"].items():
        if arm in arms and earlier_tag is None:
            continue
        if [r["id"] for r in rows] != ids:
            raise SystemExit(f"--reuse {path}: arm {arm} was run on other items")
        reused[f"{arm}@{earlier_tag}" if arm in arms else arm] = rows
    attach_pages(reused, items)
    redetect_degeneration(reused)
    return reused


def compression_factors(setting: str, model: str, embedder: str = "auto") -> tuple[int, ...]:
    """The factors ``win-tN`` arms compress at: ``all``, ``checkpoint`` or a list ``2,4``.

    ``checkpoint``: the factors the served embedder (``embedder``, the engine's setting) records
    as helpful
    (:meth:`EmbedderConfig.planning_factors`), as the plugin's planner uses them.
    """
    if setting == "all":
        return COMPRESSION_FACTORS
    if setting == "checkpoint":
        from vllm_landmark.compression.choice import resolve_embedder
        from vllm_landmark.compression.embedder_config import EmbedderConfig

        choice = resolve_embedder(embedder, model)
        if choice.path is None:
            raise SystemExit(f"--factors checkpoint: no trained embedder ({embedder}) for {model}")
        config = EmbedderConfig.from_folder(choice.path)
        return tuple(k for k in config.planning_factors() if k in COMPRESSION_FACTORS)
    factors = tuple(int(k) for k in setting.split(",") if k)
    bad = [k for k in factors if k not in COMPRESSION_FACTORS]
    if bad:
        raise SystemExit(f"--factors {setting}: {bad} not in {COMPRESSION_FACTORS}")
    return factors


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build every arm's inputs, run them through one engine, score, summarize."""
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from eval.longbench.retrieval import M3SpanRetriever
    from vllm_landmark import LandmarkConfig, engine_kwargs
    from vllm_landmark.default_models import prepare_default_llm

    host = machine()
    model = args.model or str(prepare_default_llm())
    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
    lines = args.items.read_text(encoding="utf-8").splitlines()
    items = select([json.loads(line) for line in lines if line.strip()], args.split, args.limit)
    if not items:
        raise SystemExit(f"no {args.split} items in {args.items}")
    arms = [a for a in args.arms.split(",") if a]
    for arm in arms:
        check_arm(arm)
    reused = reuse_records(args.reuse, items, arms, args.earlier_tag) if args.reuse else {}
    # The engine starts before bm25s is imported: bm25s loads numba, whose llvmlite objects
    # break the kernel scan vLLM's CPU worker runs at start-up.
    llm = LLM(
        model=model,
        dtype="float32",
        max_model_len=args.window,
        enforce_eager=True,
        seed=0,
        gpu_memory_utilization=args.memory_utilization,
        **engine_kwargs(LandmarkConfig(budget=args.budget, embedder=args.embedder)),
    )
    m3 = M3SpanRetriever(args.retriever)
    factors = compression_factors(args.factors, model, args.embedder)
    print(f"[qa_run] win-tN arms compress at factors {list(factors)}", flush=True)
    # The plan arm is the server's plan: the factors the served checkpoint records as helping.
    plan_factors = (
        compression_factors("checkpoint", model, args.embedder) if "plan" in arms else factors
    )
    if "plan" in arms:
        print(f"[qa_run] the plan arm compresses at factors {list(plan_factors)}", flush=True)
    started = time.perf_counter()
    inputs: dict[str, list[ArmInput]] = {arm: [] for arm in arms}
    for item in items:
        view = document_view(item, tokenizer, m3.ranker) if any(map(needs_view, arms)) else None
        for arm in arms:
            inputs[arm].append(
                arm_input(
                    arm,
                    item,
                    tokenizer,
                    args.budget,
                    view=view,
                    m3=m3,
                    raw_share=args.raw_share,
                    factors=plan_factors if arm == "plan" else factors,
                )
            )
    prepare_s = time.perf_counter() - started
    print(f"[qa_run] {len(items)} items x {len(arms)} arms prepared in {prepare_s:.0f} s")

    score_params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
    gen_params = SamplingParams(temperature=0.0, max_tokens=max(1, args.max_tokens))
    records: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    for arm in arms:
        t0 = time.perf_counter()
        answers = [answer_token_ids(tokenizer, item["question"], item["answer"]) for item in items]
        pairs = list(zip(items, inputs[arm], strict=True))
        score_out: list[Any] = []
        gen_out: list[Any] | None = [] if args.max_tokens else None
        # Small chunks, each scored then answered: the answer prompt is a prefix of the scored
        # one, so its blocks are still in vLLM's prefix cache.
        for first in range(0, len(pairs), args.chunk):
            chunk = pairs[first : first + args.chunk]
            score_out += llm.chat(
                [conversation(given, item, item["answer"]) for item, given in chunk],
                score_params,
                use_tqdm=False,
                add_generation_prompt=False,
                continue_final_message=True,
            )
            if gen_out is not None:
                gen_out += llm.chat(
                    [conversation(given, item) for item, given in chunk],
                    gen_params,
                    use_tqdm=False,
                )
        rows = []
        for i, (item, given) in enumerate(zip(items, inputs[arm], strict=True)):
            row: dict[str, Any] = {
                "id": item["id"],
                "key": item["key"],
                "lang": item["lang"],
                "logprob": answer_logprob(score_out[i], answers[i]),
                "answer_tokens": len(answers[i]),
                "prompt_tokens": len(score_out[i].prompt_token_ids) - len(answers[i]),
                "answer_in_context": float(given.info["answer_in_context"]),
                **{k: v for k, v in given.info.items() if k not in ("answer_in_context", "spans")},
            }
            if gen_out is not None:
                pred = gen_out[i].outputs[0].text
                row["pred"] = pred
                row["hit"] = float(word_count(pred, item["answer_word"]) > 0)
                row["degenerate"] = float(is_degenerate(pred))
            rows.append(row)
        records[arm] = rows
        seconds[arm] = round(time.perf_counter() - t0, 1)
        print(f"[qa_run] {arm}: {seconds[arm]} s", file=sys.stderr, flush=True)
    compare_to = [a for a in args.compare_to.split(",") if a]
    records.update(reused)
    return {
        "kind": "qa",
        "machine": host,
        "model": Path(model).name,
        "embedder": args.embedder,
        "dtype": "float32",
        "items_file": str(args.items),
        "split": args.split,
        "budget": args.budget,
        "raw_share": args.raw_share,
        "factors": list(factors),
        "plan_factors": list(plan_factors),
        "max_tokens": args.max_tokens,
        "languages": sorted({item["lang"] for item in items}),
        "items": len(items),
        "mean_length": round(sum(item["length"] for item in items) / len(items)),
        "items_retriever_held_out": sum(not item["retriever_train"] for item in items),
        "command": "python -m eval.suite.qa_run " + " ".join(sys.argv[1:]),
        "notes": args.note,
        "seconds": {"prepare": round(prepare_s, 1), **seconds},
        "reused": {"from": str(args.reuse), "arms": list(reused)} if reused else None,
        "summary": summarize(records, compare_to),
        "records": records,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m eval.suite.qa_run", description=__doc__)
    parser.add_argument("--items", type=Path, help="eval.suite.qa output")
    parser.add_argument("--split", choices=("dev", "test"), default="dev")
    parser.add_argument("--arms", default="truncate,bm25,m3,oracle,fragments,win-t128")
    parser.add_argument("--budget", type=int, default=1024, help="context tokens per arm")
    parser.add_argument("--raw-share", type=float, default=0.75, help="k=1 share, win arms")
    parser.add_argument(
        "--factors", default="all", help="win-tN compression: all, checkpoint, or e.g. 2,4"
    )
    parser.add_argument("--limit", type=int, help="items (languages interleaved)")
    parser.add_argument("--max-tokens", type=int, default=16, help="greedy answer; 0: none")
    parser.add_argument("--chunk", type=int, default=8, help="requests per engine call")
    parser.add_argument("--compare-to", default="truncate", help="reference arms for diffs")
    parser.add_argument("--model", help="LLM folder (default: the prepared SmolLM2)")
    parser.add_argument("--retriever", default="default", help="M3 folder or 'default'")
    parser.add_argument(
        "--embedder",
        default="auto",
        help="k>1 embedder: 'auto' (the shipped one for the model), 'mean-baseline' or a folder "
        "(to measure a candidate checkpoint before it is shipped)",
    )
    parser.add_argument("--window", type=int, default=4096, help="engine max_model_len")
    parser.add_argument(
        "--memory-utilization",
        type=float,
        default=0.3,
        help="vLLM gpu_memory_utilization: on the CPU build the share of RAM it must find free "
        "at start-up (its 0.92 default fails on a shared machine)",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--note", action="append", default=[], help="a line for the report")
    parser.add_argument(
        "--reuse",
        type=Path,
        help="an earlier report on the same items: its arms not in --arms join this report "
        "(for arms the change under test does not touch)",
    )
    parser.add_argument(
        "--earlier-tag",
        help="with --reuse: the earlier records of this run's arms join too, as ARM@TAG "
        "(compare a changed arm with what it replaced: --compare-to plan@TAG)",
    )
    parser.add_argument(
        "--summarize-only",
        action="store_true",
        help="recompute --out's summary (e.g. other --compare-to arms) and its answers' "
        "degeneration flags from its records",
    )
    args = parser.parse_args(argv)
    header = provenance(  # before the work: its load average is the run's start
        "eval.suite.qa_run", argv, config=vars(args), embedder=args.embedder
    )
    if args.summarize_only:
        report = json.loads(args.out.read_text(encoding="utf-8"))
        compare_to = [a for a in args.compare_to.split(",") if a]
        redetect_degeneration(report["records"])
        if any("key" not in row for rows in report["records"].values() for row in rows):
            attach_pages(report["records"], read_items(args.items or Path(report["items_file"])))
        report["summary"] = summarize(report["records"], compare_to)
        report["notes"] = [*report.get("notes", []), *args.note]
        text = json.dumps(report, indent=1, ensure_ascii=False) + "\n"
        args.out.write_text(text, encoding="utf-8")
        print(markdown(report))
        return 0
    if args.items is None:
        parser.error("--items is required")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    report = run(args)
    write_result(args.out, report, header, indent=1, ensure_ascii=False)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
