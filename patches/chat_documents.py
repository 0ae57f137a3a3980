"""Patch: documents in chat requests (OpenAI `file` parts, `document` parts, `documents`).

Targets vLLM 0.32.x (`vllm/renderers/chat_utils.py`, `renderers/base.py`,
`renderers/online_renderer.py`, `entrypoints/openai/chat_completion/serving.py`).
vLLM rejects `file` parts ("Unsupported chat content part type") and its item resolver drops
modalities it does not know; both are module-level functions looked up by name at call time,
so wrapping them is enough. Before the chat template runs, every document part is parsed and
tokenized once (`vllm_landmark.server.chat_documents`) and stands in the prompt as its
marker; the request's `documents` field becomes document parts of the last user message; chat
responses get the `landmark` block (what the LLM read of each document, and why: the
request's planned documents, `server.document_work.request_documents`). Under data
parallelism a chat request with documents names its engine by their content
(`vllm_landmark.server.affinity`), unless the caller sent `X-data-parallel-rank`.
Only the API-server process needs it; it is harmless elsewhere.
"""

from __future__ import annotations

import functools
import json
from contextvars import ContextVar
from http import HTTPStatus
from typing import Any

from vllm_landmark.config import HF_CONFIG_KEY
from vllm_landmark.document import MODALITY
from vllm_landmark.document.items import DocumentError, TooMuchDocumentError
from vllm_landmark.server.metrics import metrics, record_documents

from .targets import Target, check_targets

TARGET_VLLM = ("0.32",)
TARGETS = (
    Target(
        "vllm.renderers.chat_utils",
        "_parse_chat_message_content_part",
        ("part", "mm_parser", "wrap_dicts", "interleave_strings"),
    ),
    Target(
        "vllm.renderers.chat_utils",
        "_resolve_items",
        ("items_by_modality", "mm_processor", "modality_order"),
    ),
    Target("vllm.renderers.chat_utils", "AsyncMultiModalItemTracker"),
    Target("vllm.renderers.base", "BaseRenderer.render_chat", ("conversations", "chat_params")),
    Target("vllm.renderers.base", "BaseRenderer.get_mm_processor"),
    Target("vllm.renderers.online_renderer", "OnlineRenderer.render_chat", ("request",)),
    Target(
        "vllm.renderers.online_renderer",
        "OnlineRenderer.create_error_response",
        ("message", "err_type", "status_code", "param"),
    ),
    Target(
        "vllm.entrypoints.openai.chat_completion.serving",
        "OpenAIServingChat.create_chat_completion",
        ("request",),
    ),
    Target("vllm.entrypoints.openai.chat_completion.protocol", "ChatCompletionResponse"),
    Target(
        "vllm.entrypoints.openai.chat_completion.serving",
        "OpenAIServingChat._get_data_parallel_rank",
        ("raw_request",),
    ),
)
_APPLIED_FLAG = "_vllm_landmark_patched"


def _landmark_enabled(model_config: Any) -> bool:
    return getattr(model_config.hf_config, HF_CONFIG_KEY, None) is not None


def _validation_error(message: str) -> Exception:
    from vllm_landmark.document.processor import DocumentValidationError

    return DocumentValidationError(message, parameter="messages")


def _wrap_part_parser(original: Any) -> Any:
    from vllm.renderers import chat_utils

    from vllm_landmark.server.chat_documents import INTERNAL_PART
    from vllm_landmark.server.file_parts import DOCUMENT_PART_TYPES

    @functools.wraps(original)
    def parse_part(part: Any, mm_parser: Any, *, wrap_dicts: bool, interleave_strings: bool):
        part_type = part.get("type") if isinstance(part, dict) else None
        if part_type in DOCUMENT_PART_TYPES:
            # Prepared requests hold no such part: the plugin is not enabled for this model.
            raise _validation_error(
                f"'{part_type}' content parts need the vllm-landmark plugin enabled for this "
                "model: start the server with --landmark"
            )
        if part_type != INTERNAL_PART:
            return original(
                part, mm_parser, wrap_dicts=wrap_dicts, interleave_strings=interleave_strings
            )
        document = part[INTERNAL_PART]
        tracker = mm_parser._tracker
        if isinstance(tracker, chat_utils.AsyncMultiModalItemTracker):

            async def resolved() -> tuple[object, None]:
                return document, None

            tracker.add(MODALITY, resolved)
        else:
            tracker.add(MODALITY, (document, None))
        return {"type": "text", "text": document.marker} if wrap_dicts else document.marker

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


def _reader(renderer: Any) -> Any:
    return renderer.get_mm_processor().info.reader


def _wrap_render_chat_offline(original: Any) -> Any:
    """`LLM.chat`: parse the documents of each conversation (on copies of the messages)."""

    @functools.wraps(original)
    def render_chat(self: Any, conversations: Any, chat_params: Any, *args: Any, **kwargs: Any):
        from vllm_landmark.server.chat_documents import has_document_parts, prepare_messages

        if _landmark_enabled(self.model_config) and any(map(has_document_parts, conversations)):
            try:
                conversations = [prepare_messages(_reader(self), c) for c in conversations]
            except DocumentError as exc:
                raise _validation_error(str(exc)) from exc
        return original(self, conversations, chat_params, *args, **kwargs)

    return render_chat


def _wrap_render_chat_online(original: Any) -> Any:
    """The API server: `documents` to parts, then parse the documents off the event loop."""

    @functools.wraps(original)
    async def render_chat(self: Any, request: Any, *args: Any, **kwargs: Any):
        from vllm_landmark.server.chat_documents import (
            documents_field_to_parts,
            has_document_parts,
            prepare_messages_async,
        )

        if not _landmark_enabled(self.model_config):
            return await original(self, request, *args, **kwargs)
        try:
            if request.documents:
                request.messages = documents_field_to_parts(request.messages, request.documents)
                request.documents = None
            if has_document_parts(request.messages):
                reader = _reader(self.renderer)
                request.messages = await prepare_messages_async(reader, request.messages)
        except TooMuchDocumentError as exc:
            metrics().refuse(exc.reason)
            return self.create_error_response(
                str(exc),
                err_type="RequestEntityTooLargeError",
                status_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                param="messages",
            )
        except DocumentError as exc:
            metrics().refuse("invalid_document")
            raise _validation_error(str(exc)) from exc
        return await original(self, request, *args, **kwargs)

    return render_chat


#: The data-parallel ranks a chat request with documents may be routed among (this request's).
_routable_ranks: ContextVar[int] = ContextVar("landmark_routable_ranks", default=1)


def _wrap_create_chat_completion(original: Any) -> Any:
    @functools.wraps(original)
    async def create_chat_completion(self: Any, request: Any, *args: Any, **kwargs: Any):
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionResponse

        from vllm_landmark.server.affinity import routable_ranks
        from vllm_landmark.server.chat_documents import landmark_block
        from vllm_landmark.server.document_work import end_request, request_documents, start_request
        from vllm_landmark.server.files_api import has_file_ids, resolve_file_ids

        if not _landmark_enabled(self.model_config):
            return await original(self, request, *args, **kwargs)
        raw_request = args[0] if args else kwargs.get("raw_request")
        if raw_request is not None and has_file_ids(request.messages):
            try:  # the caller's stored files (its API key decides which it may read)
                request.messages = resolve_file_ids(request.messages, raw_request)
            except DocumentError as exc:
                metrics().refuse("file_not_found")
                return self.create_error_response(_validation_error(str(exc)))
        started = start_request()
        ranks = _routable_ranks.set(routable_ranks(self.engine_client.vllm_config.parallel_config))
        try:
            result = await original(self, request, *args, **kwargs)
            documents = request_documents()
        finally:
            _routable_ranks.reset(ranks)
            end_request(started)
        if not documents:
            return result
        record_documents(documents)
        block = landmark_block(documents, self.renderer.get_mm_processor().info.embedder.name)
        if isinstance(result, ChatCompletionResponse):
            result.landmark = block
            return result
        if hasattr(result, "__aiter__"):
            return stream_with_block(result, block)
        return result

    return create_chat_completion


def _wrap_data_parallel_rank(original: Any) -> Any:
    """The caller's `X-data-parallel-rank` if any, else the engine its documents' content names.

    vLLM reads the rank after rendering the request, so its documents are planned by then.
    """

    @functools.wraps(original)
    def get_data_parallel_rank(raw_request: Any) -> int | None:
        rank = original(raw_request)
        ranks = _routable_ranks.get()
        if rank is not None or ranks <= 1:
            return rank
        from vllm_landmark.server.affinity import affinity_rank
        from vllm_landmark.server.document_work import request_documents

        documents = request_documents()
        if not documents:
            return None
        return affinity_rank([document.token_ids for document in documents], ranks)

    return get_data_parallel_rank


async def stream_with_block(stream: Any, block: dict[str, Any]) -> Any:
    """Pass a chat stream through, adding the landmark block to its last data chunk."""
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
    """Check the targets, then install the wrappers once per process."""
    check_targets(__name__, TARGET_VLLM, TARGETS)
    from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
    from vllm.renderers import chat_utils
    from vllm.renderers.base import BaseRenderer
    from vllm.renderers.online_renderer import OnlineRenderer

    if getattr(chat_utils, _APPLIED_FLAG, False):
        return
    chat_utils._parse_chat_message_content_part = _wrap_part_parser(
        chat_utils._parse_chat_message_content_part
    )
    chat_utils._resolve_items = _wrap_resolve_items(chat_utils._resolve_items)
    BaseRenderer.render_chat = _wrap_render_chat_offline(BaseRenderer.render_chat)
    OnlineRenderer.render_chat = _wrap_render_chat_online(OnlineRenderer.render_chat)
    OpenAIServingChat.create_chat_completion = _wrap_create_chat_completion(
        OpenAIServingChat.create_chat_completion
    )
    OpenAIServingChat._get_data_parallel_rank = staticmethod(
        _wrap_data_parallel_rank(OpenAIServingChat._get_data_parallel_rank)
    )
    setattr(chat_utils, _APPLIED_FLAG, True)
