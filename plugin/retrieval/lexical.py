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
"""

from __future__ import annotations

from collections.abc import Sequence

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
    idf = np.log1p((num_units - present + 0.5) / (present + 0.5))
    cum_counts = np.concatenate([np.zeros((len(terms), 1)), np.cumsum(counts, axis=1)], axis=1)
    cum_lengths = np.concatenate([[0.0], np.cumsum(lengths)])
    s, e = spans[:, 0], spans[:, 1]
    tf = cum_counts[:, e] - cum_counts[:, s]  # (T, m)
    span_lengths = cum_lengths[e] - cum_lengths[s]
    norm = k1 * (1.0 - b + b * span_lengths / max(float(span_lengths.mean()), 1.0))
    return (idf[:, None] * tf / (tf + norm[None, :])).sum(axis=0)


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
