"""The M3 self-distillation recipe (recipes/m3) on a tiny random BGE-M3 folder, and its data
builder's parsers. CPU, offline, a few seconds."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from recipes.m3 import build_data
from recipes.m3.config import M3TrainConfig
from recipes.m3.data import length_grouped_batches, load_triples
from recipes.m3.losses import colbert_scores, sparse_scores
from recipes.m3.train import Trainer, main
from vllm_landmark.retrieval.m3 import (
    M3Encoder,
    colbert_score,
    lexical_matching_score,
)
from vllm_landmark.testing.tiny_m3 import build_tiny_m3, generate_sentence

LANGS = ["en", "de", "zh", "fr"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_m3(tmp_path_factory.mktemp("m3recipe") / "tiny", max_position_embeddings=514)


@pytest.fixture(scope="module")
def tiny_e5_like(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with e5's settings: mean pooling and query/passage prompts."""
    out = tmp_path_factory.mktemp("m3recipe") / "tiny-e5"
    shutil.copytree(tiny_model, out)
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True})
    )
    prompts = {"prompts": {"query": "query: ", "passage": "passage: "}}
    (out / "config_sentence_transformers.json").write_text(json.dumps(prompts))
    return out


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build_data-style folder: 8 documents x 5 passages; queries are a passage's sentence."""
    out = tmp_path_factory.mktemp("m3recipe") / "data"
    out.mkdir(exist_ok=True)
    rng = random.Random(7)
    passages, train = [], []
    for d in range(8):
        lang = LANGS[d % len(LANGS)]
        pids = []
        for k in range(5):
            sentences = [generate_sentence(rng, lang) for _ in range(4)]
            pid = f"doc{d}#{k}"
            pids.append(pid)
            passages.append(
                {"pid": pid, "doc": f"doc{d}", "lang": lang, "text": " ".join(sentences)}
            )
            train.append({"qid": f"{pid}:q", "query": sentences[rng.randrange(4)], "pos": pid,
                          "lang": lang, "doc": f"doc{d}"})  # fmt: skip
        for q in train[-5:]:
            q["negs"] = [p for p in pids if p != q["pos"]]
    with (out / "passages.jsonl").open("w") as fh:
        fh.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in passages)
    with (out / "train.jsonl").open("w") as fh:
        fh.writelines(json.dumps(q, ensure_ascii=False) + "\n" for q in train)
    return out


def tiny_config(model: Path, data: Path, out: Path, **overrides) -> M3TrainConfig:
    return M3TrainConfig.from_file(
        "tiny", model=str(model), data=str(data), output_dir=str(out), **overrides
    )


def test_configs_parse() -> None:
    for name in ("tiny", "default", "gpu_lora"):
        config = M3TrainConfig.from_file(name)
        assert config.teacher_weights == [1.0, 0.3, 1.0]
    with pytest.raises(ValueError, match="unknown"):
        M3TrainConfig.from_dict({"batchsize": 3})


def test_loss_goes_down_on_a_fixed_batch(tiny_model: Path, tiny_data: Path, tmp_path: Path):
    trainer = Trainer(tiny_config(tiny_model, tiny_data, tmp_path / "run", lr=0.02))
    batch = trainer.make_batch(trainer.epoch_batches(0)[0], 0)
    assert len(batch.passages) == len(batch.queries) * batch.group
    with torch.no_grad():
        first, parts = trainer.loss(batch)
    losses = [trainer.train_step(batch)["loss"] for _ in range(40)]
    with torch.no_grad():
        last, _ = trainer.loss(batch)
    print(f"\nfixed-batch loss {float(first):.4f} -> {float(last):.4f}")
    assert float(last) < 0.8 * float(first)
    assert losses[-1] < losses[0]
    assert {"dense_nce", "sparse_kd", "colbert_nce", "teacher_acc"} <= set(parts)


@pytest.mark.parametrize("variant", ["bge-m3", "e5-like"])
def test_training_scores_equal_m3encoder(
    variant: str, tiny_model: Path, tiny_e5_like: Path, tiny_data: Path, tmp_path: Path
) -> None:
    """After training, the exported folder scores pairs exactly as the recipe did."""
    model = tiny_model if variant == "bge-m3" else tiny_e5_like
    trainer = Trainer(tiny_config(model, tiny_data, tmp_path / "run", max_steps=3))
    trainer.train(progress=False)
    folder = trainer.export_folder(tmp_path / "exported")
    assert (folder / "sparse_linear.pt").is_file() and (folder / "colbert_linear.pt").is_file()

    enc = M3Encoder(folder)
    assert enc.pooling == ("cls" if variant == "bge-m3" else "mean")
    torch.testing.assert_close(enc.sparse_linear.weight, trainer.heads.sparse_linear.weight)
    torch.testing.assert_close(enc.colbert_linear.bias, trainer.heads.colbert_linear.bias)

    batch = trainer.make_batch(trainer.epoch_batches(0)[0], 0)
    with torch.no_grad():
        ours = trainer.scores(batch)
    q = enc.encode(batch.queries, prompt_name="query")
    p = enc.encode(batch.passages, prompt_name="passage")
    for i in range(len(batch.queries)):
        for j in range(len(batch.passages)):
            dense = float(q.dense_vecs[i] @ p.dense_vecs[j])
            sparse = lexical_matching_score(q.lexical_weights[i], p.lexical_weights[j])
            colbert = colbert_score(q.colbert_vecs[i], p.colbert_vecs[j])
            assert abs(float(ours["dense"][i, j]) - dense) < 1e-5
            assert abs(float(ours["sparse"][i, j]) - sparse) < 1e-5
            assert abs(float(ours["colbert"][i, j]) - colbert) < 1e-5
    # compute_score applies the prompts itself.
    pair = (batch.queries[0], batch.passages[0])
    assert abs(enc.compute_score(pair)["colbert"] - float(ours["colbert"][0, 0])) < 1e-5


def test_resume_gives_the_same_heads(tiny_model: Path, tiny_data: Path, tmp_path: Path) -> None:
    straight = Trainer(tiny_config(tiny_model, tiny_data, tmp_path / "a", max_steps=5))
    straight.train(progress=False)

    first = Trainer(tiny_config(tiny_model, tiny_data, tmp_path / "b", max_steps=5))
    first.train(progress=False, stop_at=3)  # as if killed after the checkpoint at step 3
    resumed = Trainer(tiny_config(tiny_model, tiny_data, tmp_path / "b", max_steps=5))
    assert resumed.load_checkpoint() and resumed.step == 3
    resumed.train(progress=False)
    for a, b in zip(straight.heads.parameters(), resumed.heads.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]

    other = Trainer(tiny_config(tiny_model, tiny_data, tmp_path / "b", max_steps=5, lr=0.5))
    with pytest.raises(ValueError, match="other settings"):
        other.load_checkpoint()


def test_lora_step_runs(tiny_model: Path, tiny_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    trainer = Trainer(tiny_config(tiny_model, tiny_data, tmp_path / "run", lora=True, lora_r=2))
    assert trainer.cache is None
    before = [p.detach().clone() for p in trainer.lora_model.parameters() if p.requires_grad]
    trainer.train_step(trainer.make_batch(trainer.epoch_batches(0)[0], 0))
    after = [p for p in trainer.lora_model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    folder = trainer.export_folder(tmp_path / "exported")
    assert M3Encoder(folder).has_colbert


def test_cli_writes_heads_and_record(tiny_model: Path, tiny_data: Path, tmp_path: Path) -> None:
    heads = tmp_path / "heads"
    argv = ["--config", "tiny", "--model", str(tiny_model), "--data", str(tiny_data),
            "--output-dir", str(tmp_path / "run"), "--heads-out", str(heads)]  # fmt: skip
    main(argv)
    record = json.loads((heads / "training.json").read_text())
    assert record["steps"] == 6 and len(record["loss_curve"]) == 6
    assert record["data"]["triples"] == 40
    state = torch.load(heads / "colbert_linear.pt", weights_only=True)
    assert set(state) == {"weight", "bias"}
    main(argv)  # resumes at the end: nothing more to do
    assert json.loads((heads / "training.json").read_text())["steps"] == 6


def test_batched_scores_match_pairwise_definitions() -> None:
    gen = torch.Generator().manual_seed(0)
    q_ids = torch.tensor([[0, 5, 6, 5, 2, 1], [0, 7, 8, 2, 1, 1]])
    p_ids = torch.tensor([[0, 5, 9, 2], [0, 6, 5, 2], [0, 8, 2, 1]])
    q_w = torch.rand(q_ids.shape, generator=gen) * (q_ids > 2)
    p_w = torch.rand(p_ids.shape, generator=gen) * (p_ids > 2)
    s = sparse_scores(q_w, q_ids, p_w, p_ids)
    for i in range(2):
        for j in range(3):
            qd, pd = {}, {}
            for d, ids, w in ((qd, q_ids[i], q_w[i]), (pd, p_ids[j], p_w[j])):
                for t, x in zip(ids.tolist(), w.tolist(), strict=True):
                    if x > 0:
                        d[str(t)] = max(d.get(str(t), 0.0), x)
            assert abs(float(s[i, j]) - lexical_matching_score(qd, pd)) < 1e-6
    q_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    p_mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    q_v = torch.nn.functional.normalize(torch.randn(2, 4, 5, generator=gen), dim=-1)
    p_v = torch.nn.functional.normalize(torch.randn(2, 3, 5, generator=gen), dim=-1)
    c = colbert_scores(q_v, q_mask, p_v, p_mask)
    for i in range(2):
        for j in range(2):
            ref = colbert_score(q_v[i][q_mask[i].bool()].numpy(), p_v[j][p_mask[j].bool()].numpy())
            assert abs(float(c[i, j]) - ref) < 1e-6


def test_length_grouped_batches() -> None:
    lengths = [random.Random(1).randrange(10, 200) for _ in range(100)]
    groups = ["en" if i % 3 else "de" for i in range(100)]
    a = length_grouped_batches(lengths, 8, seed=3, groups=groups, mega_batches=4)
    assert a == length_grouped_batches(lengths, 8, seed=3, groups=groups, mega_batches=4)
    assert a != length_grouped_batches(lengths, 8, seed=4, groups=groups, mega_batches=4)
    assert sorted(i for b in a for i in b) == list(range(100))
    assert all(len({groups[i] for i in b}) == 1 for b in a)
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in a])
    assert spread < 60  # random batches of 8 would spread ~150


def test_flagembedding_style_file(tmp_path: Path) -> None:
    file = tmp_path / "triples.jsonl"
    file.write_text(json.dumps({"query": "q", "pos": ["p"], "neg": ["n1", "n2"]}) + "\n")
    (t,) = load_triples(file)
    assert (t.query, t.pos, t.negs) == ("q", "p", ["n1", "n2"])


# ----------------------------------------------------------------------------------------------
# Data builder
# ----------------------------------------------------------------------------------------------

RST = """\
.. _label:

==========
Page Title
==========

:Author: Somebody

Intro paragraph with ``code`` and :func:`os.path.join` and `a link <https://x.y>`_.

Usage
-----

Run it like this::

    $ prog --flag
    more code

After the code, *emphasis* and **strong** text.

.. code-block:: c

   int main(void) { return 0; }

.. note::

   A note body is prose.

- a bullet item
  continued here
"""


def test_parse_rst() -> None:
    title, sections = build_data.parse_rst(RST)
    assert title == "Page Title"
    assert [s.heading for s in sections] == ["Page Title", "Usage"]
    assert sections[0].paragraphs == ["Intro paragraph with code and os.path.join and a link."]
    usage = sections[1].paragraphs
    assert usage[0] == "Run it like this:"
    assert "After the code, emphasis and strong text." in usage
    assert "A note body is prose." in usage
    assert "a bullet item continued here" in usage
    assert not any("prog --flag" in p or "int main" in p for p in usage)


RENDERED = """\
LS(1)                          User Commands                          LS(1)

NAME
       ls - list directory contents

DESCRIPTION
       List information about the FILEs. Sort entries alphabetically.

       -a, --all
              do not ignore entries starting with .

   Sorting
       这是 一个 测试。 Second line.

GNU coreutils 9.1                 September 2022                     LS(1)
"""


def test_parse_rendered_man() -> None:
    sections = build_data.parse_rendered_man(RENDERED)
    assert [(s.heading, s.level) for s in sections] == [
        ("NAME", 1),
        ("DESCRIPTION", 1),
        ("Sorting", 2),
    ]
    assert sections[1].paragraphs == [
        "List information about the FILEs. Sort entries alphabetically.",
        "-a, --all do not ignore entries starting with .",
    ]
    assert sections[2].paragraphs == ["这是一个测试。 Second line."]


@pytest.mark.skipif(shutil.which("groff") is None, reason="needs groff")
def test_render_man(tmp_path: Path) -> None:
    page = tmp_path / "demo.1"
    page.write_text(
        '.TH DEMO 1 2024 "demo" "Befehle"\n.SH BESCHREIBUNG\nDas ist \\fBfett\\fP und\n'
        "geht weiter.\n.SS Unterabschnitt\n.TP\n\\fB\\-x\\fP\nschaltet x ein.\n"
    )
    sections = build_data.parse_rendered_man(build_data.render_man(page))
    assert [s.heading for s in sections] == ["BESCHREIBUNG", "Unterabschnitt"]
    assert sections[0].paragraphs == ["Das ist fett und geht weiter."]
    assert sections[1].paragraphs == ["-x schaltet x ein."]
    redirect = tmp_path / "alias.1"
    redirect.write_text(".so man1/demo.1\n")
    assert build_data.render_man(redirect) is None


def test_text_helpers() -> None:
    assert build_data.split_sentences("One here. Two there! 三个。四个？ Five") == [
        "One here.",
        "Two there!",
        "三个。",
        "四个？",
        "Five",
    ]
    assert build_data.in_language("Die Datei wird nicht mit der Option gelesen", "de")
    assert not build_data.in_language("The file is not read with this option and", "de")
    assert build_data.in_language("这个选项默认是关闭的", "zh")
    assert not build_data.in_language("Permission is granted to copy", "ja")
    assert not build_data.is_prose("$ ls -l | grep 12 > /tmp/x")
    assert build_data.stable_hash("abc") == build_data.stable_hash("abc")
