"""Document work in the API server: the plugin's own threads, cancellation, and the request's plans.

Nothing the plugin does with documents runs on the event loop or on vLLM's tokenizer pool
(which requests without documents need): documents are tokenized on `document_executor`,
scored on `retrieval_executor` (one document at a time, on half the cores), and planned there
too. A request whose client goes away stops its work at the next document.

The planned documents of the request being served are a value of the request's own asyncio
context (`request_documents`): the step that plans them sets it, and the chat endpoint (the
response's `landmark` block) and data-parallel routing, later in the same request, read it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any, TypeVar

from ..document.prompt import LAYOUT_KEY, PromptLayout, finish_prompt, to_score
from ..document.reader import DocumentReader, ParsedDocument
from ..planning import PlannedDocument, ScoredSpans
from .metrics import metrics

T = TypeVar("T")

#: Tokenizing and planning documents runs here.
document_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="landmark-documents")


def _limit_retrieval_threads() -> None:
    """Leave a CPU engine in another process at least half the cores.

    Measured on 2 vCPU: two retrievals with torch's default threads starved the engine, and
    plain requests sent meanwhile waited many times longer. One retrieval at a time on half the
    cores served plain requests at once and the documents no later. torch's thread count is
    set in the retrieval thread itself.
    """
    from vllm import envs

    if not envs.VLLM_ENABLE_V1_MULTIPROCESSING:
        return  # the engine runs in this process: leave its threads alone
    import torch

    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, min(torch.get_num_threads(), cores // 2)))


#: Retrieval (the encoder forward over whole documents) runs here, one document at a time.
retrieval_executor = ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="landmark-retrieval", initializer=_limit_retrieval_threads
)

_request_documents: ContextVar[tuple[PlannedDocument, ...]] = ContextVar(
    "landmark_request_documents", default=()
)


def request_documents() -> tuple[PlannedDocument, ...]:
    """The planned documents of the request this asyncio context serves (empty if none)."""
    return _request_documents.get()


def start_request() -> Any:
    """Start a request with no planned documents; returns the token for `end_request`."""
    return _request_documents.set(())


def end_request(token: Any) -> None:
    _request_documents.reset(token)


class PlanningCancelled(Exception):
    """The request went away while its documents were being read; the work was stopped."""


def check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise PlanningCancelled


async def run_cancellable(executor: Executor, work: Callable[[threading.Event], T]) -> T:
    """`work(cancel)` on `executor`; cancelling the caller sets `cancel` (and is counted)."""
    cancel = threading.Event()
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, work, cancel)
    except asyncio.CancelledError:
        cancel.set()  # a queued task is dropped by asyncio, a running one stops at its next check
        metrics().cancelled.inc()
        raise


def score_documents(
    reader: DocumentReader,
    documents: Sequence[ParsedDocument],
    wanted: Sequence[bool],
    cancel: threading.Event | None = None,
) -> list[ScoredSpans | None]:
    """The retriever's scores of each wanted document; `cancel` is checked before each one."""
    out: list[ScoredSpans | None] = []
    for document, want in zip(documents, wanted, strict=True):
        if not want:
            out.append(None)
            continue
        check(cancel)
        started = time.perf_counter()
        out.append(reader.score(document))
        metrics().retrieval_seconds.observe(time.perf_counter() - started)
    return out


async def plan_prompt_async(
    reader: DocumentReader, token_ids: Sequence[int], prompt: dict
) -> tuple[list[int], dict, list[PlannedDocument]]:
    """A laid-out prompt (`document.prompt`) scored where the plan needs it, then planned,
    on the plugin's threads; the planned documents become the request's."""
    started = time.perf_counter()
    layout: PromptLayout = prompt[LAYOUT_KEY]
    wanted = to_score(reader, token_ids, prompt)
    scores: list[ScoredSpans | None] = [None] * len(layout.documents)
    if any(wanted):
        scores = await run_cancellable(
            retrieval_executor,
            lambda cancel: score_documents(reader, layout.documents, wanted, cancel),
        )
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(
        document_executor, finish_prompt, reader, token_ids, prompt, scores
    )
    _request_documents.set(_request_documents.get() + tuple(result[2]))
    meter = metrics()
    meter.plan_seconds.observe(time.perf_counter() - started)
    meter.documents.inc(len(layout.documents))
    return result
