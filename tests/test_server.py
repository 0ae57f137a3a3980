"""A real OpenAI-compatible server (`landmark serve`, CPU build) driven by the `openai` client."""

from __future__ import annotations

import base64
import concurrent.futures
import json

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from tests.conftest import TINY_BUDGET, TINY_MAX_DOC_CHARS, TINY_MAX_DOC_TOKENS, TINY_WINDOW
from vllm_landmark import LandmarkConfig
from vllm_landmark.planning import choose_factor, num_soft_tokens
from vllm_landmark.testing.documents import make_document

pytestmark = pytest.mark.server

QUESTION = "what did the keeper write in the record?"


@pytest.fixture(scope="module")
def client(tiny_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=tiny_server.base_url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def model_name(tiny_model) -> str:
    return str(tiny_model)


def file_part(text: str | bytes, media_type: str = "text/plain") -> dict:
    data = text.encode() if isinstance(text, str) else text
    encoded = base64.b64encode(data).decode()
    return {
        "type": "file",
        "file": {"file_data": f"data:{media_type};base64,{encoded}", "filename": "doc.txt"},
    }


def ask(client, model_name, content, max_tokens: int = 16, **extra):
    return client.chat.completions.create(
        model=model_name,
        messages=[{"role": "user", "content": content}],
        temperature=0.0,
        max_tokens=max_tokens,
        logprobs=True,
        extra_body={"ignore_eos": True, **extra},
    )


def tokens_of(response) -> list[str]:
    return [entry.token for entry in response.choices[0].logprobs.content]


def test_file_part_at_k1_is_token_identical_to_pasted_text(client, model_name, tokenizer) -> None:
    for seed, size in [(11, 50), (12, TINY_BUDGET)]:
        document = make_document(tokenizer, size, seed=seed)
        raw = len(tokenizer.encode(document, add_special_tokens=False))
        injected = ask(
            client, model_name, [file_part(document), {"type": "text", "text": QUESTION}]
        )
        pasted = ask(client, model_name, document + "\n" + QUESTION)
        assert tokens_of(injected) == tokens_of(pasted)
        assert injected.usage.prompt_tokens == pasted.usage.prompt_tokens
        block = injected.model_extra["landmark"]
        assert block["documents"] == [
            {
                "raw_tokens": raw,
                "kept_tokens": raw,
                "factors": [1],
                "spans": 1,
                "injected_tokens": raw,
                "reason": "fits",
                "selection": "whole",
                "retrieval_rounds": 0,
            }
        ]


def test_document_part_and_documents_field_match_the_file_part(
    client, model_name, tokenizer
) -> None:
    document = make_document(tokenizer, 80, seed=13)
    by_file = ask(client, model_name, [file_part(document), {"type": "text", "text": QUESTION}])
    by_part = ask(
        client,
        model_name,
        [{"type": "document", "document": {"text": document}}, {"type": "text", "text": QUESTION}],
    )
    by_field = ask(client, model_name, QUESTION, documents=[{"text": document}])
    assert tokens_of(by_file) == tokens_of(by_part) == tokens_of(by_field)


def test_document_four_times_the_window_is_served_at_the_budget(
    client, model_name, tokenizer
) -> None:
    document = make_document(tokenizer, 4 * TINY_WINDOW, seed=14)
    raw = len(tokenizer.encode(document, add_special_tokens=False))
    factor = choose_factor(raw, TINY_BUDGET, LandmarkConfig(budget=TINY_BUDGET))
    response = ask(
        client, model_name, [file_part(document), {"type": "text", "text": QUESTION}], max_tokens=4
    )
    text_only = ask(client, model_name, "\n" + QUESTION, max_tokens=1)
    injected = num_soft_tokens(raw, factor)
    assert raw > 3 * TINY_WINDOW and injected <= TINY_BUDGET
    assert response.model_extra["landmark"]["documents"] == [
        {
            "raw_tokens": raw,
            "kept_tokens": raw,
            "factors": [factor],
            "spans": 1,
            "injected_tokens": injected,
            "reason": "budget",
            "selection": "uniform",
            "retrieval_rounds": 0,
        }
    ]
    # usage counts what the LLM attended to: the text plus the soft tokens.
    assert response.usage.prompt_tokens == text_only.usage.prompt_tokens + injected


def test_streaming_gives_the_same_answer(client, model_name, tokenizer) -> None:
    document = make_document(tokenizer, 60, seed=15)
    content = [file_part(document), {"type": "text", "text": QUESTION}]
    full = ask(client, model_name, content)
    stream = client.chat.completions.create(
        model=model_name,
        messages=[{"role": "user", "content": content}],
        temperature=0.0,
        max_tokens=16,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed == full.choices[0].message.content
    assert chunks[-1].model_extra["landmark"] == full.model_extra["landmark"]
    assert all("landmark" not in chunk.model_extra for chunk in chunks[:-1])


def _bad_requests(tokenizer) -> list[tuple[str, list | str, dict, str]]:
    """(name, content, extra body, expected message fragment)."""
    too_many_tokens = make_document(tokenizer, TINY_MAX_DOC_TOKENS + 200, seed=16)
    window_filler = make_document(tokenizer, 4 * TINY_BUDGET - 20, seed=18)
    text = {"type": "text", "text": QUESTION}
    return [
        ("empty document", [file_part("   \n "), text], {}, "the document is empty"),
        (
            "empty document part",
            [{"type": "document", "document": {"text": ""}}, text],
            {},
            "empty",
        ),
        ("binary data", [file_part(b"\x89PNG\r\n\x1a\n\x00\x00\xff"), text], {}, "not UTF-8 text"),
        ("NUL bytes", [file_part(b"abc\x00def"), text], {}, "NUL"),
        (
            "pdf media type",
            [file_part("hello", "application/pdf"), text],
            {},
            "unsupported media type",
        ),
        (
            "bad base64",
            [{"type": "file", "file": {"file_data": "data:text/plain;base64,@@@"}}, text],
            {},
            "not valid base64",
        ),
        (
            "file_id",
            [{"type": "file", "file": {"file_id": "file-123"}}, text],
            {},
            "no file with id",
        ),
        (
            "unknown part type",
            [{"type": "hologram", "hologram": {}}, text],
            {},
            "Unsupported chat content part type",
        ),
        (
            "over the char limit",
            [file_part("word " * (TINY_MAX_DOC_CHARS // 5 + 10)), text],
            {},
            "over the limit of",
        ),
        (
            "over the token limit",
            [file_part(too_many_tokens), text],
            {},
            f"over the limit of {TINY_MAX_DOC_TOKENS}",
        ),
        (
            "bad factor",
            [{"type": "document", "document": {"text": "a b", "factor": 5}}, text],
            {},
            "factor=5 is not allowed",
        ),
        (
            "prompt over the window",
            [{"type": "document", "document": {"text": window_filler, "factor": 1}}, text],
            {},
            "raise --max-model-len",
        ),
        (
            "documents field without text",
            QUESTION,
            {"documents": [{"title": "x"}]},
            "needs a 'text' string",
        ),
    ]


def test_bad_input_gets_a_400_naming_the_problem_and_server_keeps_serving(
    client, model_name, tokenizer, tiny_server
) -> None:
    for name, content, extra, message in _bad_requests(tokenizer):
        with pytest.raises(openai.BadRequestError) as caught:
            ask(client, model_name, content, max_tokens=2, **extra)
        assert caught.value.status_code == 400, name
        assert message in str(caught.value), f"{name}: {caught.value}"
        good = ask(
            client,
            model_name,
            [file_part("the keeper wrote."), {"type": "text", "text": QUESTION}],
            2,
        )
        assert good.choices[0].message.content is not None, name
    assert tiny_server.alive()


def test_a_lone_surrogate_gets_a_clear_400(tiny_server, model_name) -> None:
    # Valid JSON (an escape) but not valid Unicode text; the openai client cannot even send it.
    body = json.dumps({"model": model_name, "max_tokens": 2, "messages": [], "documents": []})
    body = body.replace('"messages": []', '"messages": [{"role": "user", "content": "why?"}]')
    body = body.replace('"documents": []', '"documents": [{"text": "a \\ud800 b"}]')
    response = httpx.post(
        f"{tiny_server.base_url}/chat/completions",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 400, response.text
    assert "not valid Unicode text: a lone surrogate (U+D800) at character 2" in response.text
    assert "TextEncodeInput" not in response.text


def test_bad_and_good_requests_concurrently_lose_nothing(client, model_name, tokenizer) -> None:
    bad = [content for _name, content, extra, _msg in _bad_requests(tokenizer) if not extra]
    good_doc = make_document(tokenizer, 40, seed=19)
    good = [[file_part(good_doc), {"type": "text", "text": f"question {i}?"}] for i in range(8)]

    def run(content) -> str:
        try:
            ask(client, model_name, content, max_tokens=4)
            return "ok"
        except openai.BadRequestError:
            return "400"

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        good_results = [pool.submit(run, c) for c in good]
        bad_results = [pool.submit(run, c) for c in bad]
        assert [f.result() for f in good_results] == ["ok"] * len(good)
        assert [f.result() for f in bad_results] == ["400"] * len(bad)
