"""The multilingual sentence segmenter (landmarks): languages, code, lists, limits, bad input."""

from __future__ import annotations

import random

import pytest

from vllm_landmark.retrieval.segment import Segment, landmarks, segment
from vllm_landmark.testing.tiny_m3 import generate_text


def texts(text: str, **kwargs) -> list[str]:
    return [text[s.start : s.end] for s in segment(text, **kwargs)]


def check_invariants(text: str, segments: list[Segment], max_chars: int) -> None:
    last = 0
    for s in segments:
        assert last <= s.start < s.end <= len(text)
        piece = text[s.start : s.end]
        assert piece == piece.strip()
        assert len(piece) <= max_chars
        last = s.end
    # Nothing but whitespace is left out.
    covered = set()
    for s in segments:
        covered.update(range(s.start, s.end))
    assert all(text[i].isspace() for i in range(len(text)) if i not in covered)


def test_english_abbreviations_decimals_initials() -> None:
    text = (
        "Dr. Smith arrived at 3.30 p.m. on Monday. He paid $4.50, e.g. for tea! Was it good? "
        "Yes... and no. J. R. R. Tolkien wrote it. The U.S. Army came. See Fig. 3 for details. "
        "Visit example.com today. Version 1.2.3 is out."
    )
    assert texts(text) == [
        "Dr. Smith arrived at 3.30 p.m. on Monday.",
        "He paid $4.50, e.g. for tea!",
        "Was it good?",
        "Yes... and no.",
        "J. R. R. Tolkien wrote it.",
        "The U.S. Army came.",
        "See Fig. 3 for details.",
        "Visit example.com today.",
        "Version 1.2.3 is out.",
    ]


def test_quotes_and_brackets_stay_with_their_sentence() -> None:
    text = 'He said "Stop." Then he left. (It was late.) Next day came.'
    assert texts(text) == ['He said "Stop."', "Then he left.", "(It was late.)", "Next day came."]


def test_german_ordinals_and_abbreviations() -> None:
    text = (
        "Am 3. Oktober 1990 war es so. Der 2. Weltkrieg endete 1945. Das ist z.B. gut, bzw. "
        "sehr gut. Dann kam Nr. 5 an. Es war schön."
    )
    assert texts(text) == [
        "Am 3. Oktober 1990 war es so.",
        "Der 2. Weltkrieg endete 1945.",
        "Das ist z.B. gut, bzw. sehr gut.",
        "Dann kam Nr. 5 an.",
        "Es war schön.",
    ]


def test_chinese_full_width_punctuation_without_spaces() -> None:
    text = "这是第一句。这是第二句！第三句？第四句；“引用的句子。”最后"
    assert texts(text) == [
        "这是第一句。",
        "这是第二句！",
        "第三句？",
        "第四句；",
        "“引用的句子。”",
        "最后",
    ]


def test_japanese_and_ascii_marks_after_cjk() -> None:
    text = "日本語の文章です。長い文書を読む。「質問に答える。」次は?はい!終わり"
    assert texts(text) == [
        "日本語の文章です。",
        "長い文書を読む。",
        "「質問に答える。」",
        "次は?",
        "はい!",
        "終わり",
    ]


def test_other_scripts() -> None:
    assert texts("यह पहला वाक्य है। यह दूसरा है।") == ["यह पहला वाक्य है।", "यह दूसरा है।"]
    assert texts("هل هذا سؤال؟ نعم") == ["هل هذا سؤال؟", "نعم"]
    assert texts("Это первое предложение. Второе здесь!") == [
        "Это первое предложение.",
        "Второе здесь!",
    ]


def test_mixed_scripts_in_one_paragraph() -> None:
    text = "The river flows. 河流很长。Der Fluss ist lang! Река длинная. 川は長い。"
    assert texts(text) == [
        "The river flows.",
        "河流很长。",
        "Der Fluss ist lang!",
        "Река длинная.",
        "川は長い。",
    ]


def test_markdown_code_lists_tables_headings() -> None:
    text = (
        "# Title\n\nSome intro text. Another sentence.\n\n"
        "- item one. Still item one.\n- item two\n  continues here\n1. first\n2) second\n"
        "* third\n\n"
        "```python\ndef f(x):\n    return x + 1\n```\n\n"
        "    int main() {\n        return 0;\n    }\n\n"
        "| a | b |\n|---|---|\n\n一、第一项\n二、第二项\n"
    )
    got = [(s.kind, text[s.start : s.end]) for s in segment(text)]
    assert got == [
        ("heading", "# Title"),
        ("sentence", "Some intro text."),
        ("sentence", "Another sentence."),
        ("list", "- item one."),
        ("list", "Still item one."),
        ("list", "- item two\n  continues here"),
        ("list", "1. first"),
        ("list", "2) second"),
        ("list", "* third"),
        ("code", "```python"),
        ("code", "def f(x):"),
        ("code", "return x + 1"),
        ("code", "```"),
        ("code", "int main() {"),
        ("code", "return 0;"),
        ("code", "}"),
        ("table", "| a | b |"),
        ("table", "|---|---|"),
        ("list", "一、第一项"),
        ("list", "二、第二项"),
    ]


def test_a_list_marker_is_never_a_sentence_alone() -> None:
    """`1. Install ...`: the `.` after the number is a marker, not a sentence end (it used to
    make `1.` a landmark of its own); the item's later sentences still split."""
    text = "1. Install it. Then run it.\n2. Done.\niv. Roman item.\n(a) First. Second.\n"
    assert texts(text) == [
        "1. Install it.",
        "Then run it.",
        "2. Done.",
        "iv. Roman item.",
        "(a) First.",
        "Second.",
    ]


def test_unfenced_code_lines_are_units() -> None:
    text = "x = 1\ny = f(x)\nif y > 2:\n    print(y)\n"
    assert texts(text) == ["x = 1", "y = f(x)", "if y > 2:", "print(y)"]


def test_hard_wrapped_prose_is_joined_short_lines_are_not() -> None:
    text = (
        "This is a hard wrapped paragraph of text that goes on for quite a while and\n"
        "then continues on the next line without any punctuation at the end of the\n"
        "line because it was wrapped by an editor at seventy-five columns. Here a\n"
        "new sentence.\n\nRoses are red\nViolets are blue\n\n\nLast paragraph."
    )
    got = texts(text)
    assert got[0].startswith("This is a hard wrapped") and got[0].endswith("seventy-five columns.")
    assert got[1:] == [
        "Here a\nnew sentence.",
        "Roses are red",
        "Violets are blue",
        "Last paragraph.",
    ]


def test_windows_line_ends() -> None:
    assert texts("One line.\r\nTwo line.\r\n\r\nThree.") == ["One line.", "Two line.", "Three."]


def test_long_unpunctuated_runs_are_split_at_max_chars() -> None:
    words = "word " * 300
    got = segment(words, max_chars=200)
    assert all(s.end - s.start <= 200 for s in got)
    assert all(words[s.end - 1] == "d" for s in got)  # cut at spaces, not inside words
    check_invariants(words, got, 200)
    cjk = "河流城市语言历史" * 100  # no spaces, no punctuation
    got = segment(cjk, max_chars=100)
    assert [s.end - s.start for s in got] == [100] * 8
    assert got[-1].end == len(cjk)


def test_single_100k_character_sentence() -> None:
    text = "a" * 100_000
    got = segment(text)
    assert len(got) == 167  # ceil(100000 / 600)
    check_invariants(text, got, 600)
    assert all(s.kind == "split" for s in got)


def test_combining_marks_are_not_cut() -> None:
    text = ("e\u0301" * 100) + "x"
    for s in segment(text, max_chars=33):
        assert text[s.start] != "\u0301"


def test_empty_whitespace_and_bad_input() -> None:
    assert segment("") == []
    assert segment(" \n\t \n") == []
    assert landmarks("One. Two.") == [4, 9]
    with pytest.raises(TypeError):
        segment(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_chars"):
        segment("text", max_chars=3)


def test_lone_surrogates_do_not_crash() -> None:
    text = "Bad \ud800 char here. Next \udfff one."
    assert texts(text) == ["Bad \ud800 char here.", "Next \udfff one."]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_invariants_on_generated_multilingual_text(seed: int) -> None:
    rng = random.Random(seed)
    paragraphs = [generate_text(rng, rng.randint(1, 12)) for _ in range(40)]
    text = "\n\n".join(paragraphs) + "\n- a list item\n```\ncode();\n```\n"
    got = segment(text, max_chars=120)
    check_invariants(text, got, 120)
    assert len(got) >= 40


def test_a_300_kb_text_keeps_the_invariants() -> None:
    rng = random.Random(5)
    text = "\n\n".join(generate_text(rng, 10) for _ in range(400))  # about 300 kB
    got = segment(text)
    assert len(got) > 3000
    check_invariants(text, got, 600)
