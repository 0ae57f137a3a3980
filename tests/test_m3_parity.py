"""Parity of vllm_landmark.retrieval.m3 with FlagEmbedding 1.4.2 (BGEM3FlagModel, fp32, CPU).

FlagEmbedding needs transformers<5, so it runs in its own environment through
tests/m3_reference/run_reference.py. Create that environment once and point the test at it:

    bash eval/m3_reference_env.sh /tmp/m3ref-venv
    LANDMARK_M3_REF_PYTHON=/tmp/m3ref-venv/bin/python pytest tests/test_m3_parity.py -s

Without LANDMARK_M3_REF_PYTHON the test is skipped.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest

from vllm_landmark.retrieval.m3 import M3Encoder
from vllm_landmark.testing.tiny_m3 import WORDS, build_tiny_m3, generate_sentence

HERE = Path(__file__).resolve().parent

TOL = 1e-5
REF_ENV = "LANDMARK_M3_REF_PYTHON"
WEIGHTS = [0.4, 0.2, 0.4]


def _long_text(enc: M3Encoder, rng: random.Random, n_tokens: int) -> str:
    """Multilingual text of about ``n_tokens`` tokens (special tokens included), not more."""
    sentences: list[str] = []
    total = 2
    while True:
        s = generate_sentence(rng, rng.choice(list(WORDS)))
        n = len(enc.tokenizer(s, add_special_tokens=False)["input_ids"])
        if total + n > n_tokens:
            break
        sentences.append(s)
        total += n
    return " ".join(sentences)


@pytest.fixture(scope="module")
def ref_python() -> str:
    path = os.environ.get(REF_ENV)
    if not path:
        pytest.skip(
            f"{REF_ENV} is not set. Create the FlagEmbedding reference environment with "
            f"`bash eval/m3_reference_env.sh /tmp/m3ref-venv`, then run with "
            f"{REF_ENV}=/tmp/m3ref-venv/bin/python"
        )
    if not os.access(path, os.X_OK):
        pytest.fail(f"{REF_ENV}={path} is not an executable python")
    return path


@pytest.fixture(scope="module")
def parity_run(ref_python: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Build the tiny model, encode/score with both implementations; return both outputs."""
    work = tmp_path_factory.mktemp("m3_parity")
    model_dir = build_tiny_m3(work / "tiny_m3")
    enc = M3Encoder(model_dir)
    limit = enc.max_length
    rng = random.Random(1234)
    near_max = _long_text(enc, rng, limit - 8)
    over_max = _long_text(enc, rng, limit + 400)
    n_near = len(enc.tokenizer(near_max, verbose=False)["input_ids"])
    n_over = len(enc.tokenizer(over_max, verbose=False)["input_ids"])
    assert limit - 150 < n_near <= limit, n_near
    assert n_over > limit, n_over

    pairs = [
        ("What is the capital of France?", "Paris is the capital and largest city of France."),
        (
            "Wo fließt der Fluss durch die Stadt?",
            "Der Fluss fließt durch die Stadt, über die Brücke geht der Zug.",
        ),
        ("城市的历史是什么？", "这个城市的历史很长，河流从城市中间流过。"),
        ("Какой язык у этого документа?", "Документ: history Geschichte 历史 история ιστορία."),
        ("日本語 の 文章 です か？", "a"),
        ("Find the river in the long document.", near_max),
        ("Welche Stadt liegt am Berg?", over_max),
        ("trailing spaces   ", "<mask> token and  double  spaces\tand\nnew lines  "),
        ("ＡＢＣ１２３ fullwidth Café", "Cafe\u0301 ½ emoji 😀 non\u00a0breaking"),
    ]
    texts = list(dict.fromkeys(t for pair in pairs for t in pair))
    # Short pairs only in FlagEmbedding's batched compute_score: it pads to the longest text.
    short = [i for i, p in enumerate(pairs) if p[1] not in (near_max, over_max)]
    spec = {
        "model": str(model_dir),
        "texts": texts,
        "pairs": [list(p) for p in pairs],
        "max_length": limit,
        "max_query_length": limit,
        "max_passage_length": limit,
        "weights": WEIGHTS,
        "batch_size": 4,
        "batched_pairs": [list(pairs[i]) for i in short],
    }
    (work / "in.json").write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [ref_python, str(HERE / "m3_reference" / "run_reference.py"), "in.json", "out.json"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"reference run failed:\n{proc.stderr[-4000:]}"
    ref = json.loads((work / "out.json").read_text())

    ours = enc.encode(texts, truncation=True)
    scores = enc.compute_score(pairs, weights=WEIGHTS)
    return {
        "ref": ref,
        "ours": ours,
        "scores": scores,
        "pairs": pairs,
        "short": short,
        "limit": limit,
    }


def test_reference_versions(parity_run: dict) -> None:
    versions = parity_run["ref"]["versions"]
    assert versions["FlagEmbedding"] == "1.4.2"
    assert versions["transformers"].startswith("4.")


def test_same_token_ids(parity_run: dict) -> None:
    ref_ids = parity_run["ref"]["encode"]["input_ids"]
    ours = parity_run["ours"].input_ids
    assert [len(x) for x in ours] == [len(x) for x in ref_ids]
    assert ours == ref_ids
    assert max(len(x) for x in ours) == parity_run["limit"]  # the over-limit text, truncated


def test_dense_parity(parity_run: dict) -> None:
    ref = np.asarray(parity_run["ref"]["encode"]["dense_vecs"], dtype=np.float32)
    ours = parity_run["ours"].dense_vecs
    assert ours.shape == ref.shape
    diff = float(np.abs(ours - ref).max())
    print(f"\nmax |dense diff| = {diff:.3g}")
    assert diff <= TOL


def test_lexical_parity(parity_run: dict) -> None:
    ref = parity_run["ref"]["encode"]["lexical_weights"]
    ours = parity_run["ours"].lexical_weights
    # Some texts must have weights, or the check is empty ("a" has none with this model).
    assert sum(bool(a) for a in ours) >= len(ours) - 2
    diff = 0.0
    for a, b in zip(ours, ref, strict=True):
        for key in set(a) | set(b):
            diff = max(diff, abs(a.get(key, 0.0) - b.get(key, 0.0)))
        # Keys can only differ for weights within TOL of 0.
        for key in set(a) ^ set(b):
            assert a.get(key, b.get(key)) <= TOL
    print(f"\nmax |lexical weight diff| = {diff:.3g}")
    assert diff <= TOL


def test_colbert_parity(parity_run: dict) -> None:
    ref = parity_run["ref"]["encode"]["colbert_vecs"]
    ours = parity_run["ours"].colbert_vecs
    diff = 0.0
    for a, b, ids in zip(ours, ref, parity_run["ours"].input_ids, strict=True):
        b = np.asarray(b, dtype=np.float32)
        assert a.shape == b.shape == (len(ids) - 1, a.shape[1])
        diff = max(diff, float(np.abs(a - b).max()))
    print(f"\nmax |colbert vec diff| = {diff:.3g}")
    assert diff <= TOL


def test_compute_score_parity(parity_run: dict) -> None:
    ref = parity_run["ref"]["score_each"]
    ours = parity_run["scores"]
    assert list(ours) == list(ref)
    for key in ref:
        assert len(ours[key]) == len(parity_run["pairs"])
        diff = float(np.abs(np.asarray(ours[key]) - np.asarray(ref[key])).max())
        print(f"\nmax |compute_score[{key!r}] diff| = {diff:.3g}")
        assert diff <= TOL, key


def test_flagembedding_batched_colbert_quirk(parity_run: dict) -> None:
    """FlagEmbedding's batched compute_score lets padding (zero vectors) into the ColBERT max.

    So its batched ColBERT score of a pair is never below the per-pair one; dense and sparse
    scores do not depend on the batch. We score pairs on their own (see m3.py).
    """
    ref = parity_run["ref"]
    each = {k: [v[i] for i in parity_run["short"]] for k, v in ref["score_each"].items()}
    batched = ref["score_batched"]
    for key in ("dense", "sparse"):
        assert np.allclose(each[key], batched[key], atol=TOL)
    gap = np.asarray(batched["colbert"]) - np.asarray(each["colbert"])
    assert (gap >= -TOL).all()
    print(f"\nFlagEmbedding batched - per-pair colbert score: max {gap.max():.3g}")
