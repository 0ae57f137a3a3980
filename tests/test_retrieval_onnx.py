"""The ONNX Runtime retriever backend (retrieval/onnx_encoder.py) against the torch forward.

The tiny M3 (random XLM-R weights, built at test time) is exported and optimized for real; the
two backends must give the same outputs to float32 rounding and the same span rankings.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from vllm_landmark.retrieval.encoding import encode_document, encode_query
from vllm_landmark.retrieval.m3 import M3Encoder
from vllm_landmark.retrieval.service import BACKEND_ENV, QUANTIZE_ENV, retriever_backend
from vllm_landmark.retrieval.spans import SpanRanker
from vllm_landmark.testing.tiny_m3 import build_tiny_m3, generate_text

pytest.importorskip("onnxruntime")

#: Largest absolute difference allowed between the backends' float32 outputs (unit-norm
#: vectors and hidden states of size ~1: a few ulps of accumulated rounding, far below any
#: score gap that could swap two rankings).
TOLERANCE = 1e-4

TEXTS = [
    "The lighthouse keeper climbed the stairs every evening.",
    "Railway stations in the valley closed in winter.",
    "Der Leuchtturm stand am Ende der langen Mole.",
    "Un pont",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 130 positions: documents of a few hundred tokens need several overlapping windows.
    return build_tiny_m3(tmp_path_factory.mktemp("onnx") / "tiny_m3", max_position_embeddings=130)


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """Exports go to a temporary cache, not the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("VLLM_LANDMARK_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def encoders(folder: Path) -> tuple[M3Encoder, M3Encoder]:
    return M3Encoder(folder), M3Encoder(folder, backend="onnx")


def test_export_is_optimized_and_cached(folder: Path, encoders: tuple[M3Encoder, M3Encoder]):
    import onnx

    path = encoders[1].model.path
    assert path.is_file() and path.name == "encoder.onnx"
    assert path.with_name("encoder.onnx.data").is_file()  # weights as external data
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"Attention", "SkipLayerNormalization"} <= ops, sorted(ops)  # fused, not raw
    again = M3Encoder(folder, backend="onnx")
    assert again.model.path == path  # the cached export is reused


def test_padded_batch_matches_torch(encoders: tuple[M3Encoder, M3Encoder]) -> None:
    # Texts of different lengths: a padded batch with an attention mask.
    exact, fast = (enc.encode(TEXTS, prompt_name="passage") for enc in encoders)
    assert np.abs(exact.dense_vecs - fast.dense_vecs).max() < TOLERANCE
    for a, b in zip(exact.colbert_vecs, fast.colbert_vecs, strict=True):
        assert a.shape == b.shape and np.abs(a - b).max() < TOLERANCE
    for a, b in zip(exact.lexical_weights, fast.lexical_weights, strict=True):
        assert a.keys() == b.keys()
        assert max(abs(a[k] - b[k]) for k in a) < TOLERANCE


def test_windowed_document_and_query_match_torch(encoders: tuple[M3Encoder, M3Encoder]) -> None:
    import random

    document = generate_text(random.Random(3), 40)
    exact, fast = (encode_document(enc, document) for enc in encoders)
    assert len(exact.windows) > 2  # several windows (batched in torch, one by one in onnx)
    assert exact.windows == fast.windows
    exact_mean = exact.units.hidden_sum / np.diff(exact.units.token_ranges).clip(1)
    fast_mean = fast.units.hidden_sum / np.diff(fast.units.token_ranges).clip(1)
    assert np.abs(exact_mean - fast_mean).max() < TOLERANCE
    assert np.abs(exact.colbert - fast.colbert).max() < TOLERANCE
    assert np.abs(exact.sparse - fast.sparse).max() < TOLERANCE
    q_exact, q_fast = (encode_query(enc, "river city history") for enc in encoders)
    assert np.abs(q_exact.dense - q_fast.dense).max() < TOLERANCE
    assert np.abs(q_exact.colbert - q_fast.colbert).max() < TOLERANCE


def test_span_rankings_are_the_same(encoders: tuple[M3Encoder, M3Encoder]) -> None:
    import random

    document = generate_text(random.Random(5), 40)
    exact, fast = (SpanRanker(enc) for enc in encoders)
    assert exact.fingerprint != fast.fingerprint  # separate cache entries
    for query in ("river mountain", "Fluss Berg Stadt", "question answer library"):
        a = exact.score_all_spans(document, query)
        b = fast.score_all_spans(document, query)
        assert np.abs(a.score - b.score).max() < TOLERANCE
        assert np.array_equal(
            np.argsort(-a.score, kind="stable")[:10], np.argsort(-b.score, kind="stable")[:10]
        )


def test_bad_backend_settings_are_refused(folder: Path) -> None:
    import torch

    with pytest.raises(ValueError, match="choose one of"):
        M3Encoder(folder, backend="tensorrt")
    with pytest.raises(ValueError, match="float32 on the CPU"):
        M3Encoder(folder, backend="onnx", quantize="int8")
    with pytest.raises(ValueError, match="float32 on the CPU"):
        M3Encoder(folder, backend="onnx", dtype=torch.float16)


def test_service_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    monkeypatch.delenv(QUANTIZE_ENV, raising=False)
    assert retriever_backend("cpu", None) == "onnx"  # the default on the CPU
    assert retriever_backend("cuda", None) == "torch"
    assert retriever_backend("cpu", "int8") == "torch"
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert retriever_backend("cpu", None) == "torch"
    monkeypatch.setenv(BACKEND_ENV, "onnx")
    with pytest.raises(ValueError, match="float32 on the CPU"):
        retriever_backend("cuda", None)
    monkeypatch.setenv(BACKEND_ENV, "openvino")
    with pytest.raises(ValueError, match=BACKEND_ENV):
        retriever_backend("cpu", None)


def test_without_onnxruntime(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    # onnxruntime made unimportable (None in sys.modules makes `import` raise ImportError).
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.delenv(QUANTIZE_ENV, raising=False)
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    with caplog.at_level("WARNING"):
        assert retriever_backend("cpu", None) == "torch"  # falls back, and says so
    assert "onnxruntime is not installed" in caplog.text
    monkeypatch.setenv(BACKEND_ENV, "onnx")
    with pytest.raises(ImportError, match="pip install onnxruntime"):
        retriever_backend("cpu", None)


def test_failed_export_falls_back_to_torch(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    # A failing export cannot be produced with a real folder that torch loads, so the export
    # function is replaced by one that raises (the only stand-in in this file).
    from vllm_landmark.retrieval import onnx_encoder, service

    def broken(folder: Path, out: Path) -> Path:
        raise RuntimeError("exporter broke")

    monkeypatch.setenv("VLLM_LANDMARK_CACHE", str(tmp_path))  # nothing cached there
    monkeypatch.setattr(onnx_encoder, "export_encoder", broken)
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    monkeypatch.delenv(QUANTIZE_ENV, raising=False)
    with caplog.at_level("WARNING"):
        ranker = service._build_ranker(str(folder))
    assert ranker.encoder.backend == "torch"
    assert "runs in torch instead" in caplog.text
    monkeypatch.setenv(BACKEND_ENV, "onnx")  # asked for explicitly: the error is not hidden
    with pytest.raises(RuntimeError, match="exporter broke"):
        service._build_ranker(str(folder))
