"""One span ranker per retriever folder per process, shared by every request.

The API-server process plans documents with it; loading happens on first use and the
document-encoding cache then serves follow-up questions about the same document.

Where it runs: on CUDA when the process sees a GPU (torch), else on the CPU in float32 on
ONNX Runtime (:mod:`.onnx_encoder`: the same arithmetic with fused kernels, faster; rankings
unchanged on the retrieval-quality set, ``eval/RESULTS.md``). Without onnxruntime installed the
CPU falls back to torch with a warning. ``LANDMARK_RETRIEVER_BACKEND=torch`` keeps the torch
forward (the FlagEmbedding-parity path); ``=onnx`` insists on ONNX Runtime (an error without it).
``LANDMARK_RETRIEVER_QUANTIZE=int8`` runs torch int8-quantized on the CPU (:mod:`.quantize`):
faster, but not the default, because it moves rankings more than the project allows (both
measured in ``eval/RESULTS.md``).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, NamedTuple

logger = logging.getLogger(__name__)
_lock = threading.Lock()

#: Environment variable overriding the quantization choice: "int8" or "none".
QUANTIZE_ENV = "LANDMARK_RETRIEVER_QUANTIZE"
#: Environment variable choosing the encoder's runtime on the CPU: "onnx" or "torch".
BACKEND_ENV = "LANDMARK_RETRIEVER_BACKEND"


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


def retriever_backend(device: str, quantize: str | None) -> str:
    """The encoder's runtime: ``"onnx"`` on the CPU in float32 when onnxruntime is installed,
    else ``"torch"``; ``LANDMARK_RETRIEVER_BACKEND`` overrides (``"onnx"`` without onnxruntime,
    on a GPU or with int8 is an error)."""
    from .onnx_encoder import BACKENDS, onnx_available, require_onnxruntime

    choice = os.environ.get(BACKEND_ENV, "").strip().lower()
    if choice not in ("", *BACKENDS):
        raise ValueError(f"{BACKEND_ENV}={choice!r}: use one of {BACKENDS}")
    if choice == "torch":
        return "torch"
    if choice == "onnx":
        if device != "cpu" or quantize is not None:
            raise ValueError(
                f"{BACKEND_ENV}=onnx runs float32 on the CPU; this process has "
                f"device={device}, {QUANTIZE_ENV}={quantize}"
            )
        require_onnxruntime()
        return "onnx"
    if device != "cpu" or quantize is not None:
        return "torch"
    if not onnx_available():
        logger.warning(
            "onnxruntime is not installed: the retriever runs in torch on the CPU (slower; "
            "pip install onnxruntime onnx for the faster, equally exact ONNX Runtime path)"
        )
        return "torch"
    return "onnx"


class RetrieverMode(NamedTuple):
    """Where and how this process runs the retriever."""

    device: str
    quantize: str | None
    backend: str


def retriever_mode() -> RetrieverMode:
    """This process's device, quantization and runtime for the retriever (env and hardware)."""
    device = retriever_device()
    quantize = retriever_quantize(device)
    return RetrieverMode(device, quantize, retriever_backend(device, quantize))


def _build_ranker(folder: str) -> Any:
    from .m3 import M3Encoder
    from .spans import SpanRanker

    device, quantize, backend = retriever_mode()
    try:
        encoder = M3Encoder(folder, device=device, quantize=quantize, backend=backend)
    except Exception:
        if backend != "onnx" or os.environ.get(BACKEND_ENV, "").strip():
            raise
        # The default choice must not cost a working retriever: the torch forward still runs.
        logger.warning(
            "exporting the retriever %s to ONNX failed; it runs in torch instead",
            folder,
            exc_info=True,
        )
        encoder = M3Encoder(folder, device=device, quantize=quantize, backend="torch")
    return SpanRanker(encoder)


#: The SpanRanker of each folder, built once (the process's rankers: `loaded_span_rankers`).
_rankers: dict[str, Any] = {}


def get_span_ranker(folder: str | Path) -> Any:
    """The SpanRanker of a BGE-M3-layout folder (built once per folder, thread-safe)."""
    key = str(Path(folder).expanduser())
    with _lock:
        if key not in _rankers:
            _rankers[key] = _build_ranker(key)
        return _rankers[key]


def loaded_span_rankers() -> list[Any]:
    """The SpanRankers this process has built so far (none is loaded by asking)."""
    with _lock:
        return list(_rankers.values())
