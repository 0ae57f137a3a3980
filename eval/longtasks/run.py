"""What each arm keeps of a long document, scored against the evidence the answer needs.

For every item of :mod:`eval.longtasks.generate`, each arm picks what the LLM reads of the
document at one budget of LLM tokens (default 1,024), and the item is scored on what was
kept, raw, as text: no LLM runs, so the score is what the plan controls and nothing else.

===========  ===================================================================================
arm          what is kept
===========  ===================================================================================
truncate     the first and last ``budget / 2`` tokens (LongBench's middle truncation)
spread       windows of 64 tokens spread evenly over the document (a systematic sample: what
             a plan covering the whole document keeps raw)
bm25         BM25 windows of two sentences, best first, up to the budget (the lexical baseline)
m3           the retriever's best spans (one round, no BM25 fusion), up to the budget
plan-1       the server's plan (``planning.plan_document`` on the fused scores) with one
             retrieval round: windows only, as the shipped embedder's record makes it
plan         the same with the server's default rounds (``--landmark-retrieval-rounds``)
whole        the whole document, where the 8K window holds it (the long-window reference)
===========  ===================================================================================

Scores (0-1 per item): evidence families (``needle``, ``multikey``, ``identifier``,
``multivalue``, ``chain``): the share of the item's evidence sentences kept whole; ``frequent``
(a whole-document question): the share of the three most frequent keywords that the kept text,
counted, puts in the right place. Reported per family and length with bootstrap intervals, and
paired differences (plan minus each other arm, same items).

    python -m eval.longtasks.run --items ITEMS.jsonl --split test \\
        [--lengths 4096,16384] [--limit 8] [--out eval/results/longtasks_test.json]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from eval.longbench.retrieval import M3SpanRetriever, select_spans
from eval.provenance import provenance, write_result
from eval.suite.arms import Bm25Retriever, plugin_token_offsets
from eval.suite.stats import mean_interval, paired_difference

ARMS = ("truncate", "spread", "bm25", "m3", "plan-1", "plan", "whole")
#: Tokens of one window of the ``spread`` arm (the planner's window size at budget 1,024).
SPREAD_WINDOW = 64
#: The window of the "whole" arm and what it keeps for the question and the answer.
WINDOW, RESERVE = 8192, 512
_KEYWORD = re.compile(r"Keyword: (\w+)\.")

Ranges = list[tuple[int, int]]


def merged(ranges: Ranges) -> Ranges:
    """Character ranges sorted, touching or overlapping ones joined."""
    out: Ranges = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def evidence_score(document: str, evidence: Sequence[str], kept: Ranges) -> float:
    """Share of the evidence sentences that lie whole inside one kept range."""
    found = 0
    for sentence in evidence:
        start = document.index(sentence)
        end = start + len(sentence)
        found += any(a <= start and end <= b for a, b in merged(kept))
    return found / len(evidence)


def frequent_score(document: str, answers: Sequence[str], kept: Ranges) -> float:
    """Share of the top-3 keywords that the kept text's own counts rank in the right place."""
    counts = Counter(w for a, b in merged(kept) for w in _KEYWORD.findall(document[a:b]))
    ranked = [w for w, _ in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))][:3]
    return sum(1 for i, w in enumerate(answers) if i < len(ranked) and ranked[i] == w) / 3


def score(item: dict[str, Any], kept: Ranges) -> float:
    if item["family"] == "frequent":
        return frequent_score(item["document"], item["answers"], kept)
    return evidence_score(item["document"], item["evidence"], kept)


class Arms:
    """Builds every arm's kept character ranges for one item (one retriever for all)."""

    def __init__(self, tokenizer: Any, budget: int, rounds: int) -> None:
        from vllm_landmark.planning import PlanSettings

        self.tokenizer = tokenizer
        self.budget = budget
        self.rounds = rounds
        self.m3 = M3SpanRetriever("default")
        self.bm25 = Bm25Retriever()
        self.settings = PlanSettings()  # windows only: k=1, no compression

    def kept(self, item: dict[str, Any]) -> tuple[dict[str, Ranges | None], dict[str, Any]]:
        """Each arm's kept ranges (None: the arm does not apply) and what the plans did."""
        from vllm_landmark.planning import ScoredSpans, plan_document

        document, question = item["document"], item["question"]
        _, offsets = plugin_token_offsets(self.tokenizer, document, item["id"])
        n, half = len(offsets), self.budget // 2
        out: dict[str, Ranges | None] = {}
        out["truncate"] = [(0, offsets[half - 1][1]), (offsets[n - half][0], len(document))]
        count = self.budget // SPREAD_WINDOW
        starts = [round((i + 0.5) * n / count - SPREAD_WINDOW / 2) for i in range(count)]
        out["spread"] = [
            (offsets[a][0], offsets[a + SPREAD_WINDOW - 1][1])
            for a in (min(max(0, a), n - SPREAD_WINDOW) for a in starts)
        ]
        for arm, retriever in (("bm25", self.bm25), ("m3", self.m3)):
            spans = select_spans(
                document, retriever.rank(document, question), self.tokenizer, self.budget
            )
            out[arm] = [(s.start, s.end) for s in spans]
        info: dict[str, Any] = {"llm_tokens": n}
        for arm, rounds in (("plan-1", 1), ("plan", self.rounds)):
            started = time.perf_counter()
            landmarks = self.m3.ranker.score_all_spans(
                document,
                question,
                llm_tokenizer=self.tokenizer,
                lexical_fusion=True,
                rounds=rounds,
            )
            plan, _ = plan_document(
                n, self.budget, self.settings, ScoredSpans.from_landmarks(landmarks)
            )
            out[arm] = [
                (offsets[s.start][0], offsets[s.end - 1][1]) for s in plan.spans if s.factor == 1
            ]
            info[arm] = {
                "rounds": landmarks.rounds,
                "windows": len(out[arm]),
                "seconds": time.perf_counter() - started,
            }
        out["whole"] = [(0, len(document))] if n <= WINDOW - RESERVE else None
        return out, info


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per family and length: each arm's mean with its interval, and plan minus the others."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(record["family"], record["length"])].append(record)
        if record["family"] == "chain" and record["hops"] >= 3:
            groups[("chain-3plus", record["length"])].append(record)
    table = []
    for (family, length), rows in sorted(groups.items()):
        entry: dict[str, Any] = {"family": family, "length": length, "items": len(rows)}
        for arm in ARMS:
            values = [r["scores"][arm] for r in rows if r["scores"].get(arm) is not None]
            if len(values) == len(rows):
                entry[arm] = mean_interval(values).as_dict()
        for other in ("truncate", "bm25", "m3", "plan-1"):
            entry[f"plan-{other}"] = paired_difference(
                [r["scores"]["plan"] for r in rows], [r["scores"][other] for r in rows]
            ).as_dict()
        table.append(entry)
    return {"table": table}


def _fmt(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "-"
    return f"{100 * cell['mean']:.0f} [{100 * cell['low']:.0f}, {100 * cell['high']:.0f}]"


def markdown(summary: dict[str, Any]) -> str:
    """The table as markdown: scores in points (0-100), intervals in brackets."""
    diffs = ("plan - truncate", "plan - bm25", "plan - plan-1")
    head = "| family | length | items | " + " | ".join((*ARMS, *diffs)) + " |"
    lines = [head, "|" + "---|" * (len(ARMS) + len(diffs) + 3)]
    for e in summary["table"]:
        cells = [_fmt(e.get(arm)) for arm in ARMS]
        gaps = [_fmt(e[f"plan-{o}"]) for o in ("truncate", "bm25", "plan-1")]
        row = " | ".join(cells + gaps)
        lines.append(f"| {e['family']} | {e['length']} | {e['items']} | {row} |")
    return "\n".join(lines)


def select_items(
    path: Path,
    split: str,
    lengths: set[int] | None,
    families: set[str] | None,
    limit: int | None,
) -> list[dict[str, Any]]:
    """The items of one split, of these lengths and families, at most ``limit`` per family and
    length (None: no filter), in file order."""
    items, taken = [], Counter()
    for line in path.read_text().splitlines():
        item = json.loads(line)
        key = (item["family"], item["length"])
        if item["split"] != split or (lengths and item["length"] not in lengths):
            continue
        if (families and item["family"] not in families) or (
            limit is not None and taken[key] >= limit
        ):
            continue
        taken[key] += 1
        items.append(item)
    if not items:
        raise SystemExit(f"no {split} items in {path} for these filters")
    return items


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=Path, required=True)
    parser.add_argument("--split", choices=("dev", "test"), required=True)
    parser.add_argument("--lengths", default=None, help="comma-separated target lengths")
    parser.add_argument("--families", default=None, help="comma-separated families")
    parser.add_argument("--limit", type=int, default=None, help="items per family and length")
    parser.add_argument("--budget", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=None, help="default: the server's")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from vllm_landmark.config import LandmarkConfig
    from vllm_landmark.default_models import prepare_default_llm

    rounds = args.rounds or LandmarkConfig().retrieval_rounds
    lengths = {int(x) for x in args.lengths.split(",")} if args.lengths else None
    families = set(args.families.split(",")) if args.families else None
    items = select_items(args.items, args.split, lengths, families, args.limit)
    arms = Arms(AutoTokenizer.from_pretrained(prepare_default_llm()), args.budget, rounds)
    records = []
    for item in tqdm(items, desc=f"longtasks {args.split}", unit="item"):
        kept, info = arms.kept(item)
        records.append(
            {
                "id": item["id"],
                "family": item["family"],
                "length": item["length"],
                "hops": item.get("hops"),
                "scores": {arm: None if r is None else score(item, r) for arm, r in kept.items()},
                **info,
            }
        )
    summary = summarize(records)
    print(markdown(summary))
    if args.out is not None:
        header = provenance(
            "eval.longtasks.run", argv, config={**vars(args), "rounds": rounds}, embedder=None
        )
        result = {
            "method": "evidence kept raw by each arm at one budget (no LLM); see the module doc",
            "budget": args.budget,
            "rounds": rounds,
            "split": args.split,
            **summary,
            "records": records,
        }
        write_result(args.out, result, header)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
