"""BGE-M3's outputs and scores, as FlagEmbedding 1.4.2 (``BGEM3FlagModel``) defines them.

* dense: the normalized ``[CLS]`` vector; score = inner product. A folder whose
  sentence-transformers ``1_Pooling/config.json`` asks for mean pooling (e5, the default
  retriever) gives the normalized mean of the token states instead.
* lexical weights: ``relu(sparse_linear(h))`` per token, the maximum per token id, keyed by
  ``str(token_id)``; ids of the cls/eos/pad/unk tokens and weights <= 0 are dropped (``<mask>``
  and other special tokens are kept, as in FlagEmbedding). Score = sum over shared ids of the
  product of the two weights.
* multi-vector: ``normalize(colbert_linear(h))`` for every token after ``[CLS]`` (the final
  ``</s>`` included), so a text of ``n`` tokens gives ``n - 1`` vectors. Score = for every query
  vector the best inner product with any passage vector, summed, divided by the number of query
  vectors.
* hybrid: ``sum(w_i * s_i) / sum(w_i)`` over the scores used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

ScoreKey = Literal["colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense"]

#: Default hybrid weights for (dense, sparse, colbert), as recommended for BGE-M3.
DEFAULT_WEIGHTS: tuple[float, float, float] = (0.4, 0.2, 0.4)


@dataclass
class M3Output:
    """Outputs of :meth:`M3Encoder.encode`, one entry per input text, in input order.

    ``dense_vecs``: array ``(n_texts, hidden)``; ``lexical_weights``: ``{str(token_id): weight}``
    per text; ``colbert_vecs``: array ``(n_tokens - 1, colbert_dim)`` per text; ``input_ids``:
    the token ids the encoder saw (special tokens included). Outputs not asked for are ``None``.
    """

    dense_vecs: np.ndarray
    lexical_weights: list[dict[str, float]] | None
    colbert_vecs: list[np.ndarray] | None
    input_ids: list[list[int]]

    def as_dict(self) -> dict[str, Any]:
        """The three outputs under FlagEmbedding's keys."""
        return {
            "dense_vecs": self.dense_vecs,
            "lexical_weights": self.lexical_weights,
            "colbert_vecs": self.colbert_vecs,
        }


def dense_score(q: np.ndarray | torch.Tensor, p: np.ndarray | torch.Tensor) -> float | np.ndarray:
    """Inner product of dense vectors: a float for two vectors, ``q @ p.T`` for matrices."""
    qa, pa = np.asarray(q, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if qa.ndim == 1 and pa.ndim == 1:
        return float(qa @ pa)
    return np.atleast_2d(qa) @ np.atleast_2d(pa).T


def lexical_matching_score(q: Mapping[str, float], p: Mapping[str, float]) -> float:
    """Sum over the token ids present in both of the product of their lexical weights."""
    if len(p) < len(q):
        q, p = p, q
    return float(sum(float(w) * float(p[t]) for t, w in q.items() if t in p))


def colbert_score(q_vecs: np.ndarray | torch.Tensor, p_vecs: np.ndarray | torch.Tensor) -> float:
    """Late interaction: mean over query vectors of the best inner product with a passage vector."""
    qa, pa = np.asarray(q_vecs, dtype=np.float64), np.asarray(p_vecs, dtype=np.float64)
    if qa.ndim != 2 or pa.ndim != 2 or len(qa) == 0 or len(pa) == 0:
        raise ValueError(
            f"colbert_score needs two non-empty 2-D arrays, got shapes {qa.shape} and {pa.shape}"
        )
    return float((qa @ pa.T).max(axis=1).sum() / len(qa))


def check_weights(weights: Sequence[float] | None) -> tuple[float, float, float]:
    """(dense, sparse, colbert) weights, default :data:`DEFAULT_WEIGHTS`: checked."""
    w = DEFAULT_WEIGHTS if weights is None else tuple(float(x) for x in weights)
    if len(w) != 3:
        raise ValueError(f"weights are (dense, sparse, colbert): 3 numbers, got {len(w)}")
    if any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {w}")
    return w  # type: ignore[return-value]


def hybrid_score(
    dense: float | None = None,
    sparse: float | None = None,
    colbert: float | None = None,
    weights: Sequence[float] | None = None,
) -> float:
    """Weighted mean of the scores given: ``sum(w * s) / sum(w)`` over the non-``None`` ones.

    ``weights`` are (dense, sparse, colbert), default :data:`DEFAULT_WEIGHTS`.
    """
    w = check_weights(weights)
    used = [(wi, s) for wi, s in zip(w, (dense, sparse, colbert), strict=True) if s is not None]
    total = sum(wi for wi, _ in used)
    if not used or total <= 0:
        raise ValueError("hybrid_score needs at least one score with a weight > 0")
    return float(sum(wi * s for wi, s in used) / total)


def pair_scores(
    q: M3Output, p: M3Output, weights: tuple[float, float, float]
) -> dict[ScoreKey, list[float]]:
    """FlagEmbedding's ``compute_score`` dict for pairs ``(q_i, p_i)`` (both heads needed).

    ``weights`` are checked (dense, sparse, colbert); "sparse+dense" is NaN if both are 0.
    """
    w_dense, w_sparse, w_colbert = weights
    assert q.lexical_weights is not None and p.lexical_weights is not None
    assert q.colbert_vecs is not None and p.colbert_vecs is not None
    out: dict[ScoreKey, list[float]] = {
        "colbert": [],
        "sparse": [],
        "dense": [],
        "sparse+dense": [],
        "colbert+sparse+dense": [],
    }
    sd_total = w_dense + w_sparse
    for i in range(len(q.dense_vecs)):
        d = float(dense_score(q.dense_vecs[i], p.dense_vecs[i]))
        s = lexical_matching_score(q.lexical_weights[i], p.lexical_weights[i])
        c = colbert_score(q.colbert_vecs[i], p.colbert_vecs[i])
        out["colbert"].append(c)
        out["sparse"].append(s)
        out["dense"].append(d)
        out["sparse+dense"].append(
            (w_sparse * s + w_dense * d) / sd_total if sd_total > 0 else math.nan
        )
        out["colbert+sparse+dense"].append(
            (w_colbert * c + w_sparse * s + w_dense * d) / (w_dense + w_sparse + w_colbert)
        )
    return out


def as_pairs(pairs: Any) -> tuple[list[Sequence[str]], bool]:
    """(query, passage) pairs as a list, and whether one pair was given as two strings.

    As in FlagEmbedding, two strings (tuple or list) are one pair; anything else is a sequence
    of pairs. ValueError for no pairs or a pair that is not two items.
    """
    single = (
        isinstance(pairs, (tuple, list))
        and len(pairs) == 2
        and all(isinstance(x, str) for x in pairs)
    )
    pair_list = [pairs] if single else list(pairs)
    if not pair_list:
        raise ValueError("no pairs to score")
    for i, pair in enumerate(pair_list):
        if isinstance(pair, str) or len(pair) != 2:
            raise ValueError(f"pair {i} must be (query, passage), got {pair!r:.80}")
    return pair_list, single
