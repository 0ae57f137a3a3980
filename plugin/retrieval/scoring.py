"""Score spans of a document against a query: per-sentence reductions, then runs of sentences.

A document's units are the sentences of :mod:`.segment` (the landmarks); a span is a run of
units ``s .. e-1``, i.e. every token whose start lies in them. Its components:

* multi-vector: FlagEmbedding's late interaction restricted to the span: for each query vector
  (all query tokens after ``<s>``, ``</s>`` included, exactly as ``colbert_score``) the best
  inner product with a token vector of the span, summed and divided by the number of query
  vectors.
* lexical: FlagEmbedding's lexical matching restricted to the span: the span's weight of a
  token id is the maximum over its tokens with that id; the score is the sum over the query's
  ids of query weight x span weight.
* dense: cosine between the normalized MEAN of the span's token hidden states and the
  normalized mean of the query's content-token hidden states (same pooling on both sides).
  Why not the query's ``[CLS]`` vector: BGE-M3 pools with ``[CLS]``, and a token state is not a
  ``[CLS]`` state; comparing a CLS vector with a mean of token states mixes two regions of the
  space. Why hidden states and not the multi-vector outputs: the colbert head is a projection
  trained for token-level max-sim, and its mean would mostly repeat the multi-vector score;
  the hidden states carry the encoder's full contextual representation, which is what a
  sentence embedding pools. For a mean-pooled encoder (e5) this is the model's own dense
  pooling restricted to the span, computed in context. The mean is taken by sums, so any span
  costs one ``hidden``-sized vector however long it is.
* hybrid: ``sum(w * s) / sum(w)`` over the components available, weights (dense, sparse,
  colbert), default :data:`~.m3.DEFAULT_WEIGHTS`.

Per unit first (maxima over its tokens, :func:`reduce_units`; the hidden-state sums come
with the encoding, :class:`~.encoding.Units`), then over runs of
units by sliding maxima/sums (:func:`score_spans`), so scoring every candidate costs little
next to the query forward (``span_ranker.score_s`` in eval/results/bench_m3.json).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .encoding import DocumentEncoding, QueryEncoding, UnitReducer

#: Longest run of sentences one span may cover when spans are built to a token target.
MAX_SPAN_SENTENCES = 64


@dataclass
class UnitStats:
    """Per-unit reductions of a document for one query."""

    colbert_max: np.ndarray | None  # (Q, S) best similarity of each query vector in the unit
    lexical_max: np.ndarray | None  # (K, S) max weight of each query id in the unit
    lexical_w: np.ndarray | None  # (K,) query weights
    hidden_sum: np.ndarray  # (S, H) float64 sums of hidden states
    num_tokens: np.ndarray  # (S,) tokens per unit


@dataclass
class SpanScores:
    """Hybrid score and components of each scored span (``None``: the encoder lacks the head)."""

    hybrid: np.ndarray
    dense: np.ndarray
    sparse: np.ndarray | None
    colbert: np.ndarray | None


def reduce_units(doc: DocumentEncoding, query: QueryEncoding) -> UnitStats:
    """Per-unit maxima of the query's multi-vector and lexical matches (see :class:`UnitStats`)."""
    units = doc.units
    token_ranges = units.token_ranges
    reducer = UnitReducer(token_ranges, doc.num_tokens)
    starts, empty, lookup = reducer.starts, reducer.empty, reducer.lookup
    counts = token_ranges[:, 1] - token_ranges[:, 0]

    colbert_max = None
    if doc.colbert is not None and query.colbert is not None:
        sims = query.colbert @ doc.colbert.T  # (Q, n)
        colbert_max = reducer.last_axis(sims, np.maximum)
    lexical_max = lexical_w = None
    if doc.sparse is not None and query.lexical is not None:
        qids = np.fromiter(query.lexical.keys(), dtype=np.int64, count=len(query.lexical))
        lexical_w = np.fromiter(query.lexical.values(), dtype=np.float64, count=len(qids))
        lexical_max = np.zeros((len(qids), len(starts)))
        if len(qids):
            order = np.argsort(qids)
            sorted_ids = qids[order]
            pos = np.searchsorted(sorted_ids, doc.input_ids).clip(0, len(qids) - 1)
            hit = np.nonzero(sorted_ids[pos] == doc.input_ids)[0]
            unit_of_token = np.searchsorted(starts, hit, side="right") - 1
            # Units ordered by start; ties (empty units) resolve to the last unit starting there.
            np.maximum.at(lexical_max, (order[pos[hit]], unit_of_token), doc.sparse[hit])
            for u in np.nonzero(empty)[0]:
                k = np.nonzero(qids == doc.input_ids[lookup[u]])[0]
                if len(k):
                    lexical_max[k, u] = doc.sparse[lookup[u]]
    return UnitStats(colbert_max, lexical_max, lexical_w, units.hidden_sum, np.maximum(counts, 1))


def score_spans(
    stats: UnitStats, query: QueryEncoding, spans: np.ndarray, weights: tuple[float, float, float]
) -> SpanScores:
    """Components and hybrid of each span ``[s, e)`` of units (rows of ``spans``)."""
    m = len(spans)
    widths = spans[:, 1] - spans[:, 0]
    dense = np.empty(m)
    sparse = np.empty(m) if stats.lexical_max is not None else None
    colbert = np.empty(m) if stats.colbert_max is not None else None
    q_mean = query.mean.astype(np.float64)
    cm, lm, hs = stats.colbert_max, stats.lexical_max, stats.hidden_sum
    for w in range(1, int(widths.max()) + 1):
        if w > 1:  # sliding max / sum over w consecutive units, start-indexed
            cm = None if cm is None else np.maximum(cm[:, :-1], stats.colbert_max[:, w - 1 :])
            lm = None if lm is None else np.maximum(lm[:, :-1], stats.lexical_max[:, w - 1 :])
            hs = hs[:-1] + stats.hidden_sum[w - 1 :]
        pick = np.nonzero(widths == w)[0]
        if len(pick) == 0:
            continue
        s = spans[pick, 0]
        vec = hs[s]
        norm = np.linalg.norm(vec, axis=1)
        dense[pick] = (vec @ q_mean) / np.maximum(norm, 1e-12)
        if colbert is not None:
            colbert[pick] = cm[:, s].sum(axis=0) / cm.shape[0]
        if sparse is not None:
            sparse[pick] = stats.lexical_w @ lm[:, s] if len(stats.lexical_w) else 0.0
    w_dense, w_sparse, w_colbert = weights
    total = w_dense + (w_sparse if sparse is not None else 0.0)
    total += w_colbert if colbert is not None else 0.0
    hybrid = w_dense * dense
    if sparse is not None:
        hybrid = hybrid + w_sparse * sparse
    if colbert is not None:
        hybrid = hybrid + w_colbert * colbert
    hybrid = hybrid / total if total > 0 else dense
    return SpanScores(hybrid=hybrid, dense=dense, sparse=sparse, colbert=colbert)


def candidate_spans(
    token_counts: np.ndarray, span_sentences: Sequence[int] | None, span_tokens: int | None
) -> np.ndarray:
    """Rows ``[s, e)``: every run of ``k`` units for each ``k`` in ``span_sentences``, or, for a
    token target, from each unit the shortest run reaching ``span_tokens`` tokens."""
    n_units = len(token_counts)
    rows: list[np.ndarray] = []
    if span_tokens is not None:
        if span_tokens < 1:
            raise ValueError(f"span_tokens must be positive, got {span_tokens}")
        cum = np.concatenate([[0], np.cumsum(token_counts)])
        starts = np.arange(n_units)
        ends = np.searchsorted(cum, cum[:-1] + span_tokens, side="left")
        ends = np.clip(ends, starts + 1, np.minimum(n_units, starts + MAX_SPAN_SENTENCES))
        rows.append(np.stack([starts, ends], axis=1))
    else:
        sizes = sorted({int(k) for k in (span_sentences or (1,))})
        if not sizes or sizes[0] < 1 or sizes[-1] > MAX_SPAN_SENTENCES:
            raise ValueError(
                f"span_sentences must be run lengths in 1..{MAX_SPAN_SENTENCES}, got {sizes}"
            )
        for k in sizes:
            k = min(k, n_units)
            starts = np.arange(n_units - k + 1)
            rows.append(np.stack([starts, starts + k], axis=1))
    spans = np.unique(np.concatenate(rows), axis=0)
    return spans.astype(np.int64)
