"""Retrieval in rounds (retrieval/hops.py) on a tiny random BGE-M3: a chain of assignments is
followed link by link on one encoding; a question one sentence answers takes one round."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest

from vllm_landmark.retrieval.hops import bridge_terms, chain_first, rare_bound
from vllm_landmark.retrieval.identifiers import identifier_unit_hits
from vllm_landmark.retrieval.m3 import M3Encoder
from vllm_landmark.retrieval.spans import SpanRanker
from vllm_landmark.testing.tiny_m3 import build_tiny_m3, generate_text

VALUE = "41822"
NAMES = ["Qzvkt", "Wmbrx", "Hjdpl", "Xnfgc"]
CHAIN = [f"{NAMES[0]} = {VALUE}."] + [f"{NAMES[i]} = {NAMES[i - 1]}." for i in range(1, len(NAMES))]
QUESTION = f"Which variables are assigned the value {VALUE}?"


@pytest.fixture(scope="module")
def ranker(tmp_path_factory: pytest.TempPathFactory) -> SpanRanker:
    return SpanRanker(M3Encoder(build_tiny_m3(tmp_path_factory.mktemp("hops") / "tiny_m3")))


def chain_document(seed: int) -> str:
    """Random sentences with the chain's links as paragraphs, in order, far apart."""
    rng = random.Random(seed)
    paragraphs = [generate_text(rng, rng.randint(2, 5), ["en"]) for _ in range(40)]
    for place, link in zip(sorted(rng.sample(range(40), len(CHAIN))), CHAIN, strict=True):
        paragraphs.insert(place + CHAIN.index(link), link)
    return "\n\n".join(paragraphs)


def unit_texts(document: str, scores) -> list[str]:
    return [document[a:b] for a, b in scores.char_offsets.tolist()]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rounds_follow_the_chain_link_by_link(ranker: SpanRanker, seed: int) -> None:
    document = chain_document(seed)
    one = ranker.score_all_spans(document, QUESTION, lexical_fusion=True)
    assert one.rounds == 1 and one.hops == []
    more = ranker.score_all_spans(document, QUESTION, lexical_fusion=True, rounds=5)
    texts = unit_texts(document, more)
    # The quoted number puts the first link first; each later round finds the next link
    # (the only other sentence naming the last one's variable), then stops: the last link
    # names nothing the document repeats.
    assert more.rounds == len(CHAIN)
    assert [texts[h.unit].strip() for h in more.hops] == CHAIN[1:]
    assert [h.terms for h in more.hops] == [(name,) for name in NAMES[:-1]]
    top = np.argsort(-more.score, kind="stable")[: len(CHAIN)]
    assert [texts[u].strip() for u in top] == CHAIN
    # Same encoding, not re-encoded: the rounds after the first cost query forwards only.
    assert more.cached
    # Fewer rounds allowed: the chain is cut there.
    two = ranker.score_all_spans(document, QUESTION, lexical_fusion=True, rounds=2)
    assert two.rounds == 2 and [texts[h.unit].strip() for h in two.hops] == CHAIN[1:2]


def test_a_sentence_naming_nothing_repeated_takes_one_round(ranker: SpanRanker) -> None:
    rng = random.Random(5)
    paragraphs = [generate_text(rng, 3, ["en"]) for _ in range(30)]
    paragraphs.insert(17, "The special magic number for QZ-7781 is 7316402.")
    document = "\n\n".join(paragraphs)
    scores = ranker.score_all_spans(
        document, "What is the special magic number for QZ-7781?", lexical_fusion=True, rounds=5
    )
    best = int(np.argmax(scores.score))
    assert "QZ-7781" in unit_texts(document, scores)[best]  # the quoted key ranks it first
    assert scores.rounds == 1 and scores.hops == []


def test_bridge_terms_are_new_and_rare() -> None:
    units = ["Alpha = 41822.", "Beta = Alpha.", "the river the city.", "the road the city."]
    document = " ".join(units)
    starts = [document.index(u) for u in units]
    chars = np.asarray([(a, a + len(u)) for a, u in zip(starts, units, strict=True)])
    # Alpha is in 2 sentences (a bridge); 41822 is asked; nothing else in unit 0.
    assert [t for t, _ in bridge_terms(document, chars, 0, "Who holds 41822?")] == ["Alpha"]
    # Beta occurs once: no bridge from it; Alpha is one, back to the first link.
    assert [t for t, _ in bridge_terms(document, chars, 1, "Who holds 41822?")] == ["Alpha"]
    # "the" and "city" are in more sentences than the rare bound allows? Here the bound is 3
    # of 4 sentences, so "city" (2) is a bridge and "the" (2 sentences too) as well: rarity is
    # relative to the document, and the question's own words never are.
    assert rare_bound(4) == 3 and rare_bound(1000) == 20
    terms = [t for t, _ in bridge_terms(document, chars, 2, "Which city has a river?")]
    assert "city" not in terms and "river" not in terms and "the" in terms


def test_chain_first_puts_the_chain_on_top_in_order() -> None:
    scores = np.asarray([0.5, 0.9, 0.1, 0.7, 0.3])
    out = chain_first(scores, [3, 0, 4])
    assert list(np.argsort(-out)[:3]) == [3, 0, 4]
    assert out[1] == 0.9 and out[2] == 0.1  # the rest keep their scores
    assert (chain_first(scores, []) == scores).all()


@pytest.mark.parametrize("seed", range(5))
def test_identifier_hits_match_a_brute_force_scan(seed: int) -> None:
    rng = random.Random(seed)
    words = ["ab", "abc", "x-1", "a.b", "ab_c", "Abc"]
    document = " ".join(rng.choice(words + ["q", "zz"]) for _ in range(200))
    cuts = sorted(rng.sample(range(1, len(document)), 30))
    bounds = [0, *cuts, len(document)]
    chars = np.asarray(list(zip(bounds[:-1], bounds[1:], strict=True)))
    hits = identifier_unit_hits(document, chars, words)
    for row, word in enumerate(words):
        spans = [m.span() for m in re.finditer(r"(?<!\w)" + re.escape(word) + r"(?!\w)", document)]
        expected = [any(a < e and b > s for s, e in spans) for a, b in chars.tolist()]
        assert hits[row].tolist() == expected, word


def test_rounds_must_be_positive(ranker: SpanRanker) -> None:
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        ranker.score_all_spans(chain_document(0), QUESTION, rounds=0)


def test_rounds_setting_reaches_the_config(tmp_path: Path) -> None:
    from vllm_landmark import LandmarkConfig, LandmarkConfigError

    assert LandmarkConfig().retrieval_rounds == 5
    assert LandmarkConfig(retrieval_rounds=1).retrieval_rounds == 1
    with pytest.raises(LandmarkConfigError, match="retrieval_rounds=0"):
        LandmarkConfig(retrieval_rounds=0)
