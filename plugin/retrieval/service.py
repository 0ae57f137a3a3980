"""One span ranker per retriever folder per process, shared by every request.

The API-server process plans documents with it; loading happens on first use and the
document-encoding cache then serves follow-up questions about the same document.

Where it runs: on CUDA when the process sees a GPU, else on the CPU. On the CPU the default
retriever (multilingual-e5-small + trained heads) runs int8-quantized (:mod:`.quantize`,
about 2x faster; its retrieval-quality numbers are in ``eval/RESULTS.md``); any other folder
(e.g. real BGE-M3) runs in float32, exactly as FlagEmbedding. ``LANDMARK_RETRIEVER_QUANTIZE``
(``int8`` or ``none``) overrides that choice for every folder.
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

_lock = threading.Lock()

#: Environment variable overriding the quantization choice: "int8" or "none".
QUANTIZE_ENV = "LANDMARK_RETRIEVER_QUANTIZE"


def retriever_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def retriever_quantize(folder: str, device: str) -> str | None:
    """The quantization a folder runs with on ``device`` (see the module docstring)."""
    choice = os.environ.get(QUANTIZE_ENV, "").strip().lower()
    if choice in ("none", "0", "false", "float32"):
        return None
    if device != "cpu":
        return None
    if choice == "int8":
        return "int8"
    if choice:
        raise ValueError(f"{QUANTIZE_ENV}={choice!r}: use 'int8' or 'none'")
    from ..default_models.retriever import default_retriever_dir

    try:
        is_default = Path(folder).expanduser().resolve() == default_retriever_dir().resolve()
    except OSError:
        is_default = False
    return "int8" if is_default else None


@lru_cache(maxsize=4)
def _ranker(folder: str) -> Any:
    from .m3 import M3Encoder
    from .spans import SpanRanker

    device = retriever_device()
    quantize = retriever_quantize(folder, device)
    return SpanRanker(M3Encoder(folder, device=device, quantize=quantize))


def get_span_ranker(folder: str) -> Any:
    """The SpanRanker of a BGE-M3-layout folder (built once, thread-safe)."""
    with _lock:
        return _ranker(folder)
