"""BM25 over a document's own landmarks, and its rank fusion with the M3 scores.

M3's lexical head weighs a token by what the model learned about it in general; BM25 weighs it
by how rare it is *in this document* (inverse frequency over the document's sentences). The two
disagree most on the words a question shares with one place of a long document: a name, a
number, a rare term. Fusing their rankings (reciprocal rank fusion, the usual way to combine a
lexical and a neural ranking without calibrating their scales) keeps both signals.

Terms are the retriever's own token ids (XLM-R sentencepiece pieces for M3 and e5), so the same
code works for every language the retriever reads, with no word splitter or stemmer. The
sentences are BM25's corpus (document frequencies and the average length); a candidate span
(a run of sentences) is scored as one BM25 document whose term counts are its sentences' sums.
The formula is Lucene's (as the ``bm25s`` library computes it: no ``k1 + 1`` factor), and for
single-sentence spans the scores equal ``bm25s``'s over the sentences (tested).

This module is the project's only BM25: `bm25` is the formula, `bm25_span_scores` the
planner's lexical ranking over landmarks, and `bm25_rank_texts` BM25 over any corpus of term
lists (the evaluation's lexical baselines; equal to ``bm25s`` over the same terms, tested).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np

#: BM25's term-frequency saturation and length normalization (the usual Lucene defaults).
BM25_K1 = 1.2
BM25_B = 0.75
#: Reciprocal rank fusion's constant: a span at rank r adds 1 / (RRF_K + r) per ranking.
RRF_K = 60


def bm25_span_scores(
    token_ids: np.ndarray,
    unit_ranges: np.ndarray,
    spans: np.ndarray,
    query_ids: Sequence[int],
    *,
    k1: float = BM25_K1,
    b: float = BM25_B,
) -> np.ndarray:
    """BM25 of each candidate span against the query's terms.

    ``token_ids`` (n,): the document's retriever tokens; ``unit_ranges`` (S, 2): each
    sentence's token range ``[a, b)`` (ranges tile the tokens; an empty one holds nothing);
    ``spans`` (m, 2): runs of sentences ``[s, e)``; ``query_ids``: the query's content token
    ids (no special or prompt tokens; repeats count once). Returns (m,) float64, 0 where a
    span holds no query term.
    """
    terms = np.unique(np.asarray(list(query_ids), dtype=np.int64))
    num_units = len(unit_ranges)
    if len(terms) == 0 or num_units == 0 or len(spans) == 0:
        return np.zeros(len(spans))
    token_ids = np.asarray(token_ids, dtype=np.int64)
    pos = np.searchsorted(terms, token_ids).clip(0, len(terms) - 1)
    hit = np.nonzero(terms[pos] == token_ids)[0]
    lengths = (unit_ranges[:, 1] - unit_ranges[:, 0]).astype(np.float64)
    owned = np.nonzero(lengths > 0)[0]
    unit_of_token = owned[np.searchsorted(unit_ranges[owned, 0], hit, side="right") - 1]
    counts = np.zeros((len(terms), num_units))
    np.add.at(counts, (pos[hit], unit_of_token), 1.0)
    present = (counts > 0).sum(axis=1)
    idf = bm25_idf(present, num_units)
    cum_counts = np.concatenate([np.zeros((len(terms), 1)), np.cumsum(counts, axis=1)], axis=1)
    cum_lengths = np.concatenate([[0.0], np.cumsum(lengths)])
    s, e = spans[:, 0], spans[:, 1]
    tf = cum_counts[:, e] - cum_counts[:, s]  # (T, m)
    span_lengths = cum_lengths[e] - cum_lengths[s]
    return bm25(tf, span_lengths, idf, float(span_lengths.mean()), k1=k1, b=b)


def bm25_idf(doc_freq: np.ndarray, num_docs: int) -> np.ndarray:
    """Lucene's inverse document frequency of terms found in ``doc_freq`` of ``num_docs``."""
    doc_freq = np.asarray(doc_freq, dtype=np.float64)
    return np.log1p((num_docs - doc_freq + 0.5) / (doc_freq + 0.5))


def bm25(
    tf: np.ndarray,
    lengths: np.ndarray,
    idf: np.ndarray,
    avg_length: float,
    *,
    k1: float = BM25_K1,
    b: float = BM25_B,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """BM25 of ``m`` documents: ``sum_t w_t idf_t tf / (tf + k1 (1 - b + b len / avg_len))``.

    ``tf`` (T, m): each query term's count in each document; ``lengths`` (m,): the documents'
    lengths in terms; ``idf`` (T,); ``weights`` (T,): how often each term counts (default 1).
    """
    norm = k1 * (1.0 - b + b * np.asarray(lengths, dtype=np.float64) / max(avg_length, 1.0))
    per_term = idf[:, None] * tf / (tf + norm[None, :])
    if weights is not None:
        per_term = per_term * np.asarray(weights, dtype=np.float64)[:, None]
    return per_term.sum(axis=0)


def bm25_rank_texts(
    corpus: Sequence[Sequence[Hashable]],
    query_terms: Sequence[Hashable],
    *,
    k1: float = BM25_K1,
    b: float = BM25_B,
) -> np.ndarray:
    """BM25 of each document of ``corpus`` (a list of terms each) against ``query_terms``.

    Every occurrence of a query term counts (pass unique terms to count each once). Returns
    (len(corpus),) float64; 0 for a document without any query term.
    """
    if not corpus:
        return np.zeros(0)
    wanted = Counter(query_terms)
    terms = list(wanted)
    index = {term: row for row, term in enumerate(terms)}
    tf = np.zeros((len(terms), len(corpus)))
    for column, document in enumerate(corpus):
        for term in document:
            row = index.get(term)
            if row is not None:
                tf[row, column] += 1.0
    lengths = np.array([len(document) for document in corpus], dtype=np.float64)
    idf = bm25_idf((tf > 0).sum(axis=1), len(corpus))
    weights = np.array([wanted[term] for term in terms], dtype=np.float64)
    return bm25(tf, lengths, idf, float(lengths.mean()), k1=k1, b=b, weights=weights)


def reciprocal_rank_fusion(*rankings: np.ndarray, k: int = RRF_K) -> np.ndarray:
    """Sum over score arrays of ``1 / (k + rank)``, rank 1 the highest score.

    Equal scores share the best rank among them; a score of exactly 0 in a non-negative
    ranking (BM25 with no query term) adds nothing, so a span the lexical side cannot see is
    ranked by the others alone.
    """
    if not rankings:
        raise ValueError("reciprocal_rank_fusion needs at least one ranking")
    fused = np.zeros(len(rankings[0]))
    for scores in rankings:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != fused.shape:
            raise ValueError(f"rankings of different lengths: {scores.shape} vs {fused.shape}")
        order = np.sort(scores)[::-1]
        rank = np.searchsorted(-order, -scores, side="left") + 1  # best rank among equals
        contribution = 1.0 / (k + rank)
        if scores.min() >= 0:
            contribution[scores == 0] = 0.0
        fused += contribution
    return fused
