"""The proxy server: the plugin's document-aware chat API in front of any OpenAI-compatible API.

Routes:

* ``POST /v1/chat/completions``: documents (``file`` parts, ``document`` parts, the
  ``documents`` field) are read and checked exactly as the plugin's server does
  (:mod:`vllm_landmark.server.file_parts`, :mod:`vllm_landmark.server.chat_documents`); each
  becomes a text part holding the windows :func:`~.selection.select_document` keeps within its
  share of ``budget`` upstream tokens; then the request goes upstream (streaming or not) and the
  answer comes back with a ``landmark`` block (with the last chunk when streaming). A request
  without documents is forwarded untouched.
* ``POST /v1/landmark/spans``: the plugin's span-ranking route
  (:mod:`vllm_landmark.server.spans_endpoint`), LLM offsets in the upstream tokenizer's tokens.
* ``GET /v1/models`` (forwarded), ``GET /health``.

Errors use vLLM's handlers and error type, so a bad document gets the same 400 as from the
plugin's server; an upstream error is passed back with its status and body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from argparse import Namespace
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..config import DEFAULT_RETRIEVER, LandmarkConfig, RetrieverSetting, parse_retriever
from ..document.items import DocumentError
from ..planning import share_room
from ..server.chat_documents import documents_field_to_parts, has_document_parts, last_user_text
from ..server.file_parts import DOCUMENT_PART_TYPES, document_from_part
from ..server.spans_endpoint import STATE_KEY, SpansService
from ..server.spans_endpoint import router as spans_router
from .selection import DocumentSelection, SelectionError, select_document
from .tokenizers import UpstreamTokenizer, load_upstream_tokenizer

logger = logging.getLogger(__name__)

#: Default budget: upstream tokens all documents of one request may take together.
DEFAULT_BUDGET = 4096


@dataclass
class ProxyConfig:
    """What the proxy forwards to and how it selects.

    ``upstream``: base URL of the OpenAI-compatible API (``.../v1``); ``tokenizer``: the upstream
    model's tokenizer (``tiktoken:<encoding>[=<file>]`` or a folder); ``model``: the model name
    sent upstream (default: the request's own); ``api_key``: sent upstream as a bearer token
    (default: the client's ``Authorization`` header is passed on); ``budget``: upstream tokens
    for the documents of one request (shared by water-filling); ``retriever``: DEFAULT_RETRIEVER or
    a BGE-M3-layout folder (None: head and tail instead of retrieval).
    """

    upstream: str
    tokenizer: str
    model: str | None = None
    api_key: str | None = None
    budget: int = DEFAULT_BUDGET
    window_tokens: int | None = None  # None: the planner's size (windows.WINDOW_TOKENS)
    retriever: RetrieverSetting | None = DEFAULT_RETRIEVER
    max_document_chars: int = LandmarkConfig.max_document_chars
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        self.retriever = parse_retriever(self.retriever)  # also the CLI's words: "default", "none"


def _error(message: str) -> Exception:
    from ..document.processor import DocumentValidationError

    return DocumentValidationError(message, parameter="messages")


def _join_text_parts(content: list[Any]) -> Any:
    """A content list of text parts only becomes one string (joined by "\\n", as vLLM does)."""
    if all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "\n".join(str(p.get("text", "")) for p in content)
    return content


class Proxy:
    """The state of one proxy: tokenizer, span service (retriever + cache) and HTTP client."""

    def __init__(self, config: ProxyConfig, tokenizer: UpstreamTokenizer | None = None) -> None:
        self.config = config
        self.tokenizer = tokenizer or load_upstream_tokenizer(config.tokenizer)
        landmark = LandmarkConfig(
            retriever=config.retriever, max_document_chars=config.max_document_chars
        ).with_default_models()
        self.landmark_config = landmark
        self.spans = SpansService(landmark, llm_tokenizer=self.tokenizer, model_name=config.model)
        self.base_url = config.upstream.rstrip("/")
        self.client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.spans.executor, self.spans.load)
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(self.config.timeout_s))

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        self.spans.executor.shutdown(wait=False)

    def headers(self, request: Request) -> dict[str, str]:
        if self.config.api_key:
            return {"Authorization": f"Bearer {self.config.api_key}"}
        given = request.headers.get("authorization")
        return {"Authorization": given} if given else {}

    # ------------------------------------------------------------------------------------------
    # Documents
    # ------------------------------------------------------------------------------------------

    def select(self, messages: list[Any]) -> tuple[list[Any], list[DocumentSelection]]:
        """Messages with every document part replaced by its selected text (worker thread)."""
        question = last_user_text(messages)
        found: list[tuple[int, int, str, str | None]] = []  # message, part, text, query
        for m, message in enumerate(messages):
            content = message.get("content") if isinstance(message, dict) else None
            for p, part in enumerate(content if isinstance(content, list) else []):
                if isinstance(part, dict) and part.get("type") in DOCUMENT_PART_TYPES:
                    item = document_from_part(part, self.landmark_config)
                    if "token_ids" in item:
                        raise DocumentError(
                            "token_ids cannot be sent to an upstream model; send the text"
                        )
                    if item.get("factor", 1) != 1 or "plan" in item:
                        raise DocumentError(
                            "the proxy pastes text (k = 1): 'factor' > 1 and 'plan' need the "
                            "plugin's own server"
                        )
                    found.append((m, p, item["text"], item.get("query", question)))
        lengths = [self.tokenizer.count(text) for _, _, text, _ in found]
        shares = share_room(lengths, self.config.budget, None)
        ranker = self.spans.ranker
        selections = []
        for (_, _, text, query), share in zip(found, shares, strict=True):
            try:
                selections.append(
                    select_document(
                        text,
                        query,
                        share,
                        self.tokenizer,
                        ranker,
                        window_tokens=self.config.window_tokens,
                    )
                )
            except SelectionError as exc:
                raise DocumentError(f"{exc} (--budget {self.config.budget})") from exc
        out = [dict(m) if isinstance(m, dict) else m for m in messages]
        replaced: dict[tuple[int, int], str] = {
            (m, p): s.text for (m, p, _, _), s in zip(found, selections, strict=True)
        }
        for m, message in enumerate(out):
            content = message.get("content") if isinstance(message, dict) else None
            if not isinstance(content, list):
                continue
            parts = [
                {"type": "text", "text": replaced[(m, p)]} if (m, p) in replaced else part
                for p, part in enumerate(content)
            ]
            message["content"] = _join_text_parts(parts)
        return out, selections

    def landmark_block(self, selections: list[DocumentSelection]) -> dict[str, Any]:
        rows = [s.summary() for s in selections]
        return {
            "documents": rows,
            "raw_document_tokens": sum(r["raw_tokens"] for r in rows),
            "injected_document_tokens": sum(r["kept_tokens"] for r in rows),
            "tokenizer": self.tokenizer.name,
            "retriever": self.spans.retriever_name,
        }

    async def prepare(self, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The request to send upstream, and the landmark block (None without documents)."""
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise _error("'messages' must be a list of messages")
        body = dict(body)
        block = None
        try:
            if body.get("documents"):
                messages = documents_field_to_parts(messages, body["documents"])
            body.pop("documents", None)
            if has_document_parts(messages):
                started = time.perf_counter()
                loop = asyncio.get_running_loop()
                messages, selections = await loop.run_in_executor(
                    self.spans.executor, self.select, messages
                )
                block = self.landmark_block(selections)
                block["select_s"] = round(time.perf_counter() - started, 4)
        except DocumentError as exc:
            raise _error(str(exc)) from exc
        body["messages"] = messages
        if self.config.model:
            body["model"] = self.config.model
        return body, block


def _upstream_error(response: httpx.Response, content: bytes) -> Response:
    """The upstream's error, passed back as it came."""
    media = response.headers.get("content-type", "application/json")
    return Response(content=content, status_code=response.status_code, media_type=media)


def _with_block(event: str, block: dict[str, Any]) -> str:
    """An SSE ``data:`` event with the landmark block added to its JSON."""
    payload = json.loads(event[len("data:") :])
    payload["landmark"] = block
    return "data: " + json.dumps(payload)


async def _relay(response: httpx.Response, block: dict[str, Any] | None) -> AsyncIterator[bytes]:
    """Server-sent events from upstream; the landmark block rides on the last data chunk."""
    held: str | None = None  # the latest JSON data event, sent once the next one arrives
    try:
        async for line in response.aiter_lines():
            if not line.startswith("data:") or block is None:
                yield (line + "\n").encode()
                continue
            if line[len("data:") :].strip() == "[DONE]":
                if held is not None:
                    yield (_with_block(held, block) + "\n\n").encode()
                    held = None
                yield (line + "\n\n").encode()
                continue
            if held is not None:
                yield (held + "\n\n").encode()
            held = line
        if held is not None:
            yield (_with_block(held, block) + "\n\n").encode()
    finally:
        await response.aclose()


def create_app(config: ProxyConfig, tokenizer: UpstreamTokenizer | None = None) -> FastAPI:
    """The proxy's FastAPI app (loads tokenizer now, the retriever at start-up)."""
    from vllm.entrypoints.serve.exception_handling.register import init_exception_handler

    proxy = Proxy(config, tokenizer)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await proxy.start()
        setattr(app.state, STATE_KEY, proxy.spans)
        yield
        await proxy.stop()

    app = FastAPI(title="vllm-landmark proxy", lifespan=lifespan)
    app.state.args = Namespace(log_error_stack=False)  # read by vLLM's error handlers
    app.state.proxy = proxy
    init_exception_handler(app)
    app.include_router(spans_router)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        assert proxy.client is not None
        response = await proxy.client.get(
            f"{proxy.base_url}/models", headers=proxy.headers(request)
        )
        return _upstream_error(response, response.content)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        assert proxy.client is not None
        try:
            body = await request.json()
        except ValueError as exc:
            raise _error(f"the request body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise _error("the request body must be a JSON object")
        upstream_body, block = await proxy.prepare(body)
        url = f"{proxy.base_url}/chat/completions"
        headers = proxy.headers(request)
        if not upstream_body.get("stream"):
            response = await proxy.client.post(url, json=upstream_body, headers=headers)
            if response.status_code != 200 or block is None:
                return _upstream_error(response, response.content)
            payload = response.json()
            payload["landmark"] = block
            return JSONResponse(payload)
        sent = proxy.client.build_request("POST", url, json=upstream_body, headers=headers)
        response = await proxy.client.send(sent, stream=True)
        if response.status_code != 200:
            content = await response.aread()
            await response.aclose()
            return _upstream_error(response, content)
        return StreamingResponse(_relay(response, block), media_type="text/event-stream")

    return app


def run_proxy(config: ProxyConfig, host: str = "127.0.0.1", port: int = 8001) -> None:
    """Serve the proxy with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(config), host=host, port=port, log_level="info")
