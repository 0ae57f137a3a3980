"""The encoder forward on ONNX Runtime, in float32: the same arithmetic as torch, fused kernels.

Why: on the CPU the retriever's pass over a long document is most of the first answer's cost,
and about a third of torch's time there goes to unfused element-wise work (bias adds, layer
norms, GELU, the copies around attention). ONNX Runtime's transformer optimizer fuses the
encoder into ``Attention``, ``SkipLayerNormalization``, ``BiasGelu`` and
``EmbedLayerNormalization`` nodes; the result equals the torch forward to float32 rounding
(hidden states within about 1e-5), so rankings do not move (``eval/RESULTS.md``).

How: the folder's encoder is exported once (``torch.onnx.export``, eager attention so the
optimizer recognises the attention pattern; a padded example batch so the attention mask stays
in the graph), optimized, and cached under ``<cache>/onnx/<folder name>-<key>/encoder.onnx``
(``key``: the folder's fingerprint and the torch, transformers and onnxruntime versions). Export
and optimization take about half a minute once per model and machine. :class:`OnnxEncoderModel`
then stands in for the Hugging Face model inside :class:`~.m3.M3Encoder` (same call, same
``last_hidden_state``); the lexical and multi-vector heads stay in torch.

Needs ``onnxruntime`` and ``onnx`` (the ``cpu`` extra); without them :func:`require_onnxruntime`
raises an ``ImportError`` that says what to install.
"""

from __future__ import annotations

import os
import tempfile
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

#: Names accepted by ``M3Encoder(backend=...)``.
BACKENDS = ("torch", "onnx")

#: Bumped when the exported graph changes (invalidates cached exports).
EXPORT_VERSION = 1


def require_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or an ``ImportError`` that says how to get it."""
    try:
        import onnx  # noqa: F401  (the optimizer needs it)
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            "the ONNX retriever backend needs onnxruntime and onnx "
            "(pip install onnxruntime onnx, or the project's 'cpu' extra); "
            "or run the retriever in torch (LANDMARK_RETRIEVER_BACKEND=torch)"
        ) from exc
    return onnxruntime


def onnx_available() -> bool:
    """Whether :func:`require_onnxruntime` would succeed."""
    try:
        require_onnxruntime()
    except ImportError:
        return False
    return True


def cached_onnx_path(folder: str | Path, cache_dir: Path | None = None) -> Path:
    """Where the optimized export of ``folder``'s encoder lives (whether or not it exists)."""
    import transformers

    from ..default_models.folders import default_cache_dir
    from .cache import model_fingerprint

    ort = require_onnxruntime()
    folder = Path(folder).expanduser().resolve()
    key = model_fingerprint(
        folder, torch.__version__, transformers.__version__, ort.__version__, EXPORT_VERSION
    )
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "onnx"
    return root / f"{folder.name}-{key}" / "encoder.onnx"


class _LastHidden(torch.nn.Module):
    """The encoder with one output, its last hidden state (no pooler)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def export_encoder(folder: str | Path, out: Path) -> Path:
    """Export ``folder``'s encoder (float32) to an optimized ONNX file at ``out``.

    The weights go to ``out`` + ``.data`` beside it (ONNX external data: no 2 GB protobuf limit,
    so BGE-M3's 2.3 GB encoder fits too). Both are written in a temporary sibling folder that
    is renamed to ``out``'s folder, so a concurrent reader never sees half an export.
    """
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoModel

    require_onnxruntime()
    model = AutoModel.from_pretrained(
        str(folder), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    config = model.config
    # Padding in the example batch keeps the mask computation in the traced graph (an all-ones
    # mask can be dropped by transformers' mask shortcut at trace time).
    ids = torch.full((2, 8), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    ids[1, 5:] = config.pad_token_id or 0
    axes = {0: "batch", 1: "sequence"}
    entry = out.parent
    entry.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=entry.parent, prefix=".export-") as tmp:
        raw = Path(tmp) / "raw" / "raw.onnx"
        raw.parent.mkdir()
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # tracer and legacy-exporter notices
            torch.onnx.export(
                _LastHidden(model),
                (ids, mask),
                str(raw),
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"],
                dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
                opset_version=17,
                dynamo=False,
            )
        del model
        optimized = optimize_model(
            str(raw),
            model_type="bert",
            num_heads=config.num_attention_heads,
            hidden_size=config.hidden_size,
            opt_level=0,  # the graph fusions only; the session applies its own at load
        )
        built = Path(tmp) / "entry"
        built.mkdir()
        optimized.save_model_to_file(str(built / out.name), use_external_data_format=True)
        try:
            os.replace(built, entry)
        except OSError:
            if not out.is_file():  # not another process's finished export: a real error
                raise
    return out


_export_lock = threading.Lock()


def ensure_export(folder: str | Path, cache_dir: Path | None = None) -> Path:
    """The cached optimized export of ``folder``'s encoder, made now if missing."""
    path = cached_onnx_path(folder, cache_dir)
    with _export_lock:
        if not path.is_file():
            export_encoder(folder, path)
    return path


class OnnxEncoderModel:
    """Callable like the Hugging Face encoder: ``model(input_ids=..., attention_mask=...)``
    returns an object with ``last_hidden_state`` (a float32 CPU tensor).

    The session is created on the first call, with ``threads`` intra-op threads (default:
    ``torch.get_num_threads()`` in the calling thread, so the retriever keeps the thread share
    the server gives torch).
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.path = Path(path)
        self.threads = threads
        self._session: Any = None
        self._lock = threading.Lock()

    def session(self) -> Any:
        """The inference session (created once)."""
        with self._lock:
            if self._session is None:
                ort = require_onnxruntime()
                options = ort.SessionOptions()
                options.intra_op_num_threads = self.threads or torch.get_num_threads()
                options.inter_op_num_threads = 1
                # Idle threads sleep instead of spinning: on a shared CPU (the engine, other
                # requests) spinning took cores from others and was slower here too.
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                self._session = ort.InferenceSession(
                    str(self.path), options, providers=["CPUExecutionProvider"]
                )
            return self._session

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> SimpleNamespace:
        ids = input_ids.detach().cpu().numpy().astype(np.int64, copy=False)
        if attention_mask is None:
            mask = np.ones_like(ids)
        else:
            mask = attention_mask.detach().cpu().numpy().astype(np.int64, copy=False)
        (hidden,) = self.session().run(None, {"input_ids": ids, "attention_mask": mask})
        return SimpleNamespace(last_hidden_state=torch.from_numpy(hidden))

    def eval(self) -> OnnxEncoderModel:
        return self


def onnx_model(folder: str | Path, threads: int | None = None) -> OnnxEncoderModel:
    """An :class:`OnnxEncoderModel` of ``folder``'s encoder (exported on first use)."""
    return OnnxEncoderModel(ensure_export(Path(folder).resolve()), threads)
