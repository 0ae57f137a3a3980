"""Retrieval-guided planning through the real server: the question picks the spans.

The server (tiny Llama + tiny random BGE-M3 as `--landmark-retriever`) plans a document longer
than the budget from the retriever's landmark scores. The plan it reports must equal the one
computed here, by another path, from the same encoder, tokenizer, budget and question.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from transformers import AutoTokenizer

from vllm_landmark.config import ALLOWED_FACTORS, LandmarkConfig
from vllm_landmark.planning import landmark_windows_plan
from vllm_landmark.testing.documents import make_document
from vllm_landmark.testing.server_process import ServerProcess
from vllm_landmark.testing.tiny_m3 import build_tiny_m3

pytestmark = pytest.mark.server

BUDGET = 96
QUESTION = "What did the keeper of the north lighthouse write in the record?"


@pytest.fixture(scope="module")
def retriever(tmp_path_factory) -> Path:
    return build_tiny_m3(tmp_path_factory.mktemp("tiny-m3") / "m3")


@pytest.fixture(scope="module")
def server(tiny_model: Path, retriever: Path, tmp_path_factory) -> Iterator[ServerProcess]:
    args = ["--max-model-len", "512", "--landmark-budget", str(BUDGET), "--enforce-eager"]
    # The mean baseline by name: the plan then uses every factor, as the planner here does.
    args += ["--landmark-retriever", str(retriever), "--landmark-embedder", "mean-baseline"]
    with ServerProcess(tiny_model, args, log_dir=tmp_path_factory.mktemp("retrieval-server")) as s:
        yield s


def _expected_plan(retriever: Path, document: str, question: str, tokenizer):
    from vllm_landmark.retrieval.m3 import M3Encoder
    from vllm_landmark.retrieval.spans import SpanRanker

    scores = SpanRanker(M3Encoder(retriever)).score_all_spans(
        document,
        question,
        llm_tokenizer=tokenizer,
        lexical_fusion=True,
        rounds=LandmarkConfig().retrieval_rounds,  # as the server scores
    )
    bounds = [(int(a), int(b)) for a, b in scores.llm_token_offsets.tolist() if b > a]
    values = [
        float(v)
        for (a, b), v in zip(scores.llm_token_offsets.tolist(), scores.score.tolist(), strict=True)
        if b > a
    ]
    num_tokens = len(tokenizer.encode(document, add_special_tokens=False))
    # Windows of whole sentences around the best spans (M3 fused with BM25) at k=1, sized by
    # the document's length; the gaps at the mean baseline's factors.
    return landmark_windows_plan(bounds, values, num_tokens, BUDGET, ALLOWED_FACTORS)


def test_server_plan_equals_the_planner_on_the_retriever_scores(
    server, tiny_model, retriever
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    document = make_document(tokenizer, 600, seed=41)
    raw = len(tokenizer.encode(document, add_special_tokens=False))
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    encoded = base64.b64encode(document.encode()).decode()
    content = [
        {"type": "file", "file": {"file_data": f"data:text/plain;base64,{encoded}"}},
        {"type": "text", "text": QUESTION},
    ]
    response = client.chat.completions.create(
        model=str(tiny_model), messages=[{"role": "user", "content": content}], max_tokens=2
    )
    block = response.model_extra["landmark"]["documents"][0]

    expected = _expected_plan(retriever, document, QUESTION, tokenizer)
    assert block["raw_tokens"] == raw > BUDGET
    assert block["injected_tokens"] == expected.soft_tokens <= BUDGET
    assert block["kept_tokens"] == expected.kept_tokens
    assert block["spans"] == len(expected.spans) > 1
    assert block["factors"] == sorted({s.factor for s in expected.spans})

    # A different question may plan differently; the same question plans the same again.
    again = client.chat.completions.create(
        model=str(tiny_model), messages=[{"role": "user", "content": content}], max_tokens=2
    )
    assert again.model_extra["landmark"]["documents"][0] == block


def test_document_query_plans_instead_of_the_message(server, tiny_model, retriever) -> None:
    """A document part's own ``query`` is the question the server plans for."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    document = make_document(tokenizer, 600, seed=43)
    question = "Which ship stayed in the harbour during the winter storm?"
    instructions = "Answer from the document above, in one short sentence."
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    content = [
        {"type": "document", "document": {"text": document, "query": question}},
        {"type": "text", "text": instructions},
    ]
    response = client.chat.completions.create(
        model=str(tiny_model), messages=[{"role": "user", "content": content}], max_tokens=2
    )
    block = response.model_extra["landmark"]["documents"][0]
    expected = _expected_plan(retriever, document, question, tokenizer)
    # The message text would plan otherwise, so the block tells which question was used.
    assert _expected_plan(retriever, document, instructions, tokenizer).spans != expected.spans
    assert block["injected_tokens"] == expected.soft_tokens <= BUDGET
    assert block["kept_tokens"] == expected.kept_tokens
    assert block["spans"] == len(expected.spans)


@pytest.fixture(scope="module")
def default_server(tiny_model: Path, tmp_path_factory) -> Iterator[ServerProcess]:
    """`--landmark` and nothing else about planning: the bundled retriever is the default.
    (Its per-request ceilings are set low here so that tests can cross them.)"""
    args = ["--max-model-len", "512", "--enforce-eager"]
    args += ["--landmark-max-request-documents", "4"]
    args += ["--landmark-max-request-document-tokens", "3000"]
    with ServerProcess(tiny_model, args, log_dir=tmp_path_factory.mktemp("default-server")) as s:
        yield s


def _ask(client: openai.OpenAI, model: str, documents: list[str], question: str = QUESTION):
    """One chat request: the documents as document parts, then the question."""
    content = [{"type": "document", "document": {"text": text}} for text in documents]
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": [*content, {"type": "text", "text": question}]}],
        max_tokens=2,
    )


def test_a_fresh_landmark_server_plans_with_the_bundled_retriever(
    default_server, tiny_model
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    client = openai.OpenAI(base_url=default_server.base_url, api_key="unused", max_retries=0)
    model = str(tiny_model)
    retrievals = "vllm:landmark_retrieval_seconds_count"

    # A plain request and a document that fits never reach the retriever.
    client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=2
    )
    fits = _ask(client, model, [make_document(tokenizer, 120, seed=44)])
    assert fits.model_extra["landmark"]["documents"][0]["selection"] == "whole"
    assert default_server.landmark_metrics().get(retrievals, 0.0) == 0

    # An over-long document is planned by the question, not cut to its head and tail.
    response = _ask(client, model, [make_document(tokenizer, 900, seed=45)])
    block = response.model_extra["landmark"]["documents"][0]
    assert (block["selection"], block["reason"]) == ("retriever", "window")
    assert block["factors"] == [1] and block["injected_tokens"] < block["raw_tokens"]
    assert default_server.landmark_metrics().get(retrievals, 0.0) == 1


def test_a_chain_of_assignments_takes_one_retrieval_round_per_link(
    default_server, tiny_model
) -> None:
    """The block says how many rounds ran: the first finds the quoted value's line, each
    later one the line naming the variable the last one found (retrieval/hops.py)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    client = openai.OpenAI(base_url=default_server.base_url, api_key="unused", max_retries=0)
    sentences = make_document(tokenizer, 900, seed=46).split(". ")
    chain = ["Qzvkt = 41822", "Wmbrx = Qzvkt", "Hjdpl = Wmbrx"]
    for place, link in zip((5, 30, 55), chain, strict=True):
        sentences.insert(place, link)
    document = ". ".join(sentences)
    question = "Which variables are assigned the value 41822?"
    block = _ask(client, str(tiny_model), [document], question).model_extra["landmark"]
    assert block["documents"][0]["selection"] == "retriever"
    assert block["documents"][0]["retrieval_rounds"] == len(chain)


def test_a_request_over_the_document_ceilings_gets_a_413_naming_the_limit(
    default_server, tiny_model
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    client = openai.OpenAI(base_url=default_server.base_url, api_key="unused", max_retries=0)
    model = str(tiny_model)
    small = make_document(tokenizer, 50, seed=46)
    big = make_document(tokenizer, 1600, seed=47)
    refused = "vllm:landmark_requests_refused_total{reason=%s}"
    cases = [
        ([small] * 5, "--landmark-max-request-documents", "too_many_documents"),
        ([big, big], "--landmark-max-request-document-tokens", "too_many_document_tokens"),
    ]
    for documents, flag, reason in cases:
        before = default_server.landmark_metrics()[refused % reason]
        with pytest.raises(openai.APIStatusError) as info:
            _ask(client, model, documents, "?")
        assert info.value.status_code == 413 and flag in str(info.value), info.value
        assert default_server.landmark_metrics()[refused % reason] == before + 1
    # The server is unharmed: a request within the ceilings is answered.
    ok = _ask(client, model, [small] * 4, "?")
    assert len(ok.model_extra["landmark"]["documents"]) == 4
