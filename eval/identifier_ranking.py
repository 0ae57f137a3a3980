"""Identifier-keyed questions among look-alike lines: is the line with the quoted key ranked first?

Builds log-like documents of lines ``The value for <key> is <value>.`` (every key of one kind:
UUIDs, 40-hex hashes, error codes, file paths), asks ``What is the value for <key>?`` about
random lines, and ranks the sentences with the planner's own call
(``SpanRanker.score_all_spans(lexical_fusion=True)``) on the default retriever, with and without
the exact-identifier channel (``vllm_landmark.retrieval.identifiers``). Reports, per key kind
and document length (LLM tokens of the prepared SmolLM2), the share of questions whose line is
ranked first and in the top 5, with a 95 % Wilson interval.

    python -m eval.identifier_ranking [--lengths 4096,16384,32768] [--questions 20]
        [--out eval/results/identifier_ranking.json]
"""

from __future__ import annotations

import argparse
import math
import random
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from eval.provenance import provenance, write_result

KINDS: dict[str, Callable[[random.Random], str]] = {
    "uuid": lambda rng: str(uuid.UUID(int=rng.getrandbits(128))),
    "sha1": lambda rng: f"{rng.getrandbits(160):040x}",
    "error_code": lambda rng: (
        f"ERR-{rng.randrange(1000, 9999)}-{rng.choice('ABCDEFGHJK')}{rng.randrange(10, 99)}"
    ),
    "path": lambda rng: (
        f"/var/lib/{rng.choice(['app', 'svc', 'data', 'cache'])}/"
        f"{rng.choice(['node', 'shard', 'part', 'unit'])}_{rng.randrange(100000)}.conf"
    ),
}


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def document(kind: str, target_tokens: int, tokenizer, rng: random.Random):
    """Lines of one key kind until the document holds ``target_tokens`` LLM tokens."""
    make = KINDS[kind]
    lines: list[tuple[str, str]] = []
    tokens = 0
    seen: set[str] = set()
    while tokens < target_tokens:
        key, value = make(rng), make(rng)
        if key in seen:
            continue
        seen.add(key)
        line = f"The value for {key} is {value}."
        lines.append((key, line))
        tokens += len(tokenizer.encode(line + "\n", add_special_tokens=False))
    return "\n".join(line for _, line in lines), [key for key, _ in lines]


def rank_of_line(ranker, text: str, key: str, exact: bool) -> int:
    """1-based rank of the sentence that holds ``key`` among all sentences, by score."""
    scores = ranker.score_all_spans(
        text, f"What is the value for {key}?", lexical_fusion=True, exact_identifiers=exact
    )
    gold = [
        i for i, (a, b) in enumerate(scores.char_offsets.tolist()) if key in text[int(a) : int(b)]
    ]
    if not gold:
        raise ValueError(f"no sentence holds {key}")
    order = np.argsort(-scores.score, kind="stable")
    positions = np.empty(len(order), dtype=np.int64)
    positions[order] = np.arange(1, len(order) + 1)
    return int(min(positions[g] for g in gold))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="4096,16384,32768")
    parser.add_argument("--questions", type=int, default=20, help="per kind and length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("eval/results/identifier_ranking.json"))
    args = parser.parse_args()
    header = provenance("eval.identifier_ranking", None, config=vars(args), embedder=None)

    from transformers import AutoTokenizer

    from vllm_landmark.default_models import prepare_default_llm, prepare_default_retriever
    from vllm_landmark.retrieval.service import get_span_ranker

    tokenizer = AutoTokenizer.from_pretrained(prepare_default_llm())
    ranker = get_span_ranker(prepare_default_retriever())
    rng = random.Random(args.seed)
    rows = []
    for length in [int(x) for x in args.lengths.split(",")]:
        for kind in KINDS:
            text, keys = document(kind, length, tokenizer, rng)
            asked = rng.sample(keys, min(args.questions, len(keys)))
            for exact in (False, True):
                ranks = [rank_of_line(ranker, text, key, exact) for key in asked]
                first = sum(r == 1 for r in ranks)
                top5 = sum(r <= 5 for r in ranks)
                rows.append(
                    {
                        "length": length,
                        "kind": kind,
                        "lines": len(keys),
                        "exact_identifiers": exact,
                        "questions": len(ranks),
                        "first": first / len(ranks),
                        "first_interval": wilson(first, len(ranks)),
                        "top5": top5 / len(ranks),
                        "median_rank": float(np.median(ranks)),
                    }
                )
                print(
                    f"{length:>6} {kind:<10} exact={exact!s:<5} first {first}/{len(ranks)} "
                    f"top5 {top5}/{len(ranks)} median rank {np.median(ranks):.0f}",
                    flush=True,
                )
    result = {
        "retriever": "default (multilingual-e5-small + trained heads), ONNX on CPU",
        "method": "log-like documents of 'The value for <key> is <value>.' lines of one key "
        "kind; 'What is the value for <key>?' about random lines; sentences ranked by "
        "score_all_spans(lexical_fusion=True) with and without exact identifiers",
        "rows": rows,
    }
    write_result(args.out, result, header)


if __name__ == "__main__":
    main()
