"""ExtensibleEmbedder: packed plain-torch layers vs transformers, pooling, save/load, identity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vllm_landmark.compression.baseline import mean_pool_groups
from vllm_landmark.compression.embedder import (
    ADAPTER_WEIGHTS_NAME,
    EMBEDDER_CONFIG_NAME,
    EmbedderMismatchError,
    ExtensibleEmbedder,
    base_model_identity,
    find_shipped_embedder,
)
from vllm_landmark.testing.tiny_llm import build_tiny_llama

SPAN_LENGTHS = (7, 1, 40, 16)


def _spans(lengths=SPAN_LENGTHS, vocab=1000, seed=0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=gen) for n in lengths]


def _hf_model(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()


def _hf_layer_output(model, ids: torch.Tensor, num_layers: int) -> torch.Tensor:
    """Residual stream after decoder layer `num_layers - 1`, captured with a hook."""
    captured = {}

    def hook(_module, _args, output):
        captured["x"] = output[0] if isinstance(output, tuple) else output

    handle = model.model.layers[num_layers - 1].register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(input_ids=ids[None])
    finally:
        handle.remove()
    return captured["x"][0]


def _randomise_adapter(embedder: ExtensibleEmbedder, seed: int = 0) -> None:
    """Make LoRA and projection non-trivial, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in embedder.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
        embedder.projection.weight.add_(
            torch.randn(embedder.projection.weight.shape, generator=gen) * 0.02
        )
        embedder.projection.bias.add_(
            torch.randn(embedder.projection.bias.shape, generator=gen) * 0.02
        )


@pytest.fixture(scope="module")
def theta_model(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """The tiny Llama with a non-default rope_theta, so the test sees that it is honoured."""
    folder = tmp_path_factory.mktemp("tiny-theta")
    shutil.copytree(tiny_model, folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    config["rope_theta"] = 123456.0
    if isinstance(config.get("rope_parameters"), dict):
        config["rope_parameters"]["rope_theta"] = 123456.0
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path):
    """A saved embedder with a non-zero adapter, and the in-memory module it came from."""
    embedder = ExtensibleEmbedder.from_base(tiny_model, num_layers=2, factors=(2, 4, 8))
    embedder.attach_lora()
    _randomise_adapter(embedder)
    embedder.eval()
    folder = embedder.save_pretrained(tmp_path_factory.mktemp("embedder"))
    return folder, embedder


@pytest.mark.parametrize("num_layers", [1, 2])
def test_packed_stack_equals_transformers_layers(theta_model: Path, num_layers: int):
    embedder = ExtensibleEmbedder.from_base(theta_model, num_layers=num_layers, factors=(2,))
    assert embedder.spec.rope_parameters["rope_theta"] == 123456.0
    hf = _hf_model(theta_model)
    spans = _spans()
    with torch.no_grad():
        packed, cu = embedder.encode(spans)
    assert cu.tolist() == [0, 7, 8, 48, 64]
    for i, ids in enumerate(spans):
        expected = _hf_layer_output(hf, ids, num_layers)
        torch.testing.assert_close(packed[cu[i] : cu[i + 1]], expected, atol=2e-5, rtol=1e-4)


def test_qwen2_biases_are_loaded(tmp_path: Path):
    folder = build_tiny_llama(tmp_path / "qwen2", architecture="qwen2")
    embedder = ExtensibleEmbedder.from_base(folder, num_layers=2, factors=(4,))
    assert embedder.model.layers[0].self_attn.q_proj.bias is not None
    hf = _hf_model(folder)
    ids = _spans((23,))[0]
    with torch.no_grad():
        packed, _ = embedder.encode([ids])
    torch.testing.assert_close(packed, _hf_layer_output(hf, ids, 2), atol=2e-5, rtol=1e-4)


def test_embed_spans_is_mean_of_k_groups_then_projection(tiny_model: Path):
    embedder = ExtensibleEmbedder.from_base(tiny_model, num_layers=2, factors=(2, 4, 8))
    spans, factors = _spans(), [2, 4, 8, 4]
    out = embedder.embed_spans(spans, factors)
    assert [tuple(o.shape) for o in out] == [(4, 64), (1, 64), (5, 64), (4, 64)]
    with torch.no_grad():
        hidden, cu = embedder.encode(spans)
    for i, (k, got) in enumerate(zip(factors, out, strict=True)):
        # Identity projection at initialisation: exactly the mean pooling of the stack output.
        expected = mean_pool_groups(hidden[cu[i] : cu[i + 1]], k)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_batching_does_not_change_a_span(trained_folder):
    _, embedder = trained_folder
    spans = _spans(seed=3)
    together = embedder.embed_spans(spans, [2, 2, 8, 4])
    alone = [
        embedder.embed_spans([ids], [k])[0] for ids, k in zip(spans, [2, 2, 8, 4], strict=True)
    ]
    for a, b in zip(together, alone, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_bad_input_is_refused(trained_folder):
    _, embedder = trained_folder
    assert embedder.embed_spans([], []) == []
    with pytest.raises(ValueError, match=r"factor 16 .* allowed: \[2, 4, 8\]"):
        embedder.embed_spans(_spans((20,)), [16])
    with pytest.raises(ValueError, match=r"factor 1 "):
        embedder.embed_spans(_spans((20,)), [1])
    with pytest.raises(ValueError, match="span 1 is empty"):
        embedder.embed_spans([torch.tensor([1, 2]), torch.tensor([], dtype=torch.long)], [2, 2])
    with pytest.raises(ValueError, match="2 spans but 1 factors"):
        embedder.embed_spans(_spans((3, 4)), [2])


def test_save_load_round_trip(trained_folder, tiny_model: Path):
    folder, embedder = trained_folder
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        [
            EMBEDDER_CONFIG_NAME,
            "adapter_config.json",
            ADAPTER_WEIGHTS_NAME,
            "projection.safetensors",
        ]
    )
    from safetensors import safe_open

    with safe_open(folder / ADAPTER_WEIGHTS_NAME, framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and all("lora_" in key for key in keys)  # no base weights in the checkpoint
    config = json.loads((folder / EMBEDDER_CONFIG_NAME).read_text())
    assert config["factors"] == [2, 4, 8] and config["num_layers"] == 2
    assert config["base_model"] == {
        "name": tiny_model.name,
        "fingerprint": base_model_identity(tiny_model).fingerprint,
    }

    spans, factors = _spans(seed=5), [2, 8, 4, 2]
    expected = embedder.embed_spans(spans, factors)
    merged = ExtensibleEmbedder.from_pretrained(folder, tiny_model)
    assert merged.lora_merged and not merged.lora_attached
    assert not any(p.requires_grad for p in merged.parameters())
    live = ExtensibleEmbedder.from_pretrained(folder, tiny_model, trainable=True).eval()
    for loaded, atol in ((merged, 2e-6), (live, 0.0)):
        for got, want in zip(loaded.embed_spans(spans, factors), expected, strict=True):
            torch.testing.assert_close(got, want, atol=atol, rtol=1e-5)


def test_load_in_llm_dtype_with_shared_token_embedding(trained_folder, tiny_model: Path):
    folder, embedder = trained_folder
    hf = _hf_model(tiny_model)
    shared = ExtensibleEmbedder.from_pretrained(
        folder, tiny_model, dtype=torch.bfloat16, token_embedding=hf.model.embed_tokens
    )
    assert shared.model.embed_tokens is None
    assert shared.inv_freq.dtype == torch.float32  # RoPE frequencies are never rounded to bf16
    assert "model.embed_tokens.weight" not in shared.state_dict()
    assert hf.model.embed_tokens.weight.dtype == torch.float32  # the LLM's module is untouched
    spans = _spans(seed=7)
    out = shared.embed_spans(spans, [4, 4, 4, 4])
    assert all(o.dtype == torch.bfloat16 for o in out)
    reference = embedder.embed_spans(spans, [4, 4, 4, 4])
    for got, want in zip(out, reference, strict=True):
        torch.testing.assert_close(got.float(), want, atol=0.1, rtol=0.05)


def test_adapter_folder_is_a_peft_adapter_of_the_base_llm(trained_folder, tiny_model: Path):
    from peft import PeftModel

    folder, embedder = trained_folder
    peft_llm = PeftModel.from_pretrained(_hf_model(tiny_model), str(folder)).eval()
    ids = _spans((19,), seed=9)[0]
    with torch.no_grad():
        ours, _ = embedder.encode([ids])
    theirs = _hf_layer_output(peft_llm.base_model.model, ids, 2)
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)


def test_other_base_model_is_refused(trained_folder, tmp_path: Path, tiny_model: Path):
    folder, _ = trained_folder
    other = build_tiny_llama(tmp_path / "other-llm", seed=1)
    with pytest.raises(EmbedderMismatchError) as info:
        ExtensibleEmbedder.from_pretrained(folder, other)
    message = str(info.value)
    assert base_model_identity(tiny_model).fingerprint[:16] in message
    assert base_model_identity(other).fingerprint[:16] in message
    assert "other-llm" in message and tiny_model.name in message


def test_fingerprint_ignores_storage_dtype_and_folder_name(tiny_model: Path, tmp_path: Path):
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "bf16-copy"
    shutil.copytree(tiny_model, copy)
    tensors = load_file(copy / "model.safetensors")
    save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, copy / "model.safetensors")
    assert base_model_identity(copy).fingerprint == base_model_identity(tiny_model).fingerprint


def test_find_shipped_embedder_matches_by_fingerprint(trained_folder, tiny_model, tmp_path):
    folder, _ = trained_folder
    root = tmp_path / "embedders"
    shutil.copytree(folder, root / "tiny")
    (root / "broken").mkdir()
    (root / "broken" / EMBEDDER_CONFIG_NAME).write_text("{not json")
    assert find_shipped_embedder(tiny_model, root) == root / "tiny"
    other = build_tiny_llama(tmp_path / "other", seed=2)
    assert find_shipped_embedder(other, root) is None
    assert find_shipped_embedder(tiny_model, tmp_path / "missing") is None
