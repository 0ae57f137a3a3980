"""Question answering over real long documents, generated offline, split by document.

Each item is one real document (a manual page in English, German, French or Spanish, or a
page of the Python documentation) cut at a paragraph end to about ``--length`` LLM tokens, and
one question whose answer is a fact stated once in it: a sentence of the document is quoted
up to one of its words, and the answer is that word and the few words after it (up to six,
within the sentence). The word is chosen so that it occurs exactly once in the whole context
(case-insensitive, as a whole word), is at least 5 letters long and is not a function word,
so the context, not the question, holds the answer. The sentence is the gold passage (its
character offsets are stored, for the oracle arm).

The split is by document key (a manual page and its translations share one key), decided by a
hash of the key and the seed: ``dev`` (choose settings) and ``test`` (report them). No key is
in both. Everything is deterministic for the same packages, tokenizer and seed.

    apt-get install manpages manpages-de manpages-fr manpages-es python3-doc groff
    python -m eval.suite.qa --out ~/.cache/vllm-landmark/eval/qa-4k.jsonl --length 4096

Items (one JSON object a line): ``id``, ``split``, ``lang``, ``key``, ``source``, ``context``,
``question``, ``answer``, ``answer_word`` (the word that occurs once), ``evidence`` ([start,
end] characters of the sentence in ``context``), ``answer_start`` (character offset of the
answer), ``length`` (LLM tokens of the context), ``retriever_train`` (whether the default
retriever's heads were trained on passages of this document: ``recipes/m3/build_data`` holds
out a different 10% of keys).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from recipes.m3.build_data import (
    _STOPWORD_SETS,
    Document,
    in_language,
    is_prose,
    man_documents,
    package_files,
    package_version,
    rst_documents,
    split_sentences,
    stable_hash,
)

MAN_SOURCES = {"manpages": "en", "manpages-de": "de", "manpages-fr": "fr", "manpages-es": "es"}
PYTHON_DOC = "python3.11-doc"
QUESTION = (
    'How does this sentence of the document continue: "{prefix} ..."? '
    "Answer with the next words of the sentence only."
)
MIN_PREFIX_WORDS = 5
ANSWER_WORDS = 6
#: A word an answer can hinge on: letters only, at least 5 of them.
CONTENT_WORD = re.compile(r"(?<![\w-])[^\W\d_][^\W\d_-]{4,}(?![\w-])")
_STOPWORDS = set().union(*_STOPWORD_SETS.values())


def man_pages(package: str, lang: str, min_bytes: int = 4000) -> Iterator[Document]:
    """The installed manual pages of ``package`` of at least ``min_bytes`` (compressed)."""
    files = [
        f
        for f in package_files(package)
        if re.search(r"/man\d\w*/[^/]+\.gz$", str(f)) and f.stat().st_size >= min_bytes
    ]
    if not files:
        print(f"[qa] {package}: not installed or no long pages, skipped", file=sys.stderr)
        return iter(())
    return man_documents(package, lang, files)


def long_documents(min_bytes: int = 4000, max_per_source: int | None = None) -> Iterator[Document]:
    """Installed documents large enough to give long contexts, in a fixed order."""
    for package, lang in MAN_SOURCES.items():
        for i, doc in enumerate(man_pages(package, lang, min_bytes)):
            if max_per_source is not None and i >= max_per_source:
                break
            yield doc
    entries = []
    for f in package_files(PYTHON_DOC):
        if str(f).endswith(".rst.txt") and f.stat().st_size >= 4 * min_bytes:
            key = "python:" + str(f).split("/_sources/", 1)[-1].removesuffix(".rst.txt")
            entries.append((f, "en", "python3-doc", key, f"python3-doc:{key}"))
    for i, doc in enumerate(rst_documents(entries)):
        if max_per_source is not None and i >= max_per_source:
            break
        yield doc


def document_text(doc: Document, count: Any, length: int) -> str | None:
    """Headings and paragraphs joined by blank lines, cut at a paragraph end to ``length``."""
    parts: list[str] = []
    used = 0
    for section in doc.sections:
        for piece in [section.heading, *section.paragraphs]:
            if not piece.strip():
                continue
            n = count(piece) + 2  # the blank line between paragraphs
            if used + n > length:
                text = "\n\n".join(parts)
                return text if parts else None
            parts.append(piece)
            used += n
    return "\n\n".join(parts) if parts else None


def word_count(context: str, word: str) -> int:
    """Whole-word, case-insensitive occurrences of ``word`` in ``context``."""
    return len(re.findall(rf"(?<![\w-]){re.escape(word)}(?![\w-])", context, re.IGNORECASE))


def is_answer_word(word: str, context: str) -> bool:
    """Whether ``word`` occurs exactly once in ``context`` and is not a function word."""
    return word.lower() not in _STOPWORDS and word_count(context, word) == 1


def make_question(context: str, lang: str, rng: random.Random) -> dict[str, Any] | None:
    """A sentence of ``context`` cut before a word that occurs only there, or None.

    The question quotes the sentence up to that word; the answer is the word and the words
    after it (at most :data:`ANSWER_WORDS`, not past the sentence end).
    """
    candidates: list[tuple[int, int, int, int, int]] = []  # sentence, word, answer end
    for paragraph in re.finditer(r"[^\n]+(?:\n[^\n]+)*", context):
        text = paragraph.group()
        if not is_prose(text) or not in_language(text, lang):
            continue
        cursor = 0
        for sentence in split_sentences(text):
            start = text.find(sentence, cursor)
            if start < 0:
                continue
            cursor = start + len(sentence)
            if not 8 <= len(sentence.split()) <= 40 or not is_prose(sentence, 0.7):
                continue
            if context.count(sentence) != 1:
                continue
            base = paragraph.start() + start
            for match in CONTENT_WORD.finditer(sentence):
                word = match.group()
                if len(sentence[: match.start()].split()) < MIN_PREFIX_WORDS:
                    continue
                if not is_answer_word(word, context):
                    continue
                rest = list(re.finditer(r"\S+", sentence[match.start() :]))[:ANSWER_WORDS]
                end = base + match.start() + rest[-1].end()
                candidates.append(
                    (base, base + len(sentence), base + match.start(), base + match.end(), end)
                )
    if not candidates:
        return None
    s_start, s_end, w_start, w_end, a_end = rng.choice(candidates)
    prefix = context[s_start:w_start].rstrip()
    return {
        "question": QUESTION.format(prefix=prefix),
        "answer": context[w_start:a_end],
        "answer_word": context[w_start:w_end],
        "evidence": [s_start, s_end],
        "answer_start": w_start,
    }


def split_of(key: str, seed: int) -> str:
    """``dev`` or ``test`` for a document key (half each, by a stable hash)."""
    return "dev" if stable_hash(f"qa:{seed}:{key}") % 2 == 0 else "test"


def retriever_trained_on(key: str) -> bool:
    """Whether recipes/m3/build_data (seed 0, 10% held out) put this key in its train split."""
    return stable_hash(f"0:{key}") % 1000 >= 100


def token_counter(tokenizer: Any) -> Callable[[str], int]:
    """``text -> its LLM token count``, each distinct text encoded once."""
    cache: dict[str, int] = {}

    def count(text: str) -> int:
        if text not in cache:
            cache[text] = len(tokenizer.encode(text, add_special_tokens=False))
        return cache[text]

    return count


def make_item(
    item_id: str,
    doc: Document,
    context: str,
    num_tokens: int,
    question: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """An item's record (fields in the module doc) for a question about ``doc``."""
    return {
        "id": item_id,
        "split": split_of(doc.key, seed),
        "lang": doc.lang,
        "key": doc.key,
        "source": doc.source,
        "context": context,
        **question,
        "length": num_tokens,
        "retriever_train": retriever_trained_on(doc.key),
    }


def generate(
    docs: Sequence[Document] | Iterator[Document],
    tokenizer: Any,
    length: int,
    seed: int = 0,
    min_fraction: float = 0.8,
) -> list[dict[str, Any]]:
    """One item per document long enough (at least ``min_fraction`` of ``length`` tokens)."""
    count = token_counter(tokenizer)
    items: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for doc in docs:
        if (doc.key, doc.lang) in seen:
            continue  # one item per page and language (duplicate sections of one page)
        context = document_text(doc, count, length)
        if context is None:
            continue
        n = len(tokenizer.encode(context, add_special_tokens=False))
        if not min_fraction * length <= n <= length:
            continue
        rng = random.Random(f"{seed}:{doc.key}:{doc.lang}")
        question = make_question(context, doc.lang, rng)
        if question is None:
            continue
        seen.add((doc.key, doc.lang))
        items.append(make_item(f"{doc.doc_id}@{length}", doc, context, n, question, seed))
    items.sort(key=lambda item: (item["split"], item["lang"], item["key"]))
    return items


def select(items: Sequence[dict[str, Any]], split: str, limit: int | None) -> list[dict[str, Any]]:
    """Items of one split, languages interleaved (round robin), the first ``limit`` of them."""
    by_lang: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        if item["split"] == split:
            by_lang.setdefault(item["lang"], []).append(item)
    out: list[dict[str, Any]] = []
    queues = [by_lang[lang] for lang in sorted(by_lang)]
    depth = 0
    while any(depth < len(q) for q in queues):
        out.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    return out[:limit] if limit is not None else out


def load_tokenizer(folder: str | None) -> Any:
    """The LLM tokenizer the items are counted in (default: the prepared SmolLM2)."""
    from transformers import AutoTokenizer

    if folder is None:
        from vllm_landmark.default_models import prepare_default_llm

        folder = str(prepare_default_llm())
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def write_items(
    items: Iterable[dict[str, Any]],
    out: Path,
    manifest: dict[str, Any],
    label: Callable[[dict[str, Any]], str] = lambda item: item["lang"],
) -> None:
    """Items as JSON lines and ``<out>.manifest.json`` with their counts by split and ``label``."""
    items = list(items)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")
    counts = Counter((item["split"], label(item)) for item in items)
    manifest["counts"] = {f"{split}/{key}": n for (split, key), n in sorted(counts.items())}
    out.with_suffix(".manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps(manifest["counts"]), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m eval.suite.qa", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="items (JSON lines)")
    parser.add_argument("--length", type=int, default=4096, help="context length, LLM tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", help="LLM folder (default: the prepared SmolLM2)")
    parser.add_argument("--max-per-source", type=int, help="documents per source, for trials")
    args = parser.parse_args(argv)
    tokenizer = load_tokenizer(args.tokenizer)
    docs = long_documents(max_per_source=args.max_per_source)
    items = generate(docs, tokenizer, args.length, seed=args.seed)
    packages = {p: package_version(p) for p in [*MAN_SOURCES, PYTHON_DOC]}
    manifest = {"length": args.length, "seed": args.seed, "counts": {}, "packages": packages}
    write_items(items, args.out, manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
