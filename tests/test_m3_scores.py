"""M3Encoder and the M3 score functions, without the FlagEmbedding reference."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vllm_landmark.retrieval.m3 import (
    DEFAULT_WEIGHTS,
    M3Encoder,
    MissingHeadError,
    clean_text,
    colbert_score,
    dense_score,
    hybrid_score,
    lexical_matching_score,
)
from vllm_landmark.testing.tiny_m3 import build_tiny_m3

TEXTS = [
    "What is the capital of France?",
    "Der Fluss fließt durch die Stadt.",
    "城市的历史很长。",
    "the the the river river",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 514 positions: an encoder limit of 512 tokens keeps the length tests cheap.
    return build_tiny_m3(tmp_path_factory.mktemp("m3") / "tiny", max_position_embeddings=514)


@pytest.fixture(scope="module")
def enc(model_dir: Path) -> M3Encoder:
    return M3Encoder(model_dir)


# ---------------------------------------------------------------- score functions by hand


def test_lexical_matching_score_by_hand() -> None:
    q = {"10": 0.5, "7": 0.2, "3": 0.9}
    p = {"7": 0.3, "10": 2.0, "99": 1.0}
    assert lexical_matching_score(q, p) == pytest.approx(0.5 * 2.0 + 0.2 * 0.3)
    assert lexical_matching_score(p, q) == pytest.approx(1.06)
    assert lexical_matching_score(q, {}) == 0.0


def test_colbert_score_by_hand() -> None:
    q = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    p = np.array([[0.6, 0.8], [1.0, 0.0]])
    # best per query vector: 1.0, 0.8, -0.6 -> mean over the 3 query vectors
    assert colbert_score(q, p) == pytest.approx((1.0 + 0.8 - 0.6) / 3)
    with pytest.raises(ValueError):
        colbert_score(np.zeros((0, 2)), p)


def test_dense_score_by_hand() -> None:
    a, b = np.array([0.6, 0.8]), np.array([1.0, 0.0])
    assert dense_score(a, b) == pytest.approx(0.6)
    assert np.allclose(dense_score(np.stack([a, b]), np.stack([a, b])), [[1, 0.6], [0.6, 1]])


def test_hybrid_weighting() -> None:
    assert DEFAULT_WEIGHTS == (0.4, 0.2, 0.4)
    assert hybrid_score(0.5, 0.2, 0.8) == pytest.approx(0.4 * 0.5 + 0.2 * 0.2 + 0.4 * 0.8)
    assert hybrid_score(0.5, 0.2, 0.8, weights=(1, 1, 1)) == pytest.approx(0.5)
    # Only the weights of the scores given count in the divisor.
    assert hybrid_score(0.5, None, 0.8) == pytest.approx((0.4 * 0.5 + 0.4 * 0.8) / 0.8)
    assert hybrid_score(dense=0.3, weights=(2, 0, 0)) == pytest.approx(0.3)
    for bad in [(1, 1), (1, -1, 1), (0, 0, 0), (1, math.nan, 1)]:
        with pytest.raises(ValueError):
            hybrid_score(0.1, 0.1, 0.1, weights=bad)
    with pytest.raises(ValueError):
        hybrid_score(None, None, None)
    with pytest.raises(ValueError):
        hybrid_score(dense=None, sparse=0.3, weights=(1, 0, 1))


# ---------------------------------------------------------------- text checks


def test_empty_and_whitespace_text_is_an_error(enc: M3Encoder) -> None:
    for bad in ["", "   ", "\n\t "]:
        with pytest.raises(ValueError, match="empty or whitespace"):
            enc.encode([bad])
    with pytest.raises(ValueError, match="text 1 is empty"):
        enc.encode(["fine", ""])
    with pytest.raises(ValueError, match="no texts"):
        enc.encode([])
    with pytest.raises(TypeError):
        enc.encode([b"bytes"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="empty"):
        enc.compute_score([("query", " ")])


def test_surrogates_are_replaced(enc: M3Encoder) -> None:
    assert clean_text("a\ud800b") == "a\ufffdb"
    assert clean_text("x\udfff") == "x\ufffd"
    assert clean_text("smile \ud83d\ude00") == "smile \U0001f600"  # a pair is joined
    out = enc.encode(["river\ud800 city", "river\ufffd city"])
    assert out.input_ids[0] == out.input_ids[1]
    assert np.allclose(out.dense_vecs[0], out.dense_vecs[1], atol=1e-6)


def test_too_long_without_truncation_is_an_error(enc: M3Encoder) -> None:
    assert enc.max_length == 512
    long_text = " ".join(["river city language history"] * 200)
    with pytest.raises(ValueError, match="truncation=True"):
        enc.encode([long_text])
    with pytest.raises(ValueError, match="max_length=20"):
        enc.encode(["short one", long_text], max_length=20)
    out = enc.encode([long_text], truncation=True)
    assert len(out.input_ids[0]) == 512
    assert out.input_ids[0][-1] == enc.tokenizer.eos_token_id
    assert out.colbert_vecs is not None and out.colbert_vecs[0].shape[0] == 511
    with pytest.raises(ValueError, match="max_length"):
        enc.encode(["x"], max_length=513)
    # compute_score truncates like FlagEmbedding.
    scores = enc.compute_score(("river", long_text), max_passage_length=64)
    assert set(scores) == {"colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense"}


# ---------------------------------------------------------------- outputs


def test_output_shapes_and_norms(enc: M3Encoder) -> None:
    out = enc.encode(TEXTS)
    assert out.dense_vecs.shape == (len(TEXTS), enc.hidden_size)
    assert out.dense_vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(out.dense_vecs, axis=1), 1, atol=1e-5)
    assert out.colbert_vecs is not None and out.lexical_weights is not None
    for ids, vecs in zip(out.input_ids, out.colbert_vecs, strict=True):
        assert ids[0] == enc.tokenizer.cls_token_id and ids[-1] == enc.tokenizer.eos_token_id
        assert vecs.shape == (len(ids) - 1, enc.colbert_dim)  # no CLS, final </s> kept
        assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)


def test_lexical_weights_by_hand(enc: M3Encoder) -> None:
    text = "the the the river river <mask>"
    out = enc.encode([text])
    ids = out.input_ids[0]
    with torch.inference_mode():
        hidden = enc.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        w = torch.relu(enc.sparse_linear(hidden)).squeeze(-1).tolist()
    expected: dict[str, float] = {}
    skip = {enc.tokenizer.cls_token_id, enc.tokenizer.eos_token_id}
    skip |= {enc.tokenizer.pad_token_id, enc.tokenizer.unk_token_id}
    for token_id, weight in zip(ids, w, strict=True):
        if token_id not in skip and weight > 0:
            expected[str(token_id)] = max(weight, expected.get(str(token_id), 0.0))
    lexical = out.lexical_weights[0]
    assert set(lexical) == set(expected)
    for k, v in expected.items():
        assert lexical[k] == pytest.approx(v, abs=1e-6)
    assert str(enc.tokenizer.cls_token_id) not in lexical
    assert str(enc.tokenizer.eos_token_id) not in lexical
    assert len(ids) > len(set(ids))  # repeated tokens: one key each, the max weight


def test_batching_does_not_change_outputs(enc: M3Encoder) -> None:
    together = enc.encode(TEXTS, batch_size=4)
    for i, text in enumerate(TEXTS):
        alone = enc.encode([text])
        assert alone.input_ids[0] == together.input_ids[i]
        assert np.abs(alone.dense_vecs[0] - together.dense_vecs[i]).max() < 1e-5
        assert np.abs(alone.colbert_vecs[0] - together.colbert_vecs[i]).max() < 1e-5
        a, b = alone.lexical_weights[0], together.lexical_weights[i]
        assert max(abs(a.get(k, 0) - b.get(k, 0)) for k in set(a) | set(b)) < 1e-5


def test_batches_respect_token_budget(enc: M3Encoder) -> None:
    enc_budget = enc.max_batch_tokens
    try:
        enc.max_batch_tokens = 100
        batches = enc._batches([60, 10, 50, 40, 30], batch_size=16)
        assert enc._batches([5] * 5, batch_size=2) == [[0, 1], [2, 3], [4]]
    finally:
        enc.max_batch_tokens = enc_budget
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    lengths = [60, 10, 50, 40, 30]
    # Longest first; a batch of b texts padded to width w holds b * w <= 100 tokens.
    assert batches == [[0], [2, 3], [4, 1]]
    assert all(len(b) * lengths[b[0]] <= 100 for b in batches)


def test_compute_score_matches_components(enc: M3Encoder) -> None:
    pairs = [(TEXTS[0], TEXTS[1]), (TEXTS[2], TEXTS[3])]
    weights = (0.5, 0.3, 0.7)
    scores = enc.compute_score(pairs, weights=weights)
    assert list(scores) == ["colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense"]
    q, p = enc.encode([a for a, _ in pairs]), enc.encode([b for _, b in pairs])
    for i in range(len(pairs)):
        d = dense_score(q.dense_vecs[i], p.dense_vecs[i])
        s = lexical_matching_score(q.lexical_weights[i], p.lexical_weights[i])
        c = colbert_score(q.colbert_vecs[i], p.colbert_vecs[i])
        assert scores["dense"][i] == pytest.approx(d, abs=1e-6)
        assert scores["sparse"][i] == pytest.approx(s, abs=1e-6)
        assert scores["colbert"][i] == pytest.approx(c, abs=1e-6)
        assert scores["sparse+dense"][i] == pytest.approx((0.5 * d + 0.3 * s) / 0.8, abs=1e-6)
        assert scores["colbert+sparse+dense"][i] == pytest.approx(
            (0.5 * d + 0.3 * s + 0.7 * c) / 1.5, abs=1e-6
        )
    single = enc.compute_score(pairs[0], weights=weights)
    assert all(isinstance(v, float) for v in single.values())
    assert enc.compute_score(list(pairs[0]), weights=weights) == single
    assert single["colbert+sparse+dense"] == pytest.approx(scores["colbert+sparse+dense"][0])
    default = enc.compute_score(pairs[0])
    assert default["colbert+sparse+dense"] == pytest.approx(
        hybrid_score(default["dense"], default["sparse"], default["colbert"])
    )
    with pytest.raises(ValueError):
        enc.compute_score([("only one",)])  # type: ignore[list-item]


# ---------------------------------------------------------------- folders


def test_dense_only_folder_warns_and_refuses(tmp_path: Path, enc: M3Encoder) -> None:
    folder = build_tiny_m3(tmp_path / "dense_only", max_position_embeddings=514, with_heads=False)
    with pytest.warns(UserWarning, match="dense-only"):
        dense_only = M3Encoder(folder)
    assert not dense_only.has_sparse and not dense_only.has_colbert
    out = dense_only.encode(TEXTS[:2])
    assert out.lexical_weights is None and out.colbert_vecs is None
    # Same encoder weights (same seed) as the full folder: same dense vectors.
    assert np.abs(out.dense_vecs - enc.encode(TEXTS[:2]).dense_vecs).max() < 1e-6
    with pytest.raises(MissingHeadError, match="sparse_linear"):
        dense_only.encode(TEXTS[:1], return_sparse=True)
    with pytest.raises(MissingHeadError, match="colbert_linear"):
        dense_only.encode(TEXTS[:1], return_colbert_vecs=True)
    with pytest.raises(MissingHeadError, match="dense-only"):
        dense_only.compute_score((TEXTS[0], TEXTS[1]))


def test_safetensors_heads(tmp_path: Path, enc: M3Encoder) -> None:
    folder = build_tiny_m3(tmp_path / "st", max_position_embeddings=514, heads_format="safetensors")
    assert not list(folder.glob("*.pt"))
    other = M3Encoder(folder)
    a, b = enc.encode(TEXTS), other.encode(TEXTS)
    assert np.abs(a.dense_vecs - b.dense_vecs).max() < 1e-6
    assert all(
        np.abs(x - y).max() < 1e-6 for x, y in zip(a.colbert_vecs, b.colbert_vecs, strict=True)
    )
    for x, y in zip(a.lexical_weights, b.lexical_weights, strict=True):
        assert x.keys() == y.keys()
        assert all(abs(x[k] - y[k]) < 1e-6 for k in x)


def test_one_head_missing(tmp_path: Path, model_dir: Path, enc: M3Encoder) -> None:
    import shutil

    folder = tmp_path / "sparse_only"
    shutil.copytree(model_dir, folder)
    (folder / "colbert_linear.pt").unlink()
    with pytest.warns(UserWarning, match="without colbert_linear"):
        partial = M3Encoder(folder)
    assert partial.has_sparse and not partial.has_colbert and partial.colbert_dim is None
    out = partial.encode(TEXTS[:2])
    assert out.colbert_vecs is None
    assert out.lexical_weights == enc.encode(TEXTS[:2]).lexical_weights
    with pytest.raises(MissingHeadError):
        partial.compute_score(TEXTS[:2])


def test_bad_head_shape_is_an_error(tmp_path: Path, model_dir: Path) -> None:
    import shutil

    folder = tmp_path / "bad"
    shutil.copytree(model_dir, folder)
    torch.save({"weight": torch.zeros(2, 7), "bias": torch.zeros(2)}, folder / "sparse_linear.pt")
    with pytest.raises(ValueError, match="sparse_linear"):
        M3Encoder(folder)


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        M3Encoder(tmp_path / "nope")
    # A repo id is looked up in the local Hugging Face cache only, never downloaded.
    with pytest.raises(FileNotFoundError, match="local Hugging Face cache"):
        M3Encoder("landmark-tests/no-such-model")
