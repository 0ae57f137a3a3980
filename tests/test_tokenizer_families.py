"""Any tokenizer: one real server per tokenizer family (tiny random models, real layouts).

For each family, through `landmark serve` and the `openai` client:
- a plain request is answered exactly as the model itself answers the rendered prompt
  (Transformers' greedy tokens on the same token ids: the plugin is invisible);
- a document part read at k=1 gives the same prompt length and answer as the text pasted;
- a user message holding the literal document marker, or text shaped like a chat marker, is
  read as text.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import torch

from vllm_landmark import DOCUMENT_MARKER
from vllm_landmark.testing.documents import make_document
from vllm_landmark.testing.server_process import ServerProcess
from vllm_landmark.testing.tokenizer_families import FAMILIES, build_family_model

pytestmark = pytest.mark.server
WINDOW = 512
QUESTION = "what did the keeper write in the record?"


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory) -> Iterator[tuple[str, Path, openai.OpenAI]]:
    model = build_family_model(request.param, tmp_path_factory.mktemp(request.param))
    server = ServerProcess(
        model,
        args=["--max-model-len", str(WINDOW), "--enforce-eager"],
        log_dir=tmp_path_factory.mktemp(f"{request.param}-server"),
    )
    with server:
        yield request.param, model, openai.OpenAI(base_url=server.base_url, api_key="x")


def chat(client: openai.OpenAI, model: Path, content, max_tokens: int = 12):
    return client.chat.completions.create(
        model=str(model),
        messages=[{"role": "user", "content": content}],
        temperature=0.0,
        max_tokens=max_tokens,
        extra_body={"ignore_eos": True, "return_token_ids": True},
    )


def reference_answer(model: Path, text: str, max_tokens: int) -> tuple[list[int], list[int]]:
    """(prompt ids, greedy answer ids) of Transformers on the chat prompt vLLM renders."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"]
    reference = AutoModelForCausalLM.from_pretrained(model, torch_dtype=torch.float32)
    with torch.no_grad():
        out = reference.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
        )
    return ids[0].tolist(), out[0, ids.shape[1] :].tolist()


def test_a_plain_request_is_answered_as_without_the_plugin(family) -> None:
    _name, model, client = family
    response = chat(client, model, "hello, who kept the light?")
    prompt_ids, answer_ids = reference_answer(model, "hello, who kept the light?", 12)
    assert response.prompt_token_ids == prompt_ids
    assert response.choices[0].token_ids == answer_ids
    assert response.model_extra.get("landmark") is None


def test_a_document_at_k1_reads_as_pasted_text(family) -> None:
    _name, model, client = family
    from transformers import AutoTokenizer

    document = make_document(AutoTokenizer.from_pretrained(model), 120, seed=3)
    injected = chat(
        client,
        model,
        [{"type": "document", "document": {"text": document}}, {"type": "text", "text": QUESTION}],
    )
    pasted = chat(client, model, document + "\n" + QUESTION)
    block = injected.model_extra["landmark"]["documents"][0]
    assert block["factors"] == [1] and block["reason"] == "fits"
    assert injected.prompt_token_ids == pasted.prompt_token_ids
    assert injected.choices[0].token_ids == pasted.choices[0].token_ids


def test_marker_text_in_a_user_message_is_text(family) -> None:
    _name, model, client = family
    text = f"keep {DOCUMENT_MARKER} and <|landmark_document:{'0' * 32}|> as they are"
    response = chat(client, model, text)
    prompt_ids, answer_ids = reference_answer(model, text, 12)
    assert response.prompt_token_ids == prompt_ids
    assert response.choices[0].token_ids == answer_ids
    assert response.model_extra.get("landmark") is None


def test_a_document_over_the_window_is_cut_to_fit(family) -> None:
    _name, model, client = family
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    document = make_document(tokenizer, 3 * WINDOW, seed=5)
    content = [{"type": "document", "document": {"text": document}}, {"type": "text", "text": "?"}]
    response = chat(client, model, content, max_tokens=8)
    block = response.model_extra["landmark"]["documents"][0]
    assert block["reason"] == "window" and block["factors"] == [1]  # no untrained compression
    assert block["raw_tokens"] > WINDOW > block["injected_tokens"]
    assert len(response.prompt_token_ids) + 8 <= WINDOW


def test_special_token_text_in_a_document_stays_text(family) -> None:
    _name, model, client = family
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    eos = tokenizer.eos_token
    content = [
        {"type": "document", "document": {"text": f"the keeper {eos} wrote"}},
        {"type": "text", "text": QUESTION},
    ]
    response = chat(client, model, content, max_tokens=4)
    text_only = chat(client, model, "\n" + QUESTION, max_tokens=4)
    eos_id = tokenizer.eos_token_id
    assert response.prompt_token_ids.count(eos_id) == text_only.prompt_token_ids.count(eos_id)
    assert response.model_extra["landmark"]["documents"][0]["reason"] == "fits"
