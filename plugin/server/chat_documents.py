"""Documents in chat messages: found, checked and tokenized once, before the chat template.

`prepare_messages` replaces every document content part (`file`, `document`) of a
conversation with an internal part holding its `ParsedDocument`; the chat patch renders that
part as the document's marker, and the tokenization patch plans it once the prompt around it is
known. Requests without documents pass through untouched.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..document.items import DocumentError
from ..document.marker import new_marker
from ..document.planning import DocumentPlanner, ParsedDocument
from .file_parts import DOCUMENT_PART_TYPES, document_from_part
from .metrics import metrics

#: Content-part type that carries a ParsedDocument through vLLM's chat parsing.
INTERNAL_PART = "landmark_document"

#: Tokenizing documents runs here, never on the event loop or on the renderer's tokenizer
#: pool that requests without documents need.
_document_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="landmark-documents")


def _limit_retrieval_threads() -> None:
    """Leave a CPU engine in another process at least half the cores.

    Measured on 2 vCPU (eval/RESULTS.md, "Mixed load"): two retrievals with torch's default
    threads starved the engine, and plain requests sent meanwhile waited many times longer.
    One retrieval at a time on half the cores served plain requests at once and the documents
    no later. torch's thread count is set in the retrieval thread itself.
    """
    from vllm import envs

    if not envs.VLLM_ENABLE_V1_MULTIPROCESSING:
        return  # the engine runs in this process: leave its threads alone
    import torch

    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, min(torch.get_num_threads(), cores // 2)))


#: Retrieval (the encoder forward over whole documents) runs here, one document at a time.
_retrieval_executor = ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="landmark-retrieval", initializer=_limit_retrieval_threads
)

#: Template tokens allowed per message when estimating a prompt's text length.
_TEMPLATE_TOKENS_PER_MESSAGE = 8


def has_document_parts(messages: list[Any]) -> bool:
    return any(
        isinstance(part, dict) and part.get("type") in DOCUMENT_PART_TYPES
        for message in messages
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for part in message["content"]
    )


def documents_field_to_parts(messages: list[Any], documents: list[Any]) -> list[Any]:
    """Messages with the request's `documents` put at the start of the last user message.

    Most chat templates (ChatML, Llama 3) do not render `documents`; placing them as parts
    keeps them visible to every model, at a defined place, right before the question.
    """
    parts: list[dict[str, Any]] = []
    for index, doc in enumerate(documents):
        if not isinstance(doc, dict):
            raise DocumentError(f"documents[{index}] must be an object with 'text'")
        text = doc.get("text", doc.get("content"))
        if not isinstance(text, str):
            raise DocumentError(f"documents[{index}] needs a 'text' string")
        title = doc.get("title")
        if isinstance(title, str) and title.strip():
            parts.append({"type": "text", "text": title})
        parts.append({"type": "document", "document": {"text": text}})
    messages = list(messages)
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if content is None:
                content = []
            elif isinstance(content, str):
                content = [{"type": "text", "text": content}]
            messages[index] = {**message, "content": [*parts, *content]}
            return messages
    raise DocumentError("the request has 'documents' but no user message to attach them to")


def last_user_text(messages: list[Any]) -> str | None:
    """The text of the last user message (its text parts joined), the request's question."""
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content.strip() or None
        texts = [
            part.get("text", "")
            for part in content or []
            if isinstance(part, dict) and part.get("type") == "text"
        ]
        return "\n".join(t for t in texts if t).strip() or None
    return None


def _message_texts(messages: list[Any]) -> list[str]:
    texts = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
    return texts


def replace_parts(messages: list[Any], replace: Callable[[Any], Any]) -> list[Any]:
    """A copy of `messages` with every content part of list contents passed through `replace`."""
    out = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            message = {**message, "content": [replace(part) for part in content]}
        out.append(message)
    return out


class PlanningCancelled(Exception):
    """The request went away while its documents were being read; the work was stopped."""


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise PlanningCancelled


def _parse_parts(
    planner: DocumentPlanner, messages: list[Any], cancel: threading.Event | None = None
) -> tuple[list[Any], list[ParsedDocument], bool]:
    """Messages with document parts replaced by internal parts, the parsed documents, and
    whether retrieval scores may be needed (runs off the event loop).

    `cancel` is checked before each document: once set, the work stops.
    """
    query = last_user_text(messages)
    parsed: list[ParsedDocument] = []

    def parse(part: Any) -> Any:
        if not (isinstance(part, dict) and part.get("type") in DOCUMENT_PART_TYPES):
            return part
        _check(cancel)
        document = planner.parse(document_from_part(part, planner.config), new_marker(), query)
        parsed.append(document)
        return {"type": INTERNAL_PART, INTERNAL_PART: document}

    out = replace_parts(messages, parse)

    def text_tokens() -> int:  # tokenizes the messages only when the decision needs it
        texts = _message_texts(messages)
        counted = sum(len(planner.tokenizer.encode(t, add_special_tokens=False)) for t in texts)
        return counted + _TEMPLATE_TOKENS_PER_MESSAGE * len(messages)

    return out, parsed, planner.may_need_scores(parsed, text_tokens)


def _add_scores(
    planner: DocumentPlanner, parsed: list[ParsedDocument], cancel: threading.Event | None = None
) -> None:
    """The retriever's scores for each document; `cancel` is checked before each one."""
    for document in parsed:
        _check(cancel)
        started = time.perf_counter()
        planner.add_scores(document)
        metrics().retrieval_seconds.observe(time.perf_counter() - started)


def _parse_all(planner: DocumentPlanner, messages: list[Any]) -> list[Any]:
    """Messages with document parts replaced by internal parts, scored when needed."""
    out, parsed, need_scores = _parse_parts(planner, messages)
    if need_scores:
        _add_scores(planner, parsed)
    return out


def prepare_messages(planner: DocumentPlanner, messages: list[Any]) -> list[Any]:
    """A copy of `messages` whose document parts are parsed documents (DocumentError if bad)."""
    if not has_document_parts(messages):
        return messages
    return _parse_all(planner, messages)


async def prepare_messages_async(planner: DocumentPlanner, messages: list[Any]) -> list[Any]:
    """`prepare_messages` on the document executor; cancelling the caller stops the work."""
    if not has_document_parts(messages):
        return messages
    loop = asyncio.get_running_loop()
    cancel = threading.Event()
    started = time.perf_counter()
    try:
        out, parsed, need_scores = await loop.run_in_executor(
            _document_executor, _parse_parts, planner, messages, cancel
        )
        if need_scores:
            await loop.run_in_executor(_retrieval_executor, _add_scores, planner, parsed, cancel)
    except asyncio.CancelledError:
        cancel.set()  # a queued task is dropped by asyncio, a running one stops at its next check
        metrics().cancelled.inc()
        raise
    meter = metrics()
    meter.plan_seconds.observe(time.perf_counter() - started)
    meter.documents.inc(len(parsed))
    return out


def parsed_documents(messages: list[Any]) -> list[ParsedDocument]:
    """The parsed documents of prepared messages, in order."""
    return [
        part[INTERNAL_PART]
        for message in messages
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, dict) and part.get("type") == INTERNAL_PART
    ]


def landmark_block(documents: list[ParsedDocument], embedder_name: str) -> dict[str, Any]:
    """The response's `landmark` block: per document what the LLM read of it, and why."""
    rows = [d.planned.summary() for d in documents if d.planned is not None]
    return {
        "documents": rows,
        "raw_document_tokens": sum(r["raw_tokens"] for r in rows),
        "injected_document_tokens": sum(r["injected_tokens"] for r in rows),
        "embedder": embedder_name,
    }
