"""The embedder recipe on a tiny random Llama: data split, samples, learning, resume, round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recipes.embedder.data import (
    QATemplate,
    TokenShards,
    make_question,
    prepare,
    prepare_word_documents,
    qa_sample,
)
from recipes.embedder.train import Trainer, tiny_config
from vllm_landmark.compression.embedder import ExtensibleEmbedder


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    return prepare_word_documents(out, tiny_model, tmp_path_factory.mktemp("docs"))


def test_prepare_splits_by_file_deterministically(tiny_data: Path, tiny_model: Path, tmp_path):
    manifest = json.loads((tiny_data / "manifest.json").read_text())
    assert manifest["splits"]["train"]["documents"] > 0
    assert manifest["splits"]["heldout"]["documents"] > 0
    train = {d["path"] for d in TokenShards.load(tiny_data, "train").docs}
    heldout = {d["path"] for d in TokenShards.load(tiny_data, "heldout").docs}
    assert not train & heldout and len(train | heldout) == 24
    again = tmp_path / "again"
    prepare(again, tiny_model, sources=manifest["sources"], heldout_permille=250, min_doc_tokens=64)
    for name in ("train.tokens.npy", "heldout.tokens.npy", "train.docs.json"):
        assert (again / name).read_bytes() == (tiny_data / name).read_bytes()


def test_qa_samples_ask_about_their_own_context(tiny_data: Path, tiny_model: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    template = QATemplate(tokenizer)
    shards = TokenShards.load(tiny_data, "train")
    rng = np.random.default_rng(0)
    for _ in range(5):
        sample = qa_sample(shards, rng, template, context_tokens=(60, 80), factors=(4,))
        context = tokenizer.decode(sample.context.tolist())
        answer = tokenizer.decode(sample.target.tolist(), skip_special_tokens=True).strip()
        assert answer and answer in context
        assert sample.target[-1].item() == tokenizer.eos_token_id
        assert "<|im_start|>user" in tokenizer.decode(sample.prefix.tolist())
        assert "assistant" in tokenizer.decode(sample.suffix.tolist())
    question, answer = make_question(
        "window cuts this one. The engine was built in 1887 by the north railway. "
        "The window cuts this last sentence ",
        np.random.default_rng(1),
    )
    assert answer in "The engine was built in 1887 by the north railway."


def test_loss_decreases_on_a_fixed_batch(tiny_data: Path, tiny_model: Path, tmp_path: Path):
    trainer = Trainer(tiny_config(tiny_model, tiny_data, tmp_path / "run"), progress=False)
    batch = trainer.batch_for(1)
    assert {s.factor for s in batch} <= {2, 4, 8}
    with torch.no_grad():
        trainer.embedder.eval()
        before = float(trainer.loss(batch)[0])
    for step in range(1, 21):
        trainer.train_step(min(step, 4), batch)
    with torch.no_grad():
        trainer.embedder.eval()
        after = float(trainer.loss(batch)[0])
    assert after < 0.8 * before, (before, after)


def test_resume_equals_uninterrupted_and_round_trip(tiny_data, tiny_model, tmp_path):
    straight = Trainer(tiny_config(tiny_model, tiny_data, tmp_path / "a"), progress=False)
    final_a = straight.run()
    assert final_a is not None

    first = Trainer(tiny_config(tiny_model, tiny_data, tmp_path / "b"), progress=False)
    assert first.run(stop_after_steps=3) is None
    resumed = Trainer(tiny_config(tiny_model, tiny_data, tmp_path / "b"), progress=False)
    assert resumed.step == 3
    final_b = resumed.run()
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["type"] == "train"
    ]
    assert steps == [1, 2, 3, 4, 5, 6]
    from safetensors.torch import load_file

    for name in ("adapter_model.safetensors", "projection.safetensors"):
        a, b = load_file(final_a / name), load_file(final_b / name)
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)

    # The saved folder loads (merged, no peft) to the same function as the in-memory module.
    config = json.loads((final_a / "embedder_config.json").read_text())
    assert config["training"]["steps"] == 6
    loaded = ExtensibleEmbedder.from_pretrained(final_a, tiny_model)
    straight.embedder.eval()
    spans = [s.context for s in straight.batch_for(2)]
    factors = [2, 4, 8, 4]
    for got, want in zip(
        loaded.embed_spans(spans, factors),
        straight.embedder.embed_spans(spans, factors),
        strict=True,
    ):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert any(
        json.loads(line)["type"] == "eval"
        for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    )


def test_perplexity_eval_runs_on_the_tiny_model(tiny_data, tiny_model, tmp_path):
    from eval.perplexity import main as perplexity_main

    run = Trainer(tiny_config(tiny_model, tiny_data, tmp_path / "run"), progress=False).run()
    output = tmp_path / "ppl.json"
    perplexity_main(
        [
            "--base-model",
            str(tiny_model),
            "--embedder",
            str(run),
            "--data-dir",
            str(tiny_data),
            "--samples",
            "4",
            "--context-tokens",
            "48",
            "--target-tokens",
            "12",
            "--factors",
            "2",
            "4",
            "16",
            "--output",
            str(output),
        ]
    )
    result = json.loads(output.read_text())
    names = set(result["perplexity"])
    assert {"none", "full", "mean@2", "embedder@2", "swapped-embedder@4", "mean@16"} <= names
    assert "embedder@16" not in names  # not a trained factor: reported as skipped
    assert result["skipped"] == ["embedder@16", "swapped-embedder@16"]
    assert all(v["ppl"] > 1 for v in result["perplexity"].values())

    # Shipping refuses anything that does not beat both baselines at every trained factor.
    from recipes.embedder.export import check_perplexity, write_loss_curve

    curve = tmp_path / "curve.csv"
    assert write_loss_curve(tmp_path / "run" / "metrics.jsonl", curve, [2, 4, 8]) == 6
    header = curve.read_text().splitlines()[0]
    assert header.startswith("step,stage,loss") and "heldout_loss_k8" in header
    fake = {"perplexity": {"none": {"ppl": 50}, "mean@2": {"ppl": 80}, "embedder@2": {"ppl": 30}}}
    assert check_perplexity(fake, [2]) == []
    fake["perplexity"]["embedder@2"]["ppl"] = 60
    assert check_perplexity(fake, [2]) == ["k=2: embedder 60.00 does not beat none 50.00"]
    assert check_perplexity(fake, [2, 4])[-1] == "k=4: not measured"


def test_fit_stages_keeps_proportions_and_the_past():
    from recipes.embedder.train import StageConfig, fit_stages

    stages = [StageConfig("pretrain", "ar", 4), StageConfig("qa", "qa", 2, ar_fraction=0.5)]
    assert [s.steps for s in fit_stages(stages, 2, 60)] == [40, 20]
    assert [s.steps for s in fit_stages(stages, 5, 12)] == [4, 8]  # stage 1 is already done
    assert [s.steps for s in fit_stages(stages, 3, 3)] == [4, 1]  # never ends before step + 1
    long = [StageConfig("pretrain", "ar", 100), StageConfig("qa", "qa", 50)]
    assert [s.steps for s in fit_stages(long, 40, 60)] == [41, 19]
    assert fit_stages(stages, 2, 60)[1].ar_fraction == 0.5


def test_fit_schedule_rescales_and_survives_resume(tiny_data, tiny_model, tmp_path):
    overrides = {"fit_minutes": 1.0, "fit_after_steps": 2}
    config = tiny_config(tiny_model, tiny_data, tmp_path / "run", **overrides)
    trainer = Trainer(config, progress=False)
    early = [(config.lr_at(s), config.stage_at(s).name) for s in (1, 2)]
    trainer.step = 2
    # 59 s left at 0.5 s/step, 5 % reserve, one evaluation (3 batches) every 3 steps: ~56 steps
    trainer._fit_schedule([0.5, 0.5], [0.0, 0.0], spent=1.0)
    assert 40 < config.total_steps < 70, config.stages
    assert [s.task for s in config.stages] == ["ar", "qa"]
    assert abs(config.stages[0].steps / config.total_steps - 4 / 6) < 0.05
    assert [(config.lr_at(s), config.stage_at(s).name) for s in (1, 2)] == early
    trainer._checkpoint()
    resumed = Trainer(
        tiny_config(tiny_model, tiny_data, tmp_path / "run", **overrides), progress=False
    )
    assert resumed.step == 2 and resumed.fit == trainer.fit
    assert resumed.config.stages == config.stages
    with pytest.raises(ValueError, match="fit_after_steps"):
        tiny_config(tiny_model, tiny_data, tmp_path / "x", fit_minutes=1.0, fit_after_steps=3)


def test_init_from_starts_a_new_run_at_a_trained_embedder(tiny_data, tiny_model, tmp_path):
    """`init_from`: the new run's weights are the trained embedder's (with lr 0 they stay so),
    its step count and optimizer start afresh; a shape that differs is refused by name."""
    final_a = Trainer(tiny_config(tiny_model, tiny_data, tmp_path / "a"), progress=False).run()
    assert final_a is not None
    # A measured factor_help record belongs to final_a's weights: the new run must not inherit it.
    config_a = json.loads((final_a / "embedder_config.json").read_text())
    effect = {"mean": 0.1, "low": 0.05, "high": 0.2, "n": 20}
    config_a["factor_help"] = {
        "metric": "test",
        "decided_on": "dev",
        "source": "test",
        "splits": {"dev": {"2": effect}},
    }
    (final_a / "embedder_config.json").write_text(json.dumps(config_a))
    stages = [{"name": "serving", "task": "plan_qa", "steps": 2, "ar_fraction": 0.5}]
    config = tiny_config(
        tiny_model, tiny_data, tmp_path / "c", init_from=str(final_a), lr=0.0, stages=stages
    )
    follow = Trainer(config, progress=False)
    assert follow.step == 0
    final_c = follow.run()
    assert final_c is not None
    from safetensors.torch import load_file

    for name in ("adapter_model.safetensors", "projection.safetensors"):
        a, c = load_file(final_a / name), load_file(final_c / name)
        assert set(a) == set(c)
        for key in a:
            torch.testing.assert_close(c[key], a[key], atol=0, rtol=0)
    written = json.loads((final_c / "embedder_config.json").read_text())
    assert written.get("factor_help") is None
    training = written["training"]
    assert training["steps"] == 2 and training["config"]["init_from"] == str(final_a)
    assert training["started_from"]["training"]["steps"] == 6

    wrong = tiny_config(tiny_model, tiny_data, tmp_path / "d", init_from=str(final_a), lora_r=8)
    with pytest.raises(ValueError, match="init_from .*lora_r"):
        Trainer(wrong, progress=False)


def test_final_on_stop_writes_a_loadable_final(tiny_data, tiny_model, tmp_path):
    trainer = Trainer(tiny_config(tiny_model, tiny_data, tmp_path / "run"), progress=False)
    assert trainer.run(stop_after_steps=3, final_on_stop=True) is None
    final = tmp_path / "run" / "final"
    training = json.loads((final / "embedder_config.json").read_text())["training"]
    assert training["stopped_early"] and training["steps"] == 3 and training["total_steps"] == 6
    ExtensibleEmbedder.from_pretrained(final, tiny_model)


def test_plan_qa_samples_are_planned_documents(tiny_data: Path, tiny_model: Path, tmp_path):
    """The serving-format stage: whole-sentence k=1 windows and compressed gaps within the
    budget, the answer in the document, and soft tokens assembled as the server does (k=1:
    the LLM's token embeddings; k>1: the embedder's output for that span alone)."""
    from transformers import AutoTokenizer

    from recipes.embedder.plan_qa import plan_qa_sample, soft_tokens
    from vllm_landmark.retrieval.encoding import llm_token_offsets
    from vllm_landmark.retrieval.segment import segment

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    template = QATemplate(tokenizer)
    shards = TokenShards.load(tiny_data, "train")
    rng = np.random.default_rng(3)
    trainer = Trainer(tiny_config(tiny_model, tiny_data, tmp_path / "run"), progress=False)
    samples = [
        plan_qa_sample(
            shards, rng, template, context_tokens=(150, 220), factors=(2, 4, 8), compression=(2, 6)
        )
        for _ in range(6)
    ]
    mixed = 0
    for sample in samples:
        n = len(sample.context)
        text = tokenizer.decode(sample.context.tolist())
        answer = tokenizer.decode(sample.target.tolist(), skip_special_tokens=True).strip()
        assert answer and answer in text
        ranges, _ = llm_token_offsets(tokenizer, text, segment(text))  # the server's sentences
        edges = {int(b) for span in ranges for b in span}
        plan = sample.plan
        assert plan[0][0] >= 0 and plan[-1][1] <= n
        assert all(a[1] <= b[0] for a, b in zip(plan, plan[1:], strict=False))
        soft = sum(-(-(e - s) // k) for s, e, k in plan)
        assert soft <= n / 2 + 1  # compression (2, 6): at most half the document
        raw = [(s, e) for s, e, k in plan if k == 1]
        assert raw
        if not all(s in edges and e in edges for s, e in raw):
            # The one exception the planner makes: the best sentence is longer than the whole
            # raw budget, so it is cut, and it is then the only window.
            assert len(raw) == 1, (raw, sorted(edges))
            start, end = raw[0]
            inside = [(a, b) for a, b in ranges if a <= start < b]
            assert inside and end <= inside[0][1], (raw, sorted(edges))
        mixed += any(k > 1 for _, _, k in plan)
        assert sample.factor == max(k for _, _, k in plan)
    assert mixed >= 3  # windows next to compressed gaps, not only windows
    with torch.no_grad():
        trainer.embedder.eval()
        batch = soft_tokens(trainer.embedder, trainer.llm, samples)
        embed = trainer.llm.get_input_embeddings()
        for sample, got in zip(samples, batch, strict=True):
            row = 0
            for s, e, k in sample.plan:
                span = sample.context[s:e]
                want = embed(span) if k == 1 else trainer.embedder([span], [k])[0]
                torch.testing.assert_close(got[row : row + len(want)], want, atol=1e-5, rtol=1e-4)
                row += len(want)
            assert row == len(got)


def test_a_run_with_the_plan_qa_stage(tiny_data: Path, tiny_model: Path, tmp_path):
    stages = [
        {"name": "pretrain", "task": "ar", "steps": 2},
        {"name": "serving", "task": "plan_qa", "steps": 3, "ar_fraction": 0.0},
    ]
    config = tiny_config(
        tiny_model, tiny_data, tmp_path / "run", stages=stages, context_tokens=(120, 160)
    )
    final = Trainer(config, progress=False).run()
    records = [
        json.loads(line)
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().split("\n")
        if line
    ]
    serving = [r for r in records if r.get("step", 0) > 2 and "loss" in r]
    assert serving and all(np.isfinite(r["loss"]) for r in serving)
    assert any(k.startswith("plan_qa@") for r in serving for k in r.get("by_kind_factor", {}))
    assert tuple(ExtensibleEmbedder.from_pretrained(final, tiny_model).config.factors) == (2, 4, 8)
    with pytest.raises(ValueError, match="plan_compression"):
        tiny_config(tiny_model, tiny_data, tmp_path / "x", plan_compression=(0.5, 2))
