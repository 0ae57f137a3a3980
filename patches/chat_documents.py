"""Patch: documents in chat requests (OpenAI `file` parts, `document` parts, `documents`).

Targets vLLM 0.32.x (`vllm/renderers/chat_utils.py`, `renderers/online_renderer.py`,
`entrypoints/openai/chat_completion/serving.py`). vLLM rejects `file` parts
("Unsupported chat content part type") and its item resolver drops modalities it does not
know; both are module-level functions looked up by name at call time, so wrapping them is
enough. Also turns the request's `documents` field into document parts of the last user
message, and adds the `landmark` block (raw vs injected tokens) to chat responses.
Only the API-server process needs it; it is harmless elsewhere.
"""

from __future__ import annotations

import asyncio
import functools
from contextvars import ContextVar
from typing import Any

from vllm_landmark.config import HF_CONFIG_KEY
from vllm_landmark.document import MODALITY
from vllm_landmark.document.items import DocumentError

TARGET_VLLM = ("0.32",)
_APPLIED_FLAG = "_vllm_landmark_patched"

#: The question of the request being rendered (text of its last user message).
_request_query: ContextVar[str | None] = ContextVar("landmark_request_query", default=None)

#: Documents parsed while rendering the current request: (processing info, item) pairs.
_request_documents: ContextVar[list[tuple[Any, dict]] | None] = ContextVar(
    "landmark_request_documents", default=None
)


_placeholder_tokens: dict[int, str] = {}


def _placeholder_token(tracker: Any) -> str:
    """The document placeholder of the tracker's model (computed once per model config)."""
    key = id(tracker.model_config)
    if key not in _placeholder_tokens:
        _placeholder_tokens[key] = tracker.mm_processor.info.placeholder.token
    return _placeholder_tokens[key]


def _landmark_enabled(model_config: Any) -> bool:
    return getattr(model_config.hf_config, HF_CONFIG_KEY, None) is not None


def _validation_error(message: str) -> Exception:
    from vllm_landmark.document.processor import DocumentValidationError

    return DocumentValidationError(message, parameter="messages")


def _wrap_part_parser(original: Any) -> Any:
    from vllm.renderers import chat_utils

    @functools.wraps(original)
    def parse_part(part: Any, mm_parser: Any, *, wrap_dicts: bool, interleave_strings: bool):
        from vllm_landmark.server.file_parts import DOCUMENT_PART_TYPES, document_from_part

        tracker = getattr(mm_parser, "_tracker", None)
        model_config = mm_parser.model_config
        part_type = part.get("type") if isinstance(part, dict) else None
        if part_type not in DOCUMENT_PART_TYPES:
            if tracker is not None and _landmark_enabled(model_config):
                text = part if isinstance(part, str) else (part or {}).get("text")
                token = _placeholder_token(tracker)
                if isinstance(text, str) and token in text:
                    raise _validation_error(
                        f"message text contains {token!r}, the token reserved for documents"
                    )
            return original(
                part, mm_parser, wrap_dicts=wrap_dicts, interleave_strings=interleave_strings
            )
        if tracker is None or not _landmark_enabled(model_config):
            raise _validation_error(
                f"'{part_type}' content parts need the vllm-landmark plugin enabled for this "
                "model: start the server with --landmark"
            )
        info = tracker.mm_processor.info
        try:
            item = document_from_part(part, info.landmark_config)
        except DocumentError as exc:
            raise _validation_error(str(exc)) from exc
        uuid = part.get("uuid")
        query = _request_query.get()
        collected = _request_documents.get()
        if isinstance(tracker, chat_utils.AsyncMultiModalItemTracker):

            async def resolved(item: dict = item) -> tuple[object, str | None]:
                # Retrieval runs off the event loop; the plan it writes keys vLLM's caches.
                loop = asyncio.get_running_loop()
                planned = await loop.run_in_executor(None, info.plan_item, item, query)
                if collected is not None:
                    collected.append((info, planned))
                return planned, uuid

            tracker.add(MODALITY, resolved)
        else:
            planned = info.plan_item(item, query)
            tracker.add(MODALITY, (planned, uuid))
            if collected is not None:
                collected.append((info, planned))
        placeholder = info.placeholder.token
        return {"type": "text", "text": placeholder} if wrap_dicts else placeholder

    return parse_part


def _wrap_resolve_items(original: Any) -> Any:
    @functools.wraps(original)
    def resolve_items(items_by_modality: dict, mm_processor: Any, modality_order: Any):
        items_by_modality = dict(items_by_modality)
        documents = items_by_modality.pop(MODALITY, None)
        mm_data, mm_uuids = original(items_by_modality, mm_processor, modality_order)
        if documents:
            mm_data[MODALITY] = [data for data, _uuid in documents]
            mm_uuids[MODALITY] = [uuid for _data, uuid in documents]
        return mm_data, mm_uuids

    return resolve_items


def documents_field_to_parts(messages: list[Any], documents: list[Any]) -> list[Any]:
    """Messages with the request's `documents` put at the start of the last user message.

    Most chat templates (ChatML, Llama 3) do not render `documents`; placing them as parts
    keeps them visible to every model, at a defined place, right before the question.
    """
    parts: list[dict[str, Any]] = []
    for index, doc in enumerate(documents):
        if not isinstance(doc, dict):
            raise _validation_error(f"documents[{index}] must be an object with 'text'")
        text = doc.get("text", doc.get("content"))
        if not isinstance(text, str):
            raise _validation_error(f"documents[{index}] needs a 'text' string")
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
    raise _validation_error("the request has 'documents' but no user message to attach them to")


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


def _wrap_render_chat(original: Any) -> Any:
    @functools.wraps(original)
    async def render_chat(self: Any, request: Any, *args: Any, **kwargs: Any):
        if not _landmark_enabled(self.model_config):
            return await original(self, request, *args, **kwargs)
        if request.documents:
            request.messages = documents_field_to_parts(request.messages, request.documents)
            request.documents = None
        token = _request_query.set(last_user_text(request.messages))
        try:
            return await original(self, request, *args, **kwargs)
        finally:
            _request_query.reset(token)

    return render_chat


def _wrap_create_chat_completion(original: Any) -> Any:
    @functools.wraps(original)
    async def create_chat_completion(self: Any, request: Any, *args: Any, **kwargs: Any):
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionResponse

        from vllm_landmark.server.report import landmark_block

        collected: list[tuple[Any, dict]] = []
        token = _request_documents.set(collected)
        try:
            result = await original(self, request, *args, **kwargs)
        finally:
            _request_documents.reset(token)
        if not collected:
            return result
        block = landmark_block(collected[0][0], [item for _info, item in collected])
        if isinstance(result, ChatCompletionResponse):
            result.landmark = block
            return result
        if hasattr(result, "__aiter__"):
            return _stream_with_block(result, block)
        return result

    return create_chat_completion


async def _stream_with_block(stream: Any, block: dict[str, Any]) -> Any:
    """Pass a chat stream through, adding the landmark block to its last data chunk."""
    import json

    pending: str | None = None
    async for chunk in stream:
        if isinstance(chunk, str) and chunk.startswith("data: [DONE]") and pending is not None:
            body = pending[len("data: ") :].strip()
            try:
                data = json.loads(body)
                data["landmark"] = block
                pending = f"data: {json.dumps(data)}\n\n"
            except ValueError:
                pass  # not a JSON chunk (an error event): leave it as it is
        if pending is not None:
            yield pending
        pending = chunk if isinstance(chunk, str) and chunk.startswith("data: ") else None
        if pending is None:
            yield chunk
    if pending is not None:
        yield pending


def apply() -> None:
    """Install the wrappers once per process."""
    from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
    from vllm.renderers import chat_utils
    from vllm.renderers.online_renderer import OnlineRenderer

    if getattr(chat_utils, _APPLIED_FLAG, False):
        return
    chat_utils._parse_chat_message_content_part = _wrap_part_parser(
        chat_utils._parse_chat_message_content_part
    )
    chat_utils._resolve_items = _wrap_resolve_items(chat_utils._resolve_items)
    OnlineRenderer.render_chat = _wrap_render_chat(OnlineRenderer.render_chat)
    OpenAIServingChat.create_chat_completion = _wrap_create_chat_completion(
        OpenAIServingChat.create_chat_completion
    )
    setattr(chat_utils, _APPLIED_FLAG, True)
