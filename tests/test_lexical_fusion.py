"""BM25 over landmarks equals the bm25s library; rank fusion keeps what each ranking agrees on.

The BM25 reference is ``bm25s`` (a maintained BM25 library, Lucene's formula) indexing the
same sentences as token-id strings; the planner's fused scores are checked against the fusion
computed here from the ranker's own components.
"""

from __future__ import annotations

import numpy as np
import pytest

from eval.suite.arms import Bm25Retriever
from vllm_landmark.retrieval.lexical import (
    bm25_rank_texts,
    bm25_span_scores,
    reciprocal_rank_fusion,
)


def import_bm25s():
    """The reference `bm25s` on its numpy backend, without importing numba.

    numba's llvmlite objects in `sys.modules` break vLLM 0.32's kernel scan when an engine
    starts later in the same test session; the numpy backend gives the same scores.
    """
    import sys

    if "bm25s" in sys.modules:
        return sys.modules["bm25s"]
    block = "numba" not in sys.modules
    if block:
        sys.modules["numba"] = None  # type: ignore[assignment]  # `import numba` now fails
    try:
        import bm25s
    finally:
        if block:
            del sys.modules["numba"]
    return bm25s


def random_document(seed: int, units: int = 40, vocab: int = 60):
    """Token ids with a skewed vocabulary, cut into sentences (some empty, as the segmenter
    makes when a sentence starts inside a token)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 25, size=units)
    lengths[rng.choice(units, size=3, replace=False)] = 0
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ranges = np.stack([starts, starts + lengths], axis=1)
    ids = rng.zipf(1.3, size=int(lengths.sum())) % vocab
    return ids, ranges


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sentence_scores_equal_bm25s(seed: int) -> None:
    bm25s = import_bm25s()
    ids, ranges = random_document(seed)
    query = [int(t) for t in ids[ranges[5, 0] : ranges[5, 0] + 3]] + [999]  # 999: absent
    corpus = [[str(t) for t in ids[a:b]] for a, b in ranges]
    index = bm25s.BM25(k1=1.2, b=0.75)
    index.index(corpus, show_progress=False)
    terms = sorted({str(t) for t in query if str(t) in {w for doc in corpus for w in doc}})
    expected = index.get_scores(terms)
    singles = np.stack([np.arange(len(ranges)), np.arange(len(ranges)) + 1], axis=1)
    got = bm25_span_scores(ids, ranges, singles, query)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert got[5] > 0 and (got[ranges[:, 1] == ranges[:, 0]] == 0).all()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_bm25_over_texts_equals_bm25s(seed: int) -> None:
    """The evaluation's BM25 baseline equals bm25s with its defaults (k1=1.5, b=0.75), query
    words counted every time they occur, as bm25s counts them."""
    bm25s = import_bm25s()
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(30)]
    documents = [" ".join(rng.choice(words, size=int(rng.integers(1, 40)))) for _ in range(25)]
    query = " ".join(rng.choice([*words[:8], "absent"], size=6))
    corpus = bm25s.tokenize(documents, stopwords=None, show_progress=False)
    index = bm25s.BM25()
    index.index(corpus, show_progress=False)
    terms = [t for t in query.lower().split() if t in corpus.vocab]
    expected = index.get_scores(terms)
    got = bm25_rank_texts([d.lower().split() for d in documents], query.lower().split(), k1=1.5)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert (got > 0).any()


def test_the_bm25_arm_ranks_the_sentence_holding_the_query_words_first() -> None:
    document = (
        "The harbour opened in spring. Ships came from the north. "
        "The lighthouse keeper was named Arvid Holm. He kept a small garden. "
        "Winter storms closed the harbour."
    )
    ranked = Bm25Retriever().rank(document, "Who was the lighthouse keeper?")
    best = max(ranked, key=lambda span: span.score)
    assert "lighthouse keeper" in document[best.start : best.end]


def test_a_run_of_sentences_is_scored_as_one_bm25_document() -> None:
    """A run's term counts and length are its sentences' sums; frequencies stay per sentence."""
    ids, ranges = random_document(3)
    spans = np.array([[4, 7], [10, 11], [0, 40]])
    query = [int(t) for t in ids[:5]]
    got = bm25_span_scores(ids, ranges, spans, query)
    terms = np.unique(query)
    present = np.array([sum(bool((ids[a:b] == t).any()) for a, b in ranges) for t in terms])
    idf = np.log1p((len(ranges) - present + 0.5) / (present + 0.5))
    span_lengths = np.array([ranges[e - 1, 1] - ranges[s, 0] for s, e in spans])
    for row, (s, e) in enumerate(spans):
        tokens = ids[ranges[s, 0] : ranges[e - 1, 1]]
        tf = np.array([(tokens == t).sum() for t in terms])
        norm = 1.2 * (1 - 0.75 + 0.75 * span_lengths[row] / span_lengths.mean())
        assert got[row] == pytest.approx((idf * tf / (tf + norm)).sum(), rel=1e-9)


def test_fusion_ranks_first_what_both_rank_high() -> None:
    neural = np.array([0.9, 0.8, 0.1, 0.5, 0.7])
    lexical = np.array([0.0, 3.0, 5.0, 0.0, 2.5])
    fused = reciprocal_rank_fusion(neural, lexical)
    assert int(np.argmax(fused)) == 1  # second in both rankings: first fused
    # A span the lexical side cannot see keeps its neural order among such spans.
    assert fused[0] > fused[3]
    # Ties share the better rank; one ranking alone is its own order.
    np.testing.assert_array_equal(np.argsort(-reciprocal_rank_fusion(neural)), np.argsort(-neural))
    tied = reciprocal_rank_fusion(np.array([1.0, 1.0, 0.5]))
    assert tied[0] == tied[1] == pytest.approx(1 / 61)
    with pytest.raises(ValueError, match="different lengths"):
        reciprocal_rank_fusion(neural, lexical[:3])
