"""A chat request whose client went away stops its document work (retrieval never runs)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from transformers import AutoTokenizer

from vllm_landmark import LandmarkConfig
from vllm_landmark.compression.choice import NO_EMBEDDER
from vllm_landmark.document.prompt import tokenize_around_documents
from vllm_landmark.document.reader import DocumentReader
from vllm_landmark.server import chat_documents, document_work
from vllm_landmark.server.metrics import metrics
from vllm_landmark.testing.documents import make_document
from vllm_landmark.testing.tiny_m3 import build_tiny_m3


def _value(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_a_cancelled_request_never_reaches_the_retriever(tiny_model: Path, tmp_path: Path) -> None:
    metrics()
    retriever = build_tiny_m3(tmp_path / "m3")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    config = LandmarkConfig(retriever=str(retriever), budget=96)
    reader = DocumentReader(config, tokenizer, 512, NO_EMBEDDER)
    document = make_document(tokenizer, 600, seed=5)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "document", "document": {"text": document}},
                {"type": "text", "text": "Who kept the lighthouse?"},
            ],
        }
    ]
    # The documents are parsed before the chat template, then tokenized around.
    prepared = asyncio.run(chat_documents.prepare_messages_async(reader, messages))
    (parsed,) = chat_documents.parsed_documents(prepared)
    prompt = {"prompt": f"user: {parsed.marker} Who?", "multi_modal_data": {"document": [parsed]}}
    token_ids, laid_out = tokenize_around_documents(reader, prompt, {}, 0)
    # Another request's retrieval holds the single retrieval worker.
    gate = threading.Event()
    busy = document_work.retrieval_executor.submit(gate.wait, 60)
    retrievals = _value("vllm:landmark_retrieval_seconds_count")
    cancelled = _value("vllm:landmark_requests_cancelled_total")

    async def cancel_while_waiting() -> None:
        task = asyncio.create_task(document_work.plan_prompt_async(reader, token_ids, laid_out))
        for _ in range(200):  # until the document waits for the retriever
            await asyncio.sleep(0.05)
            if document_work.retrieval_executor._work_queue.qsize():
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(cancel_while_waiting())
    finally:
        gate.set()
        busy.result()
    document_work.retrieval_executor.submit(lambda: None).result()  # the queue has drained

    assert _value("vllm:landmark_requests_cancelled_total") == cancelled + 1
    assert _value("vllm:landmark_retrieval_seconds_count") == retrievals
    # The same request, not cancelled, does reach the retriever.
    _, _, planned = asyncio.run(document_work.plan_prompt_async(reader, token_ids, laid_out))
    assert planned[0].selection == "retriever"
    assert _value("vllm:landmark_retrieval_seconds_count") == retrievals + 1
