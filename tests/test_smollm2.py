"""Exactness on the real embedded default, SmolLM2-135M-Instruct (select with -m smollm2)."""

from __future__ import annotations

import base64
import gc
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import openai
import pytest

from vllm_landmark import LandmarkConfig, engine_kwargs
from vllm_landmark.testing.server_process import ServerProcess

pytestmark = pytest.mark.smollm2

WINDOW = 2048
QUESTION = "In which year did the railway open, and how long is the line?"


@pytest.fixture(scope="module")
def smollm2() -> Path:
    from vllm_landmark.default_models import prepare_default_llm

    return prepare_default_llm()


@pytest.fixture(scope="module")
def document() -> str:
    """The first ~900 tokens of the bundled demo document, cut at a paragraph end."""
    text = (resources.files("vllm_landmark.data") / "demo_document.md").read_text(encoding="utf-8")
    paragraphs = text.split("\n\n")
    kept: list[str] = []
    while paragraphs and sum(len(p) for p in kept) < 3500:
        kept.append(paragraphs.pop(0))
    return "\n\n".join(kept).strip()


@pytest.mark.engine
def test_offline_k1_matches_pasted_text(smollm2: Path, document: str) -> None:
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=str(smollm2),
        dtype="float32",
        max_model_len=WINDOW,
        enforce_eager=True,
        **engine_kwargs(LandmarkConfig(budget=WINDOW - 256)),
    )
    try:
        params = SamplingParams(temperature=0.0, max_tokens=32)
        content = [
            {"type": "document", "document": {"text": document}},
            {"type": "text", "text": QUESTION},
        ]
        injected = llm.chat([{"role": "user", "content": content}], params)[0]
        pasted = llm.chat([{"role": "user", "content": document + "\n" + QUESTION}], params)[0]
        assert len(injected.prompt_token_ids) == len(pasted.prompt_token_ids) > 600
        assert injected.outputs[0].token_ids == pasted.outputs[0].token_ids
    finally:
        del llm
        gc.collect()


@pytest.fixture(scope="module")
def smollm2_server(smollm2: Path, tmp_path_factory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        smollm2,
        ["--max-model-len", str(WINDOW), "--landmark-budget", str(WINDOW - 256), "--enforce-eager"],
        log_dir=tmp_path_factory.mktemp("smollm2-server"),
    )
    with server:
        yield server


@pytest.mark.server
def test_server_k1_matches_pasted_text(
    smollm2_server: ServerProcess, smollm2: Path, document: str
) -> None:
    client = openai.OpenAI(base_url=smollm2_server.base_url, api_key="unused", max_retries=0)
    encoded = base64.b64encode(document.encode()).decode()
    part = {"type": "file", "file": {"file_data": f"data:text/markdown;base64,{encoded}"}}

    def ask(content):
        return client.chat.completions.create(
            model=str(smollm2),
            messages=[{"role": "user", "content": content}],
            temperature=0.0,
            max_tokens=32,
            logprobs=True,
        )

    injected = ask([part, {"type": "text", "text": QUESTION}])
    pasted = ask(document + "\n" + QUESTION)
    assert [t.token for t in injected.choices[0].logprobs.content] == [
        t.token for t in pasted.choices[0].logprobs.content
    ]
    assert injected.usage.prompt_tokens == pasted.usage.prompt_tokens
    block = injected.model_extra["landmark"]["documents"][0]
    assert block["factors"] == [1] and block["raw_tokens"] == block["injected_tokens"] > 600
