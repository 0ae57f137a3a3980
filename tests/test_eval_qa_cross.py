"""Cross-language QA items (eval/suite/qa_cross.py): tiny translated pages, no LLM."""

from __future__ import annotations

import random
import re

from eval.suite import qa_cross as qc
from eval.suite.qa import split_of, word_count
from recipes.m3.build_data import Document, Section
from tests.test_eval_qa import WordTokenizer

EN = [
    "The program reads the file named in the first argument and writes a summary of it to the "
    "standard output of the terminal.",
    "With the option --verbose the tool prints each record as it reads it, and at the end the "
    "number of records that were read.",
    "The cache of {name} is stored in the hidden folder named quarterdeck{i} under the home "
    "directory of the user, and it is removed when the user logs out.",
]
DE = [
    "Das Programm liest die Datei, die im ersten Argument genannt wird, und schreibt eine "
    "Zusammenfassung davon in die Standardausgabe des Terminals.",
    "Mit der Option --verbose gibt das Werkzeug jeden Eintrag aus, wenn es ihn liest, und am "
    "Ende die Anzahl der Einträge, die gelesen wurden.",
    "Der Zwischenspeicher von {name} wird in dem versteckten Ordner quarterdeck{i} im "
    "Verzeichnis des Benutzers abgelegt, und er wird entfernt, wenn der Benutzer sich abmeldet.",
]


def name(i: int) -> str:
    """A word of letters only that names page ``i`` (the answer word of its items)."""
    return "tool" + chr(97 + i // 26) + chr(97 + i % 26)


def page(i: int, lang: str, extra_section: bool = False) -> Document:
    texts = EN if lang == "en" else DE
    sections = [
        Section("NAME", 1, [f"tool{i} - a tool"]),
        Section("DESCRIPTION", 1, [t.format(i=i, name=name(i)) for t in texts]),
    ]
    if extra_section:  # translations append their own sections (translators, bug reports)
        sections.append(Section("ÜBERSETZUNG", 1, ["Die Übersetzung stammt von jemandem."]))
    return Document(f"man-{lang}:tool{i}", f"man:tool{i}", lang, f"man-{lang}", "t", sections)


def pages(n: int = 12) -> dict[str, dict[str, Document]]:
    return {
        "en": {f"man:tool{i}": page(i, "en") for i in range(n)},
        "de": {f"man:tool{i}": page(i, "de", extra_section=True) for i in range(0, n, 2)},
    }


def test_paragraphs_pair_only_with_their_translation() -> None:
    en, de = page(3, "en"), page(3, "de", extra_section=True)
    pairs = qc.aligned_paragraphs(en, de)
    expected = zip(EN, DE, strict=True)
    assert pairs == {e.format(i=3, name=name(3)): d.format(i=3, name=name(3)) for e, d in expected}
    # Anchors (options, words with digits) must agree: a shifted pairing is refused.
    assert not qc.paragraphs_align(EN[1], DE[2].format(i=3, name=name(3)), "en", "de")
    # A paragraph left untranslated is not a translation.
    assert not qc.paragraphs_align(EN[0], EN[0], "en", "de")
    # Sections stop pairing where the paragraph counts differ.
    shorter = page(3, "de")
    shorter.sections[0].paragraphs.append("Noch ein Absatz.")
    assert qc.aligned_paragraphs(en, shorter) == {}


def test_items_quote_the_translation_and_answer_with_the_original() -> None:
    tokenizer = WordTokenizer()
    items = qc.generate(pages(), tokenizer, length=150, min_fraction=0.5)
    directions = {(item["question_lang"], item["lang"]) for item in items}
    assert directions == {("en", "de"), ("de", "en")}
    for item in items:
        context, question = item["context"], item["question"]
        low, high = item["evidence"]
        sentence = context[low:high]
        assert context.count(sentence) == 1
        assert sentence.startswith(item["answer"])
        assert len(item["answer"].split()) <= qc.ANSWER_WORDS
        assert low <= item["answer_start"] < low + len(item["answer"])
        assert context[item["answer_start"] :].startswith(item["answer_word"])
        assert word_count(context, item["answer_word"]) == 1
        # The quote is the other language's sentence: the gold sentence is not in the question.
        assert sentence not in question
        source = EN if item["question_lang"] == "en" else DE
        i = int(item["key"].removeprefix("man:tool"))
        assert any(s.format(i=i, name=name(i)) in question for s in source)
        assert item["split"] == split_of(item["key"], 0)
        assert len(tokenizer.encode(context)) <= 150
    again = qc.generate(pages(), WordTokenizer(), length=150, min_fraction=0.5)
    assert again == items  # deterministic


def test_more_questions_per_document_ask_about_other_sentences() -> None:
    """`questions_per_document=3`: the first question of each document is the one-question
    set's item (same id, same draw); the others quote other sentences of the same context."""

    def rich_pages() -> dict[str, dict[str, Document]]:
        out: dict[str, dict[str, Document]] = {}
        for lang, texts in (("en", EN), ("de", DE)):
            out[lang] = {}
            for i in range(0, 12, 2):
                # Every sentence opens with a word of its own: each can be asked about.
                opened = [f"{name(i)}{'xyz'[j]}: " + t for j, t in enumerate(texts)]
                doc = page(i, lang)
                doc.sections[1].paragraphs[:] = [t.format(i=i, name=name(i)) for t in opened]
                out[lang][f"man:tool{i}"] = doc
        return out

    one = qc.generate(rich_pages(), WordTokenizer(), length=150, min_fraction=0.5)
    three = qc.generate(
        rich_pages(), WordTokenizer(), length=150, min_fraction=0.5, questions_per_document=3
    )
    assert {item["id"] for item in one} <= {item["id"] for item in three}
    by_id = {item["id"]: item for item in three}
    assert all(by_id[item["id"]] == item for item in one)
    extra = [item for item in three if "#" in item["id"]]
    assert len(extra) >= len(one) and len(three) <= 3 * len(one)
    for item in extra:
        first = by_id[item["id"].split("#")[0]]
        assert item["context"] == first["context"] and item["key"] == first["key"]
        assert item["evidence"] != first["evidence"] and item["question"] != first["question"]
        assert item["split"] == first["split"]


def test_short_pages_are_set_among_other_pages_of_their_split() -> None:
    tokenizer = WordTokenizer()
    collection = pages(40)
    items = qc.generate(collection, tokenizer, length=300, min_fraction=0.8)
    assert items
    for item in items:
        n = len(tokenizer.encode(item["context"]))
        assert 0.8 * 300 <= n <= 300
        own = item["key"].removeprefix("man:")
        names = re.findall(r"^(tool\d+) - a tool$", item["context"], re.MULTILINE)
        others = [n for n in names if n != own]
        assert own in names and others  # other pages were added
        for other in others:
            assert split_of(f"man:{other}", 0) == item["split"]  # never a page of the other split


def test_assemble_context_keeps_the_page_whole_and_stops_at_the_length() -> None:
    tokenizer = WordTokenizer()

    def count(text: str) -> int:
        return len(tokenizer.encode(text))

    doc = page(0, "en")
    others = [page(i, "en") for i in range(1, 30)]
    context = qc.assemble_context(doc, others, count, 400, random.Random(0))
    assert context is not None and count(context) <= 400
    for paragraph in doc.sections[1].paragraphs:
        assert paragraph in context
