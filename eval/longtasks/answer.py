"""The LLM's answers to long-task questions: the server's plan vs truncation vs the whole text.

Where :mod:`eval.longtasks.run` scores what each arm keeps, this asks the LLM (SmolLM2-135M-
Instruct through the offline engine with the plugin, greedy, 96 answer tokens by default,
budget 1,024, an 8K window) and scores its answer: the share of the gold answers it contains
(case-insensitive). For ``identifier`` and ``multikey`` items it also counts answers that
hold another key's value instead (a look-alike line read in place of the asked one).

===========  ==========================================================================
arm          the prompt
===========  ==========================================================================
plan         the document as a document part with the question as its ``query``: the
             server's plan (retriever, rounds, windows), budget 1,024
truncate     the document middle-truncated to 1,024 tokens, pasted
whole        the document pasted whole (only where the 8K window holds it)
===========  ==========================================================================

    python -m eval.longtasks.answer --items ITEMS.jsonl --split test --lengths 4096,16384 \\
        --families needle,multikey,identifier --limit 10 --out eval/results/longtasks_answers.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from eval.longbench.prompts import middle_truncate
from eval.longtasks.run import select_items
from eval.provenance import provenance, write_result
from eval.suite.stats import mean_interval, paired_difference

ARMS = ("plan", "truncate", "whole")
BUDGET, WINDOW = 1024, 8192
_VALUE_LINE = re.compile(r"(?:The value for \S+ is (\S+?)\.|magic number for \S+ is (\d+)\.)")


def question_text(question: str) -> str:
    return f"\n\nQuestion: {question}\nAnswer briefly."


def look_alike_values(item: dict[str, Any]) -> set[str]:
    """Values of the other keys' lines (identifier and multikey items), not the gold ones."""
    found = {a or b for a, b in _VALUE_LINE.findall(item["document"])}
    return found - set(item["answers"])


def score_answer(item: dict[str, Any], answer: str) -> dict[str, float]:
    text = answer.lower()
    correct = sum(1 for gold in item["answers"] if gold.lower() in text) / len(item["answers"])
    out = {"correct": correct}
    if item["family"] in ("identifier", "multikey"):
        out["look_alike"] = float(any(v.lower() in text for v in look_alike_values(item)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=Path, required=True)
    parser.add_argument("--split", choices=("dev", "test"), required=True)
    parser.add_argument("--lengths", required=True, help="comma-separated target lengths")
    parser.add_argument("--families", default="needle,multikey,identifier")
    parser.add_argument("--limit", type=int, default=10, help="items per family and length")
    parser.add_argument(
        "--max-tokens", type=int, default=96, help="answer length (a UUID is ~25 tokens)"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from vllm import LLM, SamplingParams

    from vllm_landmark import LandmarkConfig, engine_kwargs
    from vllm_landmark.default_models import prepare_default_llm

    lengths = {int(x) for x in args.lengths.split(",")}
    families = set(args.families.split(","))
    items = select_items(args.items, args.split, lengths, families, args.limit)

    llm = LLM(
        model=str(prepare_default_llm()),
        dtype="float32",
        max_model_len=WINDOW,
        enable_prefix_caching=False,
        **engine_kwargs(LandmarkConfig(budget=BUDGET)),
    )
    tokenizer = llm.get_tokenizer()
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)

    def ask(content: list[dict[str, Any]]) -> str:
        output = llm.chat([{"role": "user", "content": content}], params, use_tqdm=False)
        return output[0].outputs[0].text.strip()

    records = []
    for item in tqdm(items, desc=f"answers {args.split}", unit="item"):
        document, question = item["document"], item["question"]
        text_part = {"type": "text", "text": question_text(question)}
        answers: dict[str, str | None] = {}
        part = {"type": "document", "document": {"text": document, "query": question}}
        answers["plan"] = ask([part, text_part])
        truncated, _, _ = middle_truncate(document, tokenizer, BUDGET)
        answers["truncate"] = ask([{"type": "text", "text": truncated}, text_part])
        fits = item["llm_tokens"] + 256 + args.max_tokens <= WINDOW
        answers["whole"] = ask([{"type": "text", "text": document}, text_part]) if fits else None
        records.append(
            {
                "id": item["id"],
                "family": item["family"],
                "length": item["length"],
                "answers": answers,
                "scores": {
                    arm: None if a is None else score_answer(item, a) for arm, a in answers.items()
                },
            }
        )

    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(record["family"], record["length"])].append(record)
    table = []
    for (family, length), rows in sorted(groups.items()):
        entry: dict[str, Any] = {"family": family, "length": length, "items": len(rows)}
        for arm in ARMS:
            scored = [r["scores"][arm] for r in rows if r["scores"][arm] is not None]
            if len(scored) == len(rows):
                entry[arm] = mean_interval([s["correct"] for s in scored]).as_dict()
                if "look_alike" in scored[0]:
                    entry[f"{arm}_look_alike"] = sum(s["look_alike"] for s in scored)
        entry["plan-truncate"] = paired_difference(
            [r["scores"]["plan"]["correct"] for r in rows],
            [r["scores"]["truncate"]["correct"] for r in rows],
        ).as_dict()
        table.append(entry)
        print(json.dumps(entry))
    if args.out is not None:
        header = provenance("eval.longtasks.answer", argv, config=vars(args), embedder=None)
        result = {
            "method": "SmolLM2-135M-Instruct answers (offline engine with the plugin, greedy, "
            f"{args.max_tokens} tokens, budget {BUDGET:,}, window {WINDOW:,}); score: share of the "
            "gold answers the answer holds; look_alike: answers holding another key's value",
            "split": args.split,
            "table": table,
            "records": records,
        }
        write_result(args.out, result, header)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
