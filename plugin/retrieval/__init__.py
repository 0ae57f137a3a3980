"""Retrieval: the BGE-M3 encoder (dense, lexical and multi-vector outputs) and its scores."""

from vllm_landmark.retrieval.m3 import (
    DEFAULT_WEIGHTS,
    M3Encoder,
    M3Output,
    MissingHeadError,
    colbert_score,
    dense_score,
    hybrid_score,
    lexical_matching_score,
)

__all__ = [
    "DEFAULT_WEIGHTS",
    "M3Encoder",
    "M3Output",
    "MissingHeadError",
    "colbert_score",
    "dense_score",
    "hybrid_score",
    "lexical_matching_score",
]
