"""Retrieval: the BGE-M3 encoder (dense, lexical and multi-vector outputs) and its scores.

The package exports :mod:`.m3`'s public names (its ``__all__``): ``M3Encoder``, ``M3Output``,
``MissingHeadError``, ``DEFAULT_WEIGHTS`` and the score functions.
"""

from vllm_landmark.retrieval import m3 as _m3
from vllm_landmark.retrieval.m3 import *  # noqa: F403 - the names m3.__all__ lists

__all__ = list(_m3.__all__)
