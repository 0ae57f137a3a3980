"""One span ranker per retriever folder per process, shared by every request.

The API-server process plans documents with it; loading happens on first use and the
document-encoding cache then serves follow-up questions about the same document.

Where it runs: on CUDA when the process sees a GPU, else on the CPU, in float32 (exactly as
FlagEmbedding). ``LANDMARK_RETRIEVER_QUANTIZE=int8`` runs it int8-quantized on the CPU
(:mod:`.quantize`): about 2x faster, but not the default, because it moves rankings more than
the project allows (``eval/RESULTS.md``: nDCG@10 down 0.0085 inside documents).
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from typing import Any

_lock = threading.Lock()

#: Environment variable overriding the quantization choice: "int8" or "none".
QUANTIZE_ENV = "LANDMARK_RETRIEVER_QUANTIZE"


def retriever_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def retriever_quantize(device: str) -> str | None:
    """The quantization the retriever runs with on ``device``: ``None`` (float) unless
    ``LANDMARK_RETRIEVER_QUANTIZE=int8`` on the CPU."""
    choice = os.environ.get(QUANTIZE_ENV, "").strip().lower()
    if choice in ("", "none"):
        return None
    if choice != "int8":
        raise ValueError(f"{QUANTIZE_ENV}={choice!r}: use 'int8' or 'none'")
    return "int8" if device == "cpu" else None


@lru_cache(maxsize=4)
def _ranker(folder: str) -> Any:
    from .m3 import M3Encoder
    from .spans import SpanRanker

    device = retriever_device()
    quantize = retriever_quantize(device)
    return SpanRanker(M3Encoder(folder, device=device, quantize=quantize))


def get_span_ranker(folder: str) -> Any:
    """The SpanRanker of a BGE-M3-layout folder (built once, thread-safe)."""
    with _lock:
        return _ranker(folder)
