"""Documents in chat messages: found, checked and tokenized once, before the chat template.

`prepare_messages` replaces every document content part (`file`, `document`) of a
conversation with an internal part holding its `ParsedDocument`; the chat patch renders that
part as the document's marker, and the documents are scored and planned once the prompt around
them is tokenized (`document.prompt`, `server.document_work`). Requests without documents
pass through untouched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from ..document.items import DocumentError, check_document_count, check_document_tokens
from ..document.marker import new_marker
from ..document.reader import DocumentReader, ParsedDocument
from ..planning import PlannedDocument
from .document_work import check, document_executor, run_cancellable
from .file_parts import DOCUMENT_PART_TYPES, document_from_part

#: Content-part type that carries a ParsedDocument through vLLM's chat parsing.
INTERNAL_PART = "landmark_document"


def count_document_parts(messages: list[Any]) -> int:
    return sum(
        isinstance(part, dict) and part.get("type") in DOCUMENT_PART_TYPES
        for message in messages
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for part in message["content"]
    )


def has_document_parts(messages: list[Any]) -> bool:
    return count_document_parts(messages) > 0


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


def replace_parts(messages: list[Any], replace: Callable[[Any], Any]) -> list[Any]:
    """A copy of `messages` with every content part of list contents passed through `replace`."""
    out = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            message = {**message, "content": [replace(part) for part in content]}
        out.append(message)
    return out


def _parse_parts(
    reader: DocumentReader, messages: list[Any], cancel: threading.Event | None = None
) -> list[Any]:
    """Messages with document parts replaced by internal parts holding the parsed documents.

    `cancel` is checked before each document: once set, the work stops.
    """
    query = last_user_text(messages)
    check_document_count(count_document_parts(messages), reader.config)
    total = 0

    def parse(part: Any) -> Any:
        nonlocal total
        if not (isinstance(part, dict) and part.get("type") in DOCUMENT_PART_TYPES):
            return part
        check(cancel)
        document = reader.parse(document_from_part(part, reader.config), new_marker(), query)
        total += document.num_tokens
        check_document_tokens(total, reader.config)  # stops at the document that crosses it
        return {"type": INTERNAL_PART, INTERNAL_PART: document}

    return replace_parts(messages, parse)


def prepare_messages(reader: DocumentReader, messages: list[Any]) -> list[Any]:
    """A copy of `messages` whose document parts are parsed documents (DocumentError if bad)."""
    if not has_document_parts(messages):
        return messages
    return _parse_parts(reader, messages)


async def prepare_messages_async(reader: DocumentReader, messages: list[Any]) -> list[Any]:
    """`prepare_messages` on the plugin's document threads; cancelling the caller stops it."""
    if not has_document_parts(messages):
        return messages
    return await run_cancellable(
        document_executor, lambda cancel: _parse_parts(reader, messages, cancel)
    )


def parsed_documents(messages: list[Any]) -> list[ParsedDocument]:
    """The parsed documents of prepared messages, in order."""
    return [
        part[INTERNAL_PART]
        for message in messages
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, dict) and part.get("type") == INTERNAL_PART
    ]


def landmark_block(documents: Sequence[PlannedDocument], embedder_name: str) -> dict[str, Any]:
    """The response's `landmark` block: per document what the LLM read of it, and why."""
    rows = [d.summary() for d in documents]
    return {
        "documents": rows,
        "raw_document_tokens": sum(r["raw_tokens"] for r in rows),
        "injected_document_tokens": sum(r["injected_tokens"] for r in rows),
        "embedder": embedder_name,
    }
