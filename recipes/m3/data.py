"""Training triples and length-grouped batches for M3 self-distillation."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Triple:
    """One query with its positive passage and hard negatives (texts)."""

    qid: str
    query: str
    pos: str
    negs: list[str]
    lang: str = ""
    doc: str = ""


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_triples(
    data: str | Path, split: str = "train", limit: int | None = None, seed: int = 0
) -> list[Triple]:
    """Triples from ``build_data``'s folder (``passages.jsonl`` + ``<split>.jsonl``) or from a
    FlagEmbedding-style file (``{"query": str, "pos": [str], "neg": [str]}`` per line).

    ``limit`` keeps a seeded sample of about that many triples (in file order): whole
    documents in a random order when the triples name their document (their hard negatives
    are passages of the same document, so fewer distinct passages are needed), else queries.
    """
    path = Path(data).expanduser()
    triples: list[Triple] = []
    if path.is_dir():
        passages = {row["pid"]: row["text"] for row in read_jsonl(path / "passages.jsonl")}
        for row in read_jsonl(path / f"{split}.jsonl"):
            triples.append(
                Triple(
                    qid=row["qid"],
                    query=row["query"],
                    pos=passages[row["pos"]],
                    negs=[passages[p] for p in row.get("negs", [])],
                    lang=row.get("lang", ""),
                    doc=row.get("doc", ""),
                )
            )
    else:
        for i, row in enumerate(read_jsonl(path)):
            pos = row["pos"]
            triples.append(
                Triple(
                    qid=str(row.get("qid", i)),
                    query=row["query"],
                    pos=pos[0] if isinstance(pos, list) else pos,
                    negs=list(row.get("neg", [])),
                    lang=row.get("lang", ""),
                    doc=row.get("doc", ""),
                )
            )
    if not triples:
        raise ValueError(f"no {split} triples in {path}")
    if limit and limit < len(triples):
        rng = random.Random(f"{seed}:subset")
        if all(t.doc for t in triples):
            by_doc: dict[str, list[int]] = defaultdict(list)
            for i, t in enumerate(triples):
                by_doc[t.doc].append(i)
            docs = sorted(by_doc)
            rng.shuffle(docs)
            keep: list[int] = []
            for doc in docs:
                if len(keep) >= limit:
                    break
                keep.extend(by_doc[doc])
        else:
            keep = rng.sample(range(len(triples)), limit)
        triples = [triples[i] for i in sorted(keep)]
    return triples


def pick_negatives(
    triple: Triple, n: int, rng: random.Random, fallback: Sequence[str]
) -> list[str]:
    """``n`` hard negatives: sampled from the triple's own, repeated if it has too few
    (as FlagEmbedding does), from ``fallback`` texts if it has none."""
    if n == 0:
        return []
    pool = triple.negs or [t for t in fallback if t != triple.pos]
    if not pool:
        raise ValueError(f"query {triple.qid} has no negatives and there is no fallback")
    if len(pool) < n:
        pool = pool * math.ceil(n / len(pool))
    return rng.sample(pool, n)


def length_grouped_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    seed: int,
    groups: Sequence[str] | None = None,
    mega_batches: int = 32,
) -> list[list[int]]:
    """Indices in batches of similar length (less padding), in a seeded random order.

    Within each group (e.g. a language, so that in-batch negatives are not trivially in another
    language), indices are shuffled, cut into chunks of ``mega_batches * batch_size``, each
    chunk sorted by length and cut into batches; all batches are then shuffled. A group's last
    incomplete batch is kept.
    """
    rng = random.Random(seed)
    by_group: dict[str, list[int]] = defaultdict(list)
    for i in range(len(lengths)):
        by_group[groups[i] if groups is not None else ""].append(i)
    batches: list[list[int]] = []
    chunk = max(1, mega_batches) * batch_size
    for key in sorted(by_group):
        idx = by_group[key]
        rng.shuffle(idx)
        for start in range(0, len(idx), chunk):
            part = sorted(idx[start : start + chunk], key=lambda i: (-lengths[i], i))
            batches.extend(part[j : j + batch_size] for j in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


@dataclass
class Batch:
    """Texts of one step: ``queries[i]`` goes with ``passages[i * group : (i + 1) * group]``,
    whose first entry is the positive."""

    qids: list[str]
    queries: list[str]
    passages: list[str]
    group: int


def make_batch(
    triples: Sequence[Triple],
    indices: Sequence[int],
    negatives: int,
    rng_for: Callable[[str], random.Random],
) -> Batch:
    """The batch for ``indices``; ``rng_for(qid)`` gives the negative-sampling RNG."""
    picked = [triples[i] for i in indices]
    fallback = [t.pos for t in picked]
    passages: list[str] = []
    for t in picked:
        passages.append(t.pos)
        passages.extend(pick_negatives(t, negatives, rng_for(t.qid), fallback))
    return Batch(
        qids=[t.qid for t in picked],
        queries=[t.query for t in picked],
        passages=passages,
        group=1 + negatives,
    )
