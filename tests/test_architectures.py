"""The wrapper is not Llama-only: the same exactness on tiny Qwen2 and Mistral decoders."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from vllm_landmark import LandmarkConfig, engine_kwargs
from vllm_landmark.testing.documents import make_document
from vllm_landmark.testing.tiny_llm import build_tiny_llama

pytestmark = pytest.mark.engine


@pytest.mark.parametrize("architecture", ["qwen2", "mistral"])
def test_k1_exact_and_k4_served_for_other_decoders(architecture: str, tmp_path: Path) -> None:
    from vllm import LLM, SamplingParams

    folder = build_tiny_llama(tmp_path / architecture, architecture=architecture, seed=3)
    llm = LLM(
        model=str(folder),
        dtype="float32",
        max_model_len=512,
        enforce_eager=True,
        **engine_kwargs(LandmarkConfig(budget=128, embedder="mean-baseline")),
    )
    try:
        params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
        document = make_document(llm.get_tokenizer(), 100, seed=21)
        content = [
            {"type": "document", "document": {"text": document}},
            {"type": "text", "text": "who?"},
        ]
        injected = llm.chat([{"role": "user", "content": content}], params)[0]
        pasted = llm.chat([{"role": "user", "content": document + "\nwho?"}], params)[0]
        assert injected.outputs[0].token_ids == pasted.outputs[0].token_ids
        content[0]["document"]["factor"] = 4
        compressed = llm.chat([{"role": "user", "content": content}], params)[0]
        raw = len(llm.get_tokenizer().encode(document, add_special_tokens=False))
        assert len(compressed.prompt_token_ids) == len(pasted.prompt_token_ids) - raw + -(-raw // 4)
    finally:
        del llm
        gc.collect()
