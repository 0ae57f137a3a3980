"""The shipped default embedder loads onto the prepared SmolLM2 (select with -m smollm2)."""

from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path

import pytest
import torch

from vllm_landmark.compression.embedder import (
    EmbedderConfig,
    ExtensibleEmbedder,
    find_shipped_embedder,
    shipped_embedders_dir,
)

pytestmark = pytest.mark.smollm2

SHIPPED = shipped_embedders_dir() / "smollm2-135m"


@pytest.fixture(scope="module")
def smollm2() -> Path:
    from vllm_landmark.default_models import prepare_default_llm

    return prepare_default_llm()


def test_shipped_embedder_is_found_and_small():
    config = EmbedderConfig.from_folder(SHIPPED)
    assert config.factors == (2, 4, 8, 16, 32)
    assert config.base_model.name == "SmolLM2-135M-Instruct"
    total = sum(p.stat().st_size for p in SHIPPED.iterdir())
    assert total < 20 * 2**20
    # Shipped as trained only with its record: the measured table and the loss curve.
    assert (SHIPPED / "TRAINING.md").is_file() and (SHIPPED / "loss_curve.csv").is_file()
    # The recorded step count is the loss curve's last step (the record belongs to these weights).
    steps = json.loads((SHIPPED / "embedder_config.json").read_text())["training"]["steps"]
    with (SHIPPED / "loss_curve.csv").open() as curve:
        last_step = int(list(csv.DictReader(curve))[-1]["step"])
    assert steps == last_step > 0


def test_shipped_embedder_serves_the_default_llm(smollm2: Path):
    assert find_shipped_embedder(smollm2) == SHIPPED
    embedder = ExtensibleEmbedder.from_pretrained(SHIPPED, smollm2)
    from transformers import AutoTokenizer

    text = (resources.files("vllm_landmark.data") / "demo_document.md").read_text("utf-8")
    ids = AutoTokenizer.from_pretrained(smollm2)(text[:3000])["input_ids"]
    spans = [torch.tensor(ids[:300]), torch.tensor(ids[300:])]
    out = embedder.embed_spans(spans, [4, 32])
    assert out[0].shape == (75, 576) and out[1].shape == (-(-(len(ids) - 300) // 32), 576)
    assert all(torch.isfinite(o).all() for o in out)
    again = embedder.embed_spans(spans[:1], [4])[0]
    torch.testing.assert_close(again, out[0], atol=1e-5, rtol=1e-5)
