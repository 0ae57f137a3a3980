"""Deterministic test documents of a given length in LLM tokens."""

from __future__ import annotations

import random
from typing import Any

WORDS = [
    "the",
    "keeper",
    "of",
    "the",
    "north",
    "lighthouse",
    "wrote",
    "in",
    "the",
    "record",
    "that",
    "a",
    "storm",
    "came",
    "from",
    "the",
    "west",
    "and",
    "the",
    "ship",
    "stayed",
    "in",
    "the",
    "harbour",
    "during",
    "the",
    "winter",
    "while",
    "the",
    "train",
    "from",
    "the",
    "mountain",
    "station",
    "brought",
    "the",
    "signal",
    "engine",
    "to",
    "the",
    "valley",
    "village",
    "in",
    "the",
    "year",
]


def make_document(tokenizer: Any, num_tokens: int, seed: int = 0) -> str:
    """Sentences of random words: exactly `num_tokens` LLM tokens, or just under."""
    rng = random.Random(seed)
    sentences: list[str] = []
    text = ""
    while True:
        words = [rng.choice(WORDS) for _ in range(rng.randint(6, 14))]
        sentence = " ".join(words).capitalize() + f" {rng.randint(1800, 1999)}."
        candidate = (text + " " + sentence).strip()
        if len(tokenizer.encode(candidate, add_special_tokens=False)) > num_tokens:
            return text
        text = candidate
        sentences.append(sentence)
