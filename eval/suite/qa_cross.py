"""Cross-language QA: the question quotes a sentence's translation, the document holds the original.

:mod:`eval.suite.qa` quotes the document word for word, so a lexical retriever (BM25) finds the
gold sentence as surely as an oracle. Here the question is in another language: a manual page
and its translation (``manpages`` and ``manpages-de``/``-fr``/``-es``, translated paragraph by
paragraph) give aligned sentences, and each item asks, in language Q, for the sentence of a
document in language D that says what the quoted Q sentence says. The answer is the start of
that sentence as the document writes it (its first :data:`ANSWER_WORDS` words). Both
directions are made: English documents with German, French or Spanish questions, and German,
French or Spanish documents with English questions. This is the use a multilingual retriever
(BGE-M3's line) is for; words shared across the languages (option names, commands, numbers)
still give BM25 a foothold, as they would in real use.

Alignment: a page's sections are paired by position while both sides have the same number of
paragraphs (the translations append sections of their own at the end); paragraphs are paired
by position inside paired sections; a pair is kept only when their language checks pass,
their lengths agree within a factor of two and their "anchors" (words with digits, options,
``name(n)`` references) are the same multiset. The quoted sentence is the first sentence of
the translated paragraph, the gold sentence the first sentence of the original, both 8-40
words.

A page shorter than ``--length`` is set among other pages of its language and split (a
collection of manuals, as a user would hand over; distractors, not padding), joined by blank
lines, at a position drawn from the item's seed, until the context is about ``--length`` tokens.

Items have the fields of :mod:`eval.suite.qa` (so ``eval.suite.qa_run`` runs them), plus
``question_lang``. ``answer_word`` is the answer's first word that occurs once in the context
(at least 5 letters, not a function word). The split is :func:`eval.suite.qa.split_of` of the
page key, as in :mod:`eval.suite.qa`: a page is in the same split in both sets.

    python -m eval.suite.qa_cross --out ~/.cache/vllm-landmark/eval/qa-cross-4k.jsonl --length 4096
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.suite.qa import (
    CONTENT_WORD,
    MAN_SOURCES,
    document_text,
    is_answer_word,
    load_tokenizer,
    make_item,
    man_pages,
    split_of,
    token_counter,
    write_items,
)
from recipes.m3.build_data import (
    Document,
    in_language,
    is_prose,
    package_version,
    split_sentences,
)

ANSWER_WORDS = 8
QUESTIONS = {
    "en": 'A sentence of the document says, in English: "{quote}" '
    "Quote the start of that sentence as the document writes it.",
    "de": 'Ein Satz des Dokuments lautet auf Deutsch: "{quote}" '
    "Zitiere den Anfang dieses Satzes so, wie er im Dokument steht.",
    "fr": "Une phrase du document dit, en français : « {quote} » "
    "Citez le début de cette phrase telle que le document l'écrit.",
    "es": 'Una frase del documento dice, en español: "{quote}" '
    "Cita el comienzo de esa frase tal como la escribe el documento.",
}
_ANCHOR = re.compile(r"\S*\d\S*|--?[\w-]+|\w+\(\d\w*\)")


def anchors(text: str) -> Counter[str]:
    """Tokens a translation keeps as they are: words with digits, options, ``name(n)``."""
    return Counter(m.group().strip(".,;:()") for m in _ANCHOR.finditer(text))


def paragraphs_align(original: str, translation: str, lang: str, other: str) -> bool:
    """Whether two paragraphs paired by position look like a paragraph and its translation."""
    if original == translation or not (is_prose(original) and is_prose(translation)):
        return False  # an untranslated paragraph is not a translation
    if not (in_language(original, lang) and in_language(translation, other)):
        return False
    if not 0.5 <= len(translation) / max(1, len(original)) <= 2.0:
        return False
    return anchors(original) == anchors(translation)


def aligned_paragraphs(doc: Document, translation: Document) -> dict[str, str]:
    """Paragraphs of ``doc`` mapped to their translation in ``translation`` (see module doc)."""
    pairs: dict[str, str] = {}
    for section, other in zip(doc.sections, translation.sections, strict=False):
        if len(section.paragraphs) != len(other.paragraphs):
            break
        for original, translated in zip(section.paragraphs, other.paragraphs, strict=True):
            if paragraphs_align(original, translated, doc.lang, translation.lang):
                pairs.setdefault(original, translated)
    return pairs


def first_sentence(paragraph: str) -> str | None:
    """The paragraph's first sentence when it has 8-40 words, else None."""
    sentences = split_sentences(paragraph)
    if not sentences or not 8 <= len(sentences[0].split()) <= 40:
        return None
    return sentences[0]


def make_cross_questions(
    context: str,
    lang: str,
    translations: dict[str, str],
    question_lang: str,
    rng: random.Random,
    count: int = 1,
) -> list[dict[str, Any]]:
    """Up to ``count`` questions in ``question_lang``, each quoting the translation of a
    different sentence of ``context``. The first is the one ``count=1`` gives (the same draw of
    ``rng``), so a set made with more questions per document holds the one-question set."""
    candidates = []
    for paragraph in re.finditer(r"[^\n]+(?:\n[^\n]+)*", context):
        translated = translations.get(paragraph.group())
        if translated is None:
            continue
        sentence, quote = first_sentence(paragraph.group()), first_sentence(translated)
        if sentence is None or quote is None or context.count(sentence) != 1:
            continue
        words = list(re.finditer(r"\S+", sentence))[:ANSWER_WORDS]
        answer_end = words[-1].end()
        for match in CONTENT_WORD.finditer(sentence[:answer_end]):
            word = match.group()
            if is_answer_word(word, context):
                start = paragraph.start()
                candidates.append((start, sentence, quote, start + match.start(), word, answer_end))
                break
    if not candidates:
        return []
    first = rng.choice(candidates)
    rest = [c for c in candidates if c is not first]
    chosen = [first, *rng.sample(rest, min(count - 1, len(rest)))]
    return [
        {
            "question": QUESTIONS[question_lang].format(quote=quote),
            "question_lang": question_lang,
            "answer": sentence[:answer_end],
            "answer_word": word,
            "evidence": [start, start + len(sentence)],
            "answer_start": word_start,
        }
        for start, sentence, quote, word_start, word, answer_end in chosen
    ]


def assemble_context(
    doc: Document,
    others: Sequence[Document],
    count: Any,
    length: int,
    rng: random.Random,
) -> str | None:
    """``doc``'s text, set among ``others`` (drawn in ``rng``'s order) up to ``length`` tokens."""
    target = document_text(doc, count, length)
    if target is None:
        return None
    used = count(target)
    before: list[str] = []
    after: list[str] = []
    for other in rng.sample(list(others), len(others)):
        if used >= 0.95 * length:
            break
        text = document_text(other, count, length - used - 2)
        if text is None:
            continue
        (before if rng.random() < 0.5 else after).append(text)
        used += count(text) + 2
    return "\n\n".join([*before, target, *after])


def generate(
    pages: dict[str, dict[str, Document]],
    tokenizer: Any,
    length: int,
    seed: int = 0,
    *,
    min_fraction: float = 0.8,
    questions_per_document: int = 1,
) -> list[dict[str, Any]]:
    """Items for every page in English and another language, both directions.

    ``pages`` maps a language to its documents by page key. With ``questions_per_document``
    above 1, a document also gets questions about other sentences (ids ``...#2``, ``#3``),
    on the same context; the first question of each is the one-question set's item.
    """
    count = token_counter(tokenizer)
    items: list[dict[str, Any]] = []
    english = pages.get("en", {})
    for other_lang in sorted(set(pages) - {"en"}):
        for key in sorted(set(english) & set(pages[other_lang])):
            split = split_of(key, seed)
            for doc, translation in [
                (pages[other_lang][key], english[key]),
                (english[key], pages[other_lang][key]),
            ]:
                rng = random.Random(f"{seed}:{key}:{doc.lang}:{translation.lang}")
                others = [
                    d
                    for k, d in sorted(pages[doc.lang].items())
                    if k != key and split_of(k, seed) == split
                ]
                context = assemble_context(doc, others, count, length, rng)
                if context is None:
                    continue
                n = len(tokenizer.encode(context, add_special_tokens=False))
                if not min_fraction * length <= n <= length:
                    continue
                translations = aligned_paragraphs(doc, translation)
                questions = make_cross_questions(
                    context, doc.lang, translations, translation.lang, rng, questions_per_document
                )
                item_id = f"{doc.doc_id}<{translation.lang}@{length}"
                for index, question in enumerate(questions, start=1):
                    suffix = f"#{index}" if index > 1 else ""
                    items.append(make_item(item_id + suffix, doc, context, n, question, seed))
    items.sort(key=lambda item: (item["split"], item["lang"], item["key"]))
    return items


def manual_pages(min_bytes: int = 4000) -> dict[str, dict[str, Document]]:
    """The installed manual pages of :data:`MAN_SOURCES`, by language and page key."""
    pages: dict[str, dict[str, Document]] = {}
    for package, lang in MAN_SOURCES.items():
        by_key: dict[str, Document] = {}
        for doc in man_pages(package, lang, min_bytes):
            by_key.setdefault(doc.key, doc)
        if by_key:
            pages[lang] = by_key
    return pages


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m eval.suite.qa_cross", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="items (JSON lines)")
    parser.add_argument("--length", type=int, default=4096, help="context length, LLM tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", help="LLM folder (default: the prepared SmolLM2)")
    parser.add_argument(
        "--questions-per-document",
        type=int,
        default=1,
        help="questions about different sentences of each document (more items per page; "
        "qa_run's intervals resample pages, so they stay honest)",
    )
    args = parser.parse_args(argv)
    if args.questions_per_document < 1:
        parser.error("--questions-per-document must be at least 1")
    tokenizer = load_tokenizer(args.tokenizer)
    count = args.questions_per_document
    items = generate(
        manual_pages(), tokenizer, args.length, args.seed, questions_per_document=count
    )
    packages = {p: package_version(p) for p in MAN_SOURCES}
    manifest: dict[str, Any] = {"length": args.length, "seed": args.seed, "packages": packages}
    if args.questions_per_document > 1:
        manifest["questions_per_document"] = args.questions_per_document
    write_items(items, args.out, manifest, label=lambda i: f"{i['question_lang']}->{i['lang']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
