"""Identifiers a question quotes are found whole: the line holding one is ranked first.

Among hundreds of look-alike lines ("the value for <UUID> is <UUID>."), a subword tokenizer
cuts every UUID into pieces that the other lines share; the identifier channel
(`retrieval.identifiers`) looks for the quoted string itself.
"""

from __future__ import annotations

import random
import uuid

import numpy as np
import pytest

from vllm_landmark.retrieval.identifiers import identifier_unit_counts, quoted_identifiers


def test_identifiers_are_found_by_their_shape() -> None:
    key = "3f2a9c1e-7b2d-4c1a-9e8f-1234567890ab"
    assert quoted_identifiers(f"What is the value for {key}?") == [key]
    assert quoted_identifiers("Which variables hold 41822?") == ["41822"]
    assert quoted_identifiers("What does ERR_CONN_RESET mean?") == ["ERR_CONN_RESET"]
    assert quoted_identifiers("Where is /etc/fstab read, and config.yaml?") == [
        "/etc/fstab",
        "config.yaml",
    ]
    assert quoted_identifiers("The price of SKU-883A, and of `foo`?") == ["foo", "SKU-883A"]
    # Words, short numbers and plain hyphenated words are not identifiers.
    assert quoted_identifiers("Who wrote the well-known book in 2024, and why?") == []
    assert quoted_identifiers("What is the capital of France?") == []


def test_unit_counts_take_whole_occurrences_only() -> None:
    document = "Key AB-12 opens. Key AB-123 closes. Nothing here. Both AB-12 and E404."
    starts = [0, 17, 36, 50]
    ends = [16, 35, 49, len(document)]
    units = np.array(list(zip(starts, ends, strict=True)))
    counts = identifier_unit_counts(document, units, "Which door does AB-12 open, or E404?")
    # "AB-12" inside "AB-123" is not the identifier; the last unit holds both identifiers.
    assert counts.tolist() == [1.0, 0.0, 0.0, 2.0]


def log_document(rng: random.Random, lines: int) -> tuple[str, list[str]]:
    keys = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(lines)]
    values = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(lines)]
    text = "\n".join(f"The value for {k} is {v}." for k, v in zip(keys, values, strict=True))
    return text, keys


@pytest.fixture(scope="module")
def ranker(tmp_path_factory):
    from vllm_landmark.retrieval.m3 import M3Encoder
    from vllm_landmark.retrieval.spans import SpanRanker
    from vllm_landmark.testing.tiny_m3 import build_tiny_m3

    folder = build_tiny_m3(tmp_path_factory.mktemp("identifiers") / "m3")
    return SpanRanker(M3Encoder(str(folder)))


def _best_line(ranker, document: str, question: str, **options) -> str:
    scores = ranker.score_all_spans(document, question, lexical_fusion=True, **options)
    best = int(np.argmax(scores.score))
    start, end = scores.char_offsets[best]
    return document[int(start) : int(end)]


def test_the_line_with_the_quoted_key_is_ranked_first(ranker) -> None:
    rng = random.Random(7)
    document, keys = log_document(rng, 300)
    picked = rng.sample(keys, 12)
    found = [key in _best_line(ranker, document, f"What is the value for {key}?") for key in picked]
    assert all(found)
    # Without the identifier channel the same ranker misses some of them (so this can fail).
    plain = [
        key
        in _best_line(ranker, document, f"What is the value for {key}?", exact_identifiers=False)
        for key in picked
    ]
    assert not all(plain)
