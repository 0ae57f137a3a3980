"""The int8 retriever mode (retrieval/quantize.py) and how the service chooses it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vllm_landmark.retrieval.m3 import M3Encoder
from vllm_landmark.retrieval.quantize import keeps_float
from vllm_landmark.retrieval.service import QUANTIZE_ENV, retriever_quantize
from vllm_landmark.retrieval.spans import SpanRanker
from vllm_landmark.testing.tiny_m3 import build_tiny_m3

TEXTS = [
    "The lighthouse keeper climbed the stairs every evening.",
    "Railway stations in the valley closed in winter.",
    "Der Leuchtturm stand am Ende der langen Mole.",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_m3(tmp_path_factory.mktemp("quantize") / "tiny_m3")


def test_int8_quantizes_all_linear_layers_but_the_feed_forward_outputs(folder: Path) -> None:
    encoder = M3Encoder(folder, quantize="int8")
    floats = {
        name: type(module) is torch.nn.Linear
        for name, module in encoder.model.named_modules()
        if "dense" in name or name.endswith(("query", "key", "value"))
    }
    assert floats, "no linear layers found"
    for name, is_float in floats.items():
        assert is_float == keeps_float(name), name
    assert not all(floats.values())
    assert (
        encoder.colbert_linear is not None and encoder.colbert_linear.weight.dtype == torch.float32
    )


def test_int8_outputs_stay_close_to_float32(folder: Path) -> None:
    exact = M3Encoder(folder).encode(TEXTS)
    fast = M3Encoder(folder, quantize="int8").encode(TEXTS)
    cosine = (np.asarray(exact.dense_vecs) * np.asarray(fast.dense_vecs)).sum(-1)
    assert cosine.min() > 0.98, cosine
    for a, b in zip(exact.colbert_vecs, fast.colbert_vecs, strict=True):
        assert a.shape == b.shape
        assert (a * b).sum(-1).mean() > 0.95


def test_bad_quantize_settings_are_refused(folder: Path) -> None:
    with pytest.raises(ValueError, match="choose one of"):
        M3Encoder(folder, quantize="int4")
    with pytest.raises(ValueError, match="float32"):
        M3Encoder(folder, dtype=torch.float16, quantize="int8")


def test_cache_keys_differ_between_modes(folder: Path) -> None:
    exact = SpanRanker(M3Encoder(folder))
    fast = SpanRanker(M3Encoder(folder, quantize="int8"))
    assert exact.fingerprint != fast.fingerprint


def test_service_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(QUANTIZE_ENV, raising=False)
    assert retriever_quantize("cpu") is None  # float32 unless asked: rankings stay exact
    monkeypatch.setenv(QUANTIZE_ENV, "none")
    assert retriever_quantize("cpu") is None
    monkeypatch.setenv(QUANTIZE_ENV, "int8")
    assert retriever_quantize("cpu") == "int8"
    assert retriever_quantize("cuda") is None
    monkeypatch.setenv(QUANTIZE_ENV, "fp4")
    with pytest.raises(ValueError, match=QUANTIZE_ENV):
        retriever_quantize("cpu")
