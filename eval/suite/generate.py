"""Generate the local long-context suite (LongBench jsonl format) from offline documents.

    python -m eval.suite.generate --out DIR [--lengths 2k,4k,8k,16k,32k,64k]
        [--languages en,de,zh] [--tasks needle,multi_needle,passkey,section,summary]
        [--per-length 4] [--seed 0] [--tokenizer MODEL_DIR]

Writes ``DIR/data/<task>_<lang>.jsonl`` (fields of LongBench: ``input``, ``context``,
``answers``, ``length``, ``dataset``, ``language``, ``all_classes``, ``_id``; plus ``task``,
``target_length`` and, for needles, ``depth``), ``DIR/config/dataset2prompt.json`` and
``dataset2maxlen.json`` (so ``eval.longbench.pred --data-dir DIR`` runs it as is) and
``DIR/manifest.json`` (settings, package versions, sha256 of every file).

Lengths are in LLM tokens of the context, counted with ``--tokenizer`` (default: the prepared
SmolLM2-135M-Instruct); the context is at most that long and usually within a few percent.
Everything is derived from ``--seed``: the same seed, sources (Debian package versions) and
tokenizer give the same bytes. Sources: ``apt-get install linux-doc-6.1 manpages manpages-de
manpages-zh`` (see ``eval.suite.sources``).

Tasks: ``needle`` (one code word hidden in the document, asked for), ``multi_needle`` (three),
``passkey`` (a five-digit key), ``section`` (which numbered section contains a quoted
sentence) and ``summary`` (one line per manual page; the pages' own NAME lines, removed from
the context, are the reference).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.suite import tasks as T
from eval.suite.sources import (
    HAYSTACK_SOURCES,
    LANGUAGES,
    SUMMARY_SOURCES,
    Corpus,
    SourceMissingError,
    SystemRoot,
    join_lines,
)

DEFAULT_LENGTHS = (2048, 4096, 8192, 16384, 32768, 65536)
MIN_TRIM_TOKENS = 48  # a last block shorter than this is left out instead of cut
SUMMARY_PAGE_CHARS = (800, 8000)  # manual pages of this size make the summary task


class Counter:
    """Counts LLM tokens of texts (no special tokens), with a small cache."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        cached = self._cache.get(text)
        if cached is None:
            cached = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(self._cache) < 50_000:
                self._cache[text] = cached
        return cached


@dataclass
class Block:
    """One numbered section (or page) of a haystack."""

    number: int
    header: str
    text: str

    def render(self) -> str:
        return f"{self.header}\n{self.text}"


def render(blocks: Sequence[Block]) -> str:
    """The context: blocks separated by blank lines."""
    return "\n\n".join(b.render() for b in blocks)


def trim_to(text: str, header: str, budget: int, count: Counter) -> str:
    """The longest prefix of ``text`` (cut at whitespace) whose block fits ``budget`` tokens."""
    low, high = 0, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        if count(f"{header}\n{text[:mid]}") <= budget:
            low = mid
        else:
            high = mid - 1
    cut = text[:low]
    space = max(cut.rfind(" "), cut.rfind("\n"))
    if space > len(cut) // 2:
        cut = cut[:space]
    return cut.rstrip()


def block_header(lang: str, number: int, doc_name: str, title: str | None) -> str:
    label = T.SECTION_LABEL[lang].format(n=number)
    sep = "：" if lang == "zh" else ": "
    if title and title != doc_name:
        return f"{label}{sep}{doc_name} — {title}"
    return f"{label}{sep}{doc_name}"


def build_haystack(
    corpus: Corpus, rng: random.Random, target: int, count: Counter, lang: str
) -> list[Block]:
    """Sections of randomly ordered documents, numbered, up to ``target`` tokens in all."""
    blocks: list[Block] = []
    total = 0
    for index in rng.sample(range(len(corpus)), len(corpus)):
        doc = corpus.doc(index)
        if doc is None:
            continue
        for section in doc.sections:
            header = block_header(lang, len(blocks) + 1, doc.name, section.title)
            text = section.text.strip()
            cost = count(f"{header}\n{text}") + 2
            if total + cost > target:
                room = target - total - 2
                if room >= MIN_TRIM_TOKENS:
                    text = trim_to(text, header, room, count)
                    if text:
                        blocks.append(Block(len(blocks) + 1, header, text))
                return blocks
            blocks.append(Block(len(blocks) + 1, header, text))
            total += cost
    return blocks


def build_summary_haystack(
    corpus: Corpus, rng: random.Random, target: int, count: Counter, lang: str
) -> tuple[list[Block], list[str]]:
    """Whole manual pages (NAME removed) up to ``target`` tokens, and their NAME lines.

    Pages of ``SUMMARY_PAGE_CHARS`` are preferred; if they leave more than half the target
    empty, pages of any size fill the rest. Stops when less than 10% (at most 200 tokens) is
    left.
    """
    blocks: list[Block] = []
    references: list[str] = []
    used: set[int] = set()
    total = 0
    slack = min(200, target // 10)
    order = rng.sample(range(len(corpus)), len(corpus))
    for band in (SUMMARY_PAGE_CHARS, (0, 1 << 62)):
        if band != SUMMARY_PAGE_CHARS and total >= target // 2:
            break
        for index in order:
            if target - total < slack:
                break
            doc = corpus.doc(index)
            if index in used or doc is None or not doc.description:
                continue
            if not band[0] <= doc.chars <= band[1]:
                continue
            header = block_header(lang, len(blocks) + 1, doc.name, None)
            text = "\n".join(f"{s.title}\n{s.text.strip()}" for s in doc.sections)
            cost = count(f"{header}\n{text}") + 2
            if total + cost > target:
                continue
            used.add(index)
            blocks.append(Block(len(blocks) + 1, header, text))
            references.append(doc.description)
            total += cost
    if not blocks:
        raise RuntimeError(f"no manual page fits a {target}-token summary item")
    return blocks, references


def insert_at_depth(context: str, sentence: str, depth: float) -> str:
    """Put ``sentence`` on its own line at the first line break after ``depth`` of the text."""
    position = context.find("\n", int(depth * len(context)))
    if position < 0:
        return f"{context}\n{sentence}"
    return f"{context[:position]}\n{sentence}{context[position:]}"


_SENTENCE = {
    "en": re.compile(r"(?<=[.!?])\s+"),
    "de": re.compile(r"(?<=[.!?])\s+"),
    "zh": re.compile(r"(?<=[。！？])"),
}
_BAD_IN_QUOTE = re.compile(r"[\d\"“”„`*=|<>{}\[\]#_\\]")
_QUOTE_CHARS = re.compile(r"[\"“”„]")


def quotable_sentences(text: str, lang: str, *, strict: bool = True) -> list[str]:
    """Sentences of a block fit to be quoted: prose of a reasonable size.

    Strict: no digits or markup characters, a capital start (en/de) and a sentence end. Not
    strict (when a haystack has no such sentence): any line or sentence of the same size
    without quote characters.
    """
    out = []
    pieces = _SENTENCE[lang].split(text)
    if not strict:
        pieces += text.split("\n")
    for raw in pieces:
        sentence = _flat(raw)
        if _QUOTE_CHARS.search(sentence) or (strict and _BAD_IN_QUOTE.search(sentence)):
            continue
        if lang == "zh":
            ends = sentence.endswith(("。", "！", "？"))
            if 12 <= len(sentence) <= 80 and (ends or not strict):
                out.append(sentence)
        elif 8 <= len(sentence.split()) <= 30 and (
            not strict or (sentence[0].isupper() and sentence[-1] in ".!?")
        ):
            out.append(sentence)
    return out


def _flat(text: str) -> str:
    """Whitespace runs made one space (none between two CJK characters)."""
    return join_lines(text.split())


def make_item(
    task: str, lang: str, target: int, index: int, seed: int, corpora: dict[str, Corpus],
    count: Counter,
) -> dict[str, Any]:  # fmt: skip
    """One item of a task at a target length (deterministic in its arguments)."""
    dataset = T.dataset_name(task, lang)
    rng = random.Random(f"{seed}/{dataset}/{target}/{index}")
    item: dict[str, Any] = {}
    if task == "summary":
        blocks, references = build_summary_haystack(corpora["summary"], rng, target, count, lang)
        context = render(blocks)
        question = T.SUMMARY_QUESTION[lang]
        answers = ["\n".join(references)]
    elif task == "section":
        blocks = build_haystack(corpora["haystack"], rng, target, count, lang)
        context = render(blocks)
        flat = _flat(context)
        candidates = blocks[:-1] if len(blocks) > 1 else blocks
        chosen = None
        order = rng.sample(candidates, len(candidates))
        for strict in (True, False):
            for block in order:
                sentences = [
                    s
                    for s in quotable_sentences(block.text, lang, strict=strict)
                    if flat.count(s) == 1
                ]
                if sentences:
                    chosen = (block, rng.choice(sentences))
                    break
            if chosen:
                break
        if chosen is None:
            raise RuntimeError(f"{dataset} {target}: no quotable sentence in the haystack")
        block, sentence = chosen
        question = T.SECTION_QUESTION[lang].format(sentence=sentence)
        answers = [T.SECTION_LABEL[lang].format(n=block.number)]
        item["section"] = block.number
    else:
        names = rng.sample(T.NAMES[lang], 3 if task == "multi_needle" else 1)
        if task == "passkey":
            key = str(rng.randint(10000, 99999))
            needles = [T.PASSKEY[lang].format(key=key)]
            question, answers = T.PASSKEY_QUESTION[lang], [key]
        else:
            words = rng.sample(T.WORDS[lang], len(names))
            needles = [
                T.NEEDLE[lang].format(name=n, word=w) for n, w in zip(names, words, strict=True)
            ]
            if task == "needle":
                question = T.NEEDLE_QUESTION[lang].format(name=names[0])
                answers = [words[0]]
            else:
                question = T.MULTI_NEEDLE_QUESTION[lang].format(names=T.join_names(names, lang))
                answers = [T.LIST_SEP[lang].join(words)]
        room = target - sum(count(n) + 2 for n in needles)
        context = render(build_haystack(corpora["haystack"], rng, room, count, lang))
        depths = sorted(round(rng.uniform(0.05, 0.95), 3) for _ in needles)
        for needle, depth in sorted(zip(needles, depths, strict=True), key=lambda p: -p[1]):
            context = insert_at_depth(context, needle, depth)
        item["depth"] = depths[0] if len(depths) == 1 else depths
    return {
        "input": question,
        "context": context,
        "answers": answers,
        "length": count(context),
        "dataset": dataset,
        "language": lang,
        "all_classes": None,
        "_id": f"{dataset}-{target}-{index}",
        "task": task,
        "target_length": target,
        **item,
    }


def parse_lengths(text: str) -> list[int]:
    """ "2k,4k,8192" -> [2048, 4096, 8192]."""
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if part:
            out.append(int(part[:-1]) * 1024 if part.endswith("k") else int(part))
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """Name, vocabulary size and a hash of the vocabulary (what lengths depend on)."""
    vocab = sorted(tokenizer.get_vocab().items())
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()
    name = Path(str(getattr(tokenizer, "name_or_path", "?"))).name
    return {"name": name, "vocab_size": len(vocab), "vocab_sha256": digest[:16]}


def generate(
    out: Path,
    tokenizer: Any,
    *,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    languages: Sequence[str] = LANGUAGES,
    task_names: Sequence[str] = T.TASKS,
    per_length: int = 4,
    seed: int = 0,
    system: SystemRoot | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the suite to ``out``; return the manifest."""
    system = system or SystemRoot()
    count = Counter(tokenizer)
    data_dir, config_dir = out / "data", out / "config"
    data_dir.mkdir(parents=True, exist_ok=True)
    config_dir.mkdir(parents=True, exist_ok=True)
    prompts: dict[str, str] = {}
    maxlen: dict[str, int] = {}
    packages: dict[str, str | None] = {}
    files: dict[str, Any] = {}
    for lang in languages:
        if lang not in LANGUAGES:
            raise ValueError(f"unknown language {lang!r}; choose from {LANGUAGES}")
        corpora: dict[str, Corpus] = {}
        if any(t != "summary" for t in task_names):
            corpora["haystack"] = Corpus(HAYSTACK_SOURCES[lang], system)
        if "summary" in task_names:
            corpora["summary"] = Corpus(SUMMARY_SOURCES[lang], system)
        for corpus in corpora.values():
            packages.update(corpus.packages())
        for task in task_names:
            dataset = T.dataset_name(task, lang)
            path = data_dir / f"{dataset}.jsonl"
            lines = []
            for target in lengths:
                for index in range(per_length):
                    item = make_item(task, lang, target, index, seed, corpora, count)
                    lines.append(json.dumps(item, ensure_ascii=False) + "\n")
            path.write_text("".join(lines), encoding="utf-8")
            prompts[dataset] = T.prompt_for(task, lang)
            maxlen[dataset] = T.MAX_NEW_TOKENS[task]
            files[f"data/{dataset}.jsonl"] = {"items": len(lines), "sha256": _sha256(path)}
            if progress:
                print(f"{path}: {len(lines)} items", file=sys.stderr)
    for name, content in (("dataset2prompt.json", prompts), ("dataset2maxlen.json", maxlen)):
        path = config_dir / name
        path.write_text(json.dumps(content, ensure_ascii=False, indent=1) + "\n", "utf-8")
        files[f"config/{name}"] = {"sha256": _sha256(path)}
    manifest = {
        "suite": "vllm-landmark local long-context suite",
        "seed": seed,
        "lengths": list(lengths),
        "languages": list(languages),
        "tasks": list(task_names),
        "per_length": per_length,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "packages": dict(sorted(packages.items())),
        "regenerate": "python -m eval.suite.generate --out DIR "
        f"--lengths {','.join(str(n) for n in lengths)} --languages {','.join(languages)} "
        f"--tasks {','.join(task_names)} --per-length {per_length} --seed {seed}",
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


def default_tokenizer_path() -> Path:
    """The prepared SmolLM2 folder (``landmark prepare``)."""
    from vllm_landmark.default_models import default_llm_dir

    return default_llm_dir()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m eval.suite.generate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lengths", default="2k,4k,8k,16k,32k,64k")
    parser.add_argument("--languages", default=",".join(LANGUAGES))
    parser.add_argument("--tasks", default=",".join(T.TASKS))
    parser.add_argument("--per-length", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", help="model folder whose tokenizer counts lengths")
    args = parser.parse_args(argv)
    task_names = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in task_names if t not in T.TASKS]
    if unknown:
        parser.error(f"unknown task(s) {unknown}; choose from {T.TASKS}")
    from eval.longbench.pred import load_tokenizer
    from eval.longbench.prompts import ConfigError

    try:
        path = args.tokenizer or str(default_tokenizer_path())
        if args.tokenizer is None and not Path(path).is_dir():
            raise SourceMissingError(
                f"no tokenizer: {path} does not exist; run `landmark prepare` or pass --tokenizer"
            )
        tokenizer = load_tokenizer(path)
        manifest = generate(
            args.out,
            tokenizer,
            lengths=parse_lengths(args.lengths),
            languages=[x for x in args.languages.split(",") if x],
            task_names=task_names,
            per_length=args.per_length,
            seed=args.seed,
        )
    except (SourceMissingError, ConfigError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    total = sum(f.get("items", 0) for f in manifest["files"].values())
    print(f"wrote {total} items to {args.out}/data (manifest: {args.out}/manifest.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
