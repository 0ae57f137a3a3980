"""Long-context tasks built at run time from the English manual pages installed on this machine.

A haystack is the plain text of randomly chosen manual pages of the Debian ``manpages`` package
(rendered and parsed by ``eval.suite.qa``: headings and paragraphs joined by blank lines),
concatenated until a target length in LLM tokens of the default model's tokenizer
(SmolLM2-135M-Instruct), the last page cut at a paragraph end; items come within a few
percent below the target. Synthetic facts are inserted between paragraphs at random depths:

* ``needle``: one "The special magic number for <key> is <7 digits>." sentence; asks for it
  (retrieval of one fact).
* ``multikey``: the same plus 7 distractor needles of other keys; asks for one key (retrieval
  among look-alikes).
* ``multivalue``: 4 needles of one key with different numbers; asks for all of them (complete
  recall of scattered facts).
* ``identifier``: a block of "The value for <UUID> is <UUID>." lines (20 a paragraph, 150-300
  lines, at most a third of the document); the question quotes one key (exact matching of
  opaque identifiers).
* ``chain``: "VAR ABCDE = 12345." then "VAR FGHIJ = VAR ABCDE." ... at increasing depths (2-5
  statements, ``hops``), plus 2 distractor chains; asks which variables get the number
  (multi-hop tracing).
* ``frequent``: "Keyword: <made-up word>." sentences, 10 words with skewed counts; asks for the
  three most frequent (aggregation over the whole document; ``evidence`` is empty).

Split: each page is ``dev`` or ``test`` by the parity of the sha256 of its key; item ``i`` of a
(family, length) uses the dev pages when ``i`` is even, the test pages when odd, so dev and test
items never share a page. Keys, numbers and depths come from the item's own random generator
(seeded by seed, family, length and index): the same seed, installed packages and tokenizer
give the same bytes. Nothing is downloaded.

    apt-get install manpages groff-base
    python -m eval.longtasks.generate --out tasks.jsonl --lengths 4k,16k,32k,128k \\
        --per-family 10 --seed 0

Each line: ``id``, ``family``, ``length`` (target), ``llm_tokens`` (actual), ``split``,
``pages``, ``question``, ``answers``, ``evidence`` (substrings of ``document``, each occurring
exactly once), ``depths`` (of the evidence, as fractions of the document's characters), the
family's own fields (``key``, ``lines``, ``hops``, ``counts``) and ``document``.
``tasks.manifest.json`` records the settings, tokenizer, package versions and the JSONL sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import string
import sys
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from tqdm import tqdm

from eval.suite.qa import document_text, load_tokenizer, man_pages, token_counter
from eval.suite.sources import SourceMissingError
from recipes.m3.build_data import package_version

FAMILIES = ("needle", "multikey", "multivalue", "identifier", "chain", "frequent")
SPLITS = ("dev", "test")
PACKAGES = ("manpages",)
SEP = "\n\n"
SEP_TOKENS = 2  # what document_text charges for a blank line (exact for SmolLM2)
TOLERANCE = 0.02  # items aim at [length * (1 - TOLERANCE), length] tokens
NEEDLE = "The special magic number for {key} is {number}."
IDENTIFIER = "The value for {key} is {value}."
KEYWORD = "Keyword: {word}."
FREQUENT_COUNTS = (24, 18, 12, 6, 5, 4, 3, 3, 2, 2)
ADJECTIVES = (
    "amber", "bold", "brisk", "calm", "dusty", "eager", "faint", "gentle", "golden", "hollow",
    "humble", "icy", "jolly", "lively", "lucky", "mellow", "misty", "noble", "pale", "quiet",
    "rapid", "rustic", "scarlet", "shy", "silent", "sleepy", "smooth", "solemn", "steady", "sunny",
    "swift", "tidy", "velvet", "vivid", "wild", "windy", "wise",
)  # fmt: skip
NOUNS = (
    "anchor", "badger", "beacon", "canyon", "cedar", "comet", "falcon", "fern", "garden",
    "glacier", "harbor", "hazel", "island", "lantern", "meadow", "orchard", "otter", "pebble",
    "prairie", "quarry", "raven", "reef", "river", "saddle", "spruce", "summit", "thicket",
    "tundra", "valley", "walnut", "willow", "lagoon", "heron", "maple",
)  # fmt: skip


@dataclass
class Page:
    """A manual page as haystack paragraphs with their token counts."""

    name: str
    pieces: list[str]
    costs: list[int]


@dataclass
class Pool:
    """The pages of one split, and their text lowercased (to keep inserted words new)."""

    pages: list[Page]
    text: str

    def fresh(self, text: str) -> bool:
        """Whether ``text`` occurs nowhere in this split's pages (case-insensitive)."""
        return text.lower() not in self.text


@dataclass
class Task:
    """A family's inserted sentences (depth in [0, 1], text) and its question."""

    question: str
    answers: list[str]
    evidence: list[str]
    inserts: list[tuple[float, str]]
    extra: dict[str, Any] = field(default_factory=dict)


#: A family's builder: (rng, target length, pool, token counter, item index) -> its task.
Builder = Callable[[random.Random, int, Pool, Any, int], Task]


def page_split(key: str) -> str:
    """``dev`` or ``test`` by the parity of the sha256 of a page key."""
    return "dev" if hashlib.sha256(key.encode("utf-8")).digest()[-1] % 2 == 0 else "test"


def load_pools(count: Callable[[str], int], packages: Sequence[str] = PACKAGES) -> dict[str, Pool]:
    """The installed English manual pages of ``packages``, by split, sorted by name."""
    pages: dict[str, list[Page]] = {split: [] for split in SPLITS}
    seen: set[str] = set()
    try:
        for package in packages:
            for doc in man_pages(package, "en", min_bytes=0):
                text = document_text(doc, count, sys.maxsize)
                if doc.key in seen or text is None:
                    continue
                seen.add(doc.key)
                pieces = text.split(SEP)
                page = Page(doc.key.removeprefix("man:"), pieces, [count(p) for p in pieces])
                pages[page_split(doc.key)].append(page)
    except FileNotFoundError as exc:  # groff, which renders the pages
        raise SourceMissingError(f"{exc.filename} not found: apt-get install groff-base") from exc
    if not seen:
        raise SourceMissingError(
            f"no English manual pages found in package(s) {', '.join(packages)}; install them "
            "with: apt-get install manpages groff-base"
        )
    return {
        split: Pool(
            sorted(ps, key=lambda p: p.name), "\n".join(SEP.join(p.pieces) for p in ps).lower()
        )
        for split, ps in pages.items()
    }


# ------------------------------------------------------------------------------ task families


def new(
    rng: random.Random, make: Callable[[random.Random], str], pool: Pool, taken: set[str]
) -> str:
    """A value from ``make`` that is not in the pool's text nor already ``taken``."""
    while True:
        value = make(rng)
        if value not in taken and pool.fresh(value):
            taken.add(value)
            return value


def word_pair(rng: random.Random) -> str:
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def number7(rng: random.Random) -> str:
    return str(rng.randrange(1_000_000, 10_000_000))


def var_name(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_uppercase, k=5))


def made_up_word(rng: random.Random) -> str:
    """A pronounceable lowercase non-word of 6-9 letters."""
    size = rng.randint(6, 9)
    word = ""
    while len(word) < size:
        word += rng.choice("bdfgklmnprstvz") + rng.choice("aeiou")
    return word[:size]


def rng_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def needle_family(n_keys: int, n_values: int) -> Builder:
    """needle (1 key, 1 value), multikey (1 + 7 distractor keys), multivalue (1 key, 4 values)."""

    def build(rng: random.Random, length: int, pool: Pool, count: Any, index: int) -> Task:
        taken: set[str] = set()
        keys = [new(rng, word_pair, pool, taken) for _ in range(n_keys)]
        inserts, gold = [], []  # gold: the asked key's sentences, in document order
        for key in keys:
            for v in range(n_values):
                depth = (v + rng.random()) / n_values  # one per stratum: distinct, in order
                sentence = NEEDLE.format(key=key, number=new(rng, number7, pool, taken))
                inserts.append((depth, sentence))
                gold += [sentence] if key == keys[0] else []
        question = f"What is the special magic number for {keys[0]}?"
        if n_values > 1:
            question = f"What are all the special magic numbers for {keys[0]}? List them all."
        numbers = [s.split()[-1][:-1] for s in gold]
        return Task(question, numbers, gold, inserts, {"key": keys[0]})

    return build


def identifier_task(rng: random.Random, length: int, pool: Pool, count: Any, index: int) -> Task:
    target = min(300, max(150, round(150 * math.sqrt(length / 32768))))
    lines: list[str] = []
    used = 0
    while len(lines) < target:
        line = IDENTIFIER.format(key=rng_uuid(rng), value=rng_uuid(rng))
        used += count(line) + 1
        if lines and used > length / 3:
            break
        lines.append(line)
    block = SEP.join("\n".join(lines[i : i + 20]) for i in range(0, len(lines), 20))
    line = lines[rng.randrange(len(lines))]
    key, value = line.split()[3], line.split()[5][:-1]
    question = f"What is the value for {key}?"
    return Task(question, [value], [line], [(rng.random(), block)], {"lines": len(lines)})


def chain_task(rng: random.Random, length: int, pool: Pool, count: Any, index: int) -> Task:
    hops = 2 + index % 4
    taken: set[str] = set()
    chains: list[tuple[str, list[str], list[str]]] = []  # number, names, statements
    inserts: list[tuple[float, str]] = []
    for _ in range(3):  # the gold chain, then 2 distractors
        number = new(rng, lambda r: str(r.randrange(10_000, 100_000)), pool, taken)
        names = [new(rng, var_name, pool, taken) for _ in range(hops)]
        statements = [f"VAR {names[0]} = {number}."]
        statements += [f"VAR {b} = VAR {a}." for a, b in pairwise(names)]
        depths = sorted(rng.random() for _ in statements)
        inserts += list(zip(depths, statements, strict=True))
        chains.append((number, names, statements))
    number, names, statements = chains[0]
    question = f"Which variables are assigned the value {number}? List them all."
    return Task(question, names, statements, inserts, {"hops": hops})


def frequent_task(rng: random.Random, length: int, pool: Pool, count: Any, index: int) -> Task:
    taken: set[str] = set()
    words: list[str] = []
    while len(words) < len(FREQUENT_COUNTS):
        word = new(rng, made_up_word, pool, taken)
        if not any(word in w or w in word for w in words):
            words.append(word)
    cost = sum(count(KEYWORD.format(word=w)) + SEP_TOKENS for w in words) / len(words)
    grow = max(1, round(math.sqrt(length / 4096)))  # x1 at 4K, x2 at 16K, x3 at 32K, x6 at 128K
    scale = min(grow, 0.1 * length / (sum(FREQUENT_COUNTS) * cost))  # insertions under 10%
    counts = [max(1, round(c * scale)) for c in FREQUENT_COUNTS]
    if not counts[0] > counts[1] > counts[2] > counts[3]:
        raise ValueError(f"frequent: {length} tokens are too few for a clear top 3 ({counts})")
    inserts = [
        (rng.random(), KEYWORD.format(word=w))
        for w, c in zip(words, counts, strict=True)
        for _ in range(c)
    ]
    question = "Which three keywords occur most often in the document, most frequent first?"
    return Task(question, words[:3], [], inserts, {"counts": dict(zip(words, counts, strict=True))})


BUILDERS: dict[str, Builder] = {
    "needle": needle_family(1, 1),
    "multikey": needle_family(8, 1),
    "multivalue": needle_family(1, 4),
    "identifier": identifier_task,
    "chain": chain_task,
    "frequent": frequent_task,
}


# ------------------------------------------------------------------------------ items


def fill(order: Sequence[Page], budget: int) -> tuple[list[str], list[str]]:
    """Paragraphs of pages in ``order`` up to ``budget`` tokens (pages cut at paragraph ends)."""
    pieces: list[str] = []
    names: list[str] = []
    used = 0
    for page in order:
        take = cost = 0
        for c in page.costs:
            if used + cost + c + SEP_TOKENS > budget:
                break
            cost += c + SEP_TOKENS
            take += 1
        if take >= 2:  # a heading alone is no page
            pieces += page.pieces[:take]
            names.append(page.name)
            used += cost
    return pieces, names


def assemble(pieces: list[str], inserts: list[tuple[float, str]]) -> str:
    """The haystack with each insert before paragraph ``round(depth * len(pieces))``.

    Inserts that fall in the same gap form one paragraph, in their order in ``inserts``.
    """
    gaps: dict[int, list[str]] = {}
    for depth, text in inserts:
        gaps.setdefault(round(depth * len(pieces)), []).append(text)
    out: list[str] = []
    for gap in range(len(pieces) + 1):
        if gap in gaps:
            out.append(" ".join(gaps[gap]))
        if gap < len(pieces):
            out.append(pieces[gap])
    return SEP.join(out)


def length_label(length: int) -> str:
    return f"{length // 1024}k" if length % 1024 == 0 else str(length)


def make_item(
    family: str,
    length: int,
    index: int,
    seed: int,
    pools: dict[str, Pool],
    tokenizer: Any,
    count: Callable[[str], int],
) -> dict[str, Any]:
    """Item ``index`` of a family at a target length (fields in the module doc)."""
    rng = random.Random(f"{seed}:{family}:{length}:{index}")
    split = SPLITS[index % 2]
    pool = pools[split]
    task = BUILDERS[family](rng, length, pool, count, index)
    order = rng.sample(pool.pages, len(pool.pages))
    budget = length - sum(count(text) + SEP_TOKENS for _, text in task.inserts)
    best: tuple[int, str, list[str]] | None = None
    for _ in range(8):  # the estimate is exact for SmolLM2; other tokenizers converge here
        pieces, names = fill(order, budget)
        document = assemble(pieces, task.inserts)
        n = len(tokenizer.encode(document, add_special_tokens=False))
        if n <= length and (best is None or n > best[0]):
            best = (n, document, names)
        if (1 - TOLERANCE) * length <= n <= length:
            break
        budget += length - n
    if best is None or best[0] < 0.9 * length:
        got = "none" if best is None else best[0]
        raise RuntimeError(f"{family}@{length}: {split} pages give {got} tokens, too few")
    n, document, names = best
    for text in task.evidence:
        if document.count(text) != 1:
            raise AssertionError(f"{family}@{length}#{index}: evidence not once: {text!r}")
    depths = [round(document.index(text) / len(document), 4) for text in task.evidence]
    return {
        "id": f"{family}-{length_label(length)}-{index:03d}",
        "family": family,
        "length": length,
        "llm_tokens": n,
        "split": split,
        "pages": names,
        "question": task.question,
        "answers": task.answers,
        "evidence": task.evidence,
        "depths": depths,
        **task.extra,
        "document": document,
    }


def generate(
    lengths: Sequence[int],
    families: Sequence[str],
    per_family: int,
    seed: int,
    tokenizer: Any,
    pools: dict[str, Pool] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """``per_family`` items per family and length, in (family, length, index) order."""
    count = token_counter(tokenizer)
    pools = pools if pools is not None else load_pools(count)
    jobs = [(f, n, i) for f in families for n in lengths for i in range(per_family)]
    return [
        make_item(f, n, i, seed, pools, tokenizer, count)
        for f, n, i in tqdm(jobs, desc="items", disable=not progress, file=sys.stderr)
    ]


def write_items(items: Iterable[dict[str, Any]], out: Path, manifest: dict[str, Any]) -> Path:
    """Items as JSON lines at ``out``, the manifest (with their sha256) beside; its path."""
    data = b"".join((json.dumps(item, ensure_ascii=False) + "\n").encode("utf-8") for item in items)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    manifest = {**manifest, "sha256": hashlib.sha256(data).hexdigest()}
    path = out.with_suffix(".manifest.json")
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def parse_length(text: str) -> int:
    """``4k`` -> 4096, ``128k`` -> 131072, ``5000`` -> 5000."""
    match = re.fullmatch(r"(\d+)([kK]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a length: {text!r} (e.g. 4k or 4096)")
    return int(match.group(1)) * (1024 if match.group(2) else 1)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m eval.longtasks.generate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="items (JSON lines)")
    parser.add_argument("--lengths", default="4k,16k,32k,128k", help="target LLM tokens")
    parser.add_argument("--per-family", type=int, default=10, help="items per family and length")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--packages", default=",".join(PACKAGES), help="e.g. manpages,manpages-dev")
    parser.add_argument("--tokenizer", help="LLM folder (default: the prepared SmolLM2)")
    args = parser.parse_args(argv)
    try:
        lengths = [parse_length(x) for x in args.lengths.split(",")]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    families = [f.strip() for f in args.families.split(",")]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    packages = [p.strip() for p in args.packages.split(",")]
    tokenizer = load_tokenizer(args.tokenizer)
    tokenizer.model_max_length = sys.maxsize  # counting only: no "too long" warning
    pools = load_pools(token_counter(tokenizer), packages)
    items = generate(lengths, families, args.per_family, args.seed, tokenizer, pools)
    manifest = {
        "seed": args.seed,
        "lengths": lengths,
        "families": families,
        "per_family": args.per_family,
        "tokenizer": {"name": Path(tokenizer.name_or_path).name, "vocab_size": len(tokenizer)},
        "packages": {p: package_version(p) for p in packages},
        "pages": {split: len(pool.pages) for split, pool in pools.items()},
        "items": {split: sum(item["split"] == split for item in items) for split in SPLITS},
    }
    path = write_items(items, args.out, manifest)
    print(f"{len(items)} items -> {args.out}; manifest {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
