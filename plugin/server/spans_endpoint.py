"""``POST /v1/landmark/spans``: the ranked spans of a document for a question, with their scores.

A vLLM endpoint plugin (entry point group ``vllm.endpoint_plugins``, loaded by the API server
only, and only when its name is in ``VLLM_PLUGINS``). The retriever is the folder given to the
server with ``--landmark-retriever`` (read from the ``LandmarkConfig`` stored in the model's
Hugging Face config); it is loaded once at start-up. Encodings of documents are cached, so
asking a second question about the same document costs one query forward.

Request::

    {"document": "...", "question": "...", "top_k": 5,
     "span_sentences": [1, 2, 3] | "span_tokens": 128, "weights": [0.4, 0.2, 0.4],
     "allow_overlap": false, "retriever": null}

Response: the spans best first, each with its hybrid score and the dense / lexical /
multi-vector components, its text, character offsets, encoder token offsets and LLM token
offsets (the served model's tokenizer, as the document processor tokenizes). Bad input is a
4xx in vLLM's error format: 400 for an empty document or question, a question over the
encoder limit, a document over ``--landmark-max-document-chars``, bad weights; 404 when the
server has no retriever or the request names another one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from argparse import Namespace
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from ..config import HF_CONFIG_KEY, LandmarkConfig
from ..document.items import DocumentError, check_document_text
from ..retrieval.spans import MAX_SPAN_SENTENCES, SpanRanker, SpanRanking

__all__ = [
    "ROUTE",
    "SpansEndpointPlugin",
    "SpansRequest",
    "SpansResponse",
    "SpansService",
    "router",
]

logger = logging.getLogger(__name__)

ROUTE = "/v1/landmark/spans"
#: Attribute of the app state that holds the :class:`SpansService`.
STATE_KEY = "landmark_spans"


# ----------------------------------------------------------------------------------------------
# Wire format
# ----------------------------------------------------------------------------------------------


class SpansRequest(BaseModel):
    """A document and a question; how to build and rank candidate spans."""

    model_config = ConfigDict(extra="forbid")

    document: str = Field(description="The document text (UTF-8).")
    question: str = Field(
        validation_alias=AliasChoices("question", "query"),
        description="The question the spans are ranked for (alias: query).",
    )
    top_k: int = Field(5, ge=1, le=1000, description="How many spans to return.")
    span_sentences: list[int] | None = Field(
        None,
        min_length=1,
        max_length=16,
        description=f"Candidate runs of consecutive sentences (1..{MAX_SPAN_SENTENCES}); "
        "default [1, 2, 3].",
    )
    span_tokens: int | None = Field(
        None,
        ge=1,
        le=1 << 20,
        description="Instead of span_sentences: from every sentence, the shortest run of at "
        "least this many encoder tokens.",
    )
    weights: list[float] | None = Field(
        None,
        min_length=3,
        max_length=3,
        description="Hybrid weights (dense, sparse, colbert); default the server's.",
    )
    allow_overlap: bool = Field(False, description="Return spans that share sentences.")
    retriever: str | None = Field(
        None, description="Name or path of the retriever; must be the server's own if given."
    )


class SpanOut(BaseModel):
    """One ranked span. Offsets are half-open ``[start, end)``."""

    rank: int
    score: float
    dense: float
    sparse: float | None
    colbert: float | None
    text: str
    start_char: int
    end_char: int
    start_sentence: int
    end_sentence: int
    start_token: int
    end_token: int
    llm_start_token: int | None
    llm_end_token: int | None


class DocumentInfo(BaseModel):
    """How the document was seen."""

    num_chars: int
    num_sentences: int
    num_tokens: int
    llm_num_tokens: int | None
    windows: list[tuple[int, int]]
    cached: bool


class SpansResponse(BaseModel):
    """The ranked spans, best first."""

    object: str = "landmark.spans"
    retriever: str
    model: str | None
    weights: list[float]
    document: DocumentInfo
    spans: list[SpanOut]
    timings: dict[str, float]


# ----------------------------------------------------------------------------------------------
# Service
# ----------------------------------------------------------------------------------------------


def _bad_request(message: str) -> HTTPException:
    return HTTPException(status_code=HTTPStatus.BAD_REQUEST, detail=message)


class SpansService:
    """The loaded retriever of one server, its ranker (with its cache) and the LLM tokenizer."""

    def __init__(
        self,
        config: LandmarkConfig | None,
        *,
        llm_tokenizer: Any = None,
        model_name: str | None = None,
    ) -> None:
        self.config = config or LandmarkConfig(retriever=None)  # no --landmark: no retriever
        self.llm_tokenizer = llm_tokenizer
        self.model_name = model_name
        self.ranker: SpanRanker | None = None
        self.retriever_path: Path | None = None
        # One encoder forward at a time: torch already uses every core for one.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="landmark-spans")
        self._load_lock = threading.Lock()

    @property
    def retriever_name(self) -> str | None:
        return None if self.retriever_path is None else self.retriever_path.name

    def load(self) -> None:
        """Load the retriever named by the config (no-op without one, or when loaded)."""
        with self._load_lock:
            if self.ranker is not None or self.config.retriever is None:
                return
            from ..retrieval.service import get_span_ranker

            # The ranker the chat planner uses too: one encoder in memory, one cache, so a
            # question asked here about a document the chat already saw is a cache hit.
            path = self.config.retriever_folder()
            self.ranker = get_span_ranker(path)
            self.retriever_path = path
            logger.info("landmark spans endpoint: retriever %s loaded", path)

    def _check(self, request: SpansRequest) -> SpanRanker:
        if self.ranker is None or self.retriever_path is None:
            raise HTTPException(
                status_code=HTTPStatus.NOT_FOUND,
                detail="this server has no retriever (it was started with "
                "--landmark-retriever none): start it without that flag for the bundled one, or "
                "with --landmark-retriever DIR (a BGE-M3-layout folder)",
            )
        if request.retriever is not None:
            given = request.retriever.strip()
            known = {self.retriever_name, str(self.retriever_path)}
            try:
                if Path(given).expanduser().resolve() == self.retriever_path.resolve():
                    known.add(given)
            except (OSError, ValueError):
                pass
            if given not in known:
                raise HTTPException(
                    status_code=HTTPStatus.NOT_FOUND,
                    detail=f"unknown retriever {given!r:.200}; this server has "
                    f"{self.retriever_name!r} ({self.retriever_path})",
                )
        try:
            check_document_text(request.document, self.config)
        except DocumentError as exc:
            raise _bad_request(str(exc)) from exc
        if not request.question.strip():
            raise _bad_request("the question is empty (no text besides whitespace)")
        if request.span_sentences is not None and request.span_tokens is not None:
            raise _bad_request("give span_sentences or span_tokens, not both")
        if request.span_sentences is not None:
            bad = [k for k in request.span_sentences if not 1 <= k <= MAX_SPAN_SENTENCES]
            if bad:
                raise _bad_request(
                    f"span_sentences {bad} out of range: runs of 1..{MAX_SPAN_SENTENCES} sentences"
                )
        return self.ranker

    def rank(self, request: SpansRequest) -> SpansResponse:
        """Rank synchronously (runs in the service's worker thread; loads the retriever on
        first use)."""
        self.load()
        ranker = self._check(request)
        try:
            result: SpanRanking = ranker.rank(
                request.document,
                request.question,
                span_sentences=request.span_sentences,
                span_tokens=request.span_tokens,
                top_k=request.top_k,
                allow_overlap=request.allow_overlap,
                weights=request.weights,
                llm_tokenizer=self.llm_tokenizer,
            )
        except (ValueError, TypeError) as exc:
            raise _bad_request(str(exc)) from exc
        weights = ranker.weights if request.weights is None else request.weights
        return SpansResponse(
            retriever=self.retriever_name or "",
            model=self.model_name,
            weights=[float(w) for w in weights],
            document=DocumentInfo(
                num_chars=len(request.document),
                num_sentences=result.num_sentences,
                num_tokens=result.num_tokens,
                llm_num_tokens=result.llm_num_tokens,
                windows=result.windows,
                cached=result.cached,
            ),
            spans=[SpanOut(**span.as_dict()) for span in result.spans],
            timings=result.timings,
        )


# ----------------------------------------------------------------------------------------------
# Route and plugin
# ----------------------------------------------------------------------------------------------

router = APIRouter()


@router.post(ROUTE, response_model=SpansResponse)
async def landmark_spans(body: SpansRequest, raw_request: Request) -> SpansResponse:
    """Rank the spans of ``document`` for ``question``."""
    service: SpansService | None = getattr(raw_request.app.state, STATE_KEY, None)
    if service is None:
        raise HTTPException(
            status_code=HTTPStatus.NOT_FOUND,
            detail="the landmark spans endpoint is not initialised on this server",
        )
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(service.executor, service.rank, body)


def _config_of(engine_client: Any, args: Namespace) -> LandmarkConfig | None:
    """The server's LandmarkConfig: from the model's HF config, else from the flags."""
    hf_config = getattr(getattr(engine_client, "model_config", None), "hf_config", None)
    data = getattr(hf_config, HF_CONFIG_KEY, None) if hf_config is not None else None
    if data:
        return LandmarkConfig.from_dict(data)
    if getattr(args, "landmark", False):
        from ..patches.cli_flags import landmark_config_from_args

        return landmark_config_from_args(args)
    return None


def _llm_tokenizer_of(engine_client: Any) -> Any:
    try:
        tokenizer = engine_client.renderer.get_tokenizer()
    except Exception:  # noqa: BLE001 - no tokenizer (skip_tokenizer_init, render server)
        return None
    try:  # offsets need a fast tokenizer
        tokenizer("a", add_special_tokens=False, return_offsets_mapping=True)
    except Exception:  # noqa: BLE001
        logger.warning("landmark spans endpoint: the LLM tokenizer gives no offsets")
        return None
    return tokenizer


class SpansEndpointPlugin:
    """The ``vllm.endpoint_plugins`` entry point (a zero-argument factory)."""

    name = "landmark"
    required_tasks = None

    def attach_router(self, app: FastAPI) -> None:
        app.include_router(router)

    async def init_state(self, engine_client: Any, state: Any, args: Namespace) -> None:
        config = _config_of(engine_client, args)
        names = getattr(args, "served_model_name", None) or [getattr(args, "model", None)]
        service = SpansService(
            config,
            llm_tokenizer=None if engine_client is None else _llm_tokenizer_of(engine_client),
            model_name=names[0] if isinstance(names, list) else names,
        )
        # A retriever folder named by the flag is loaded now, so a broken one fails at start-up;
        # the bundled default loads on first use (a server whose documents fit never loads it).
        if config is not None and isinstance(config.retriever, Path):
            await asyncio.get_running_loop().run_in_executor(service.executor, service.load)
        setattr(state, STATE_KEY, service)
