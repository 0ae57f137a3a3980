"""Prometheus metrics of the plugin, on vLLM's ``/metrics`` (API-server process).

vLLM exposes the default ``prometheus_client`` registry on ``/metrics``; these metrics are
registered there once per process, named in vLLM's style (``vllm:`` prefix). Gauges of the
encoding cache and the file store are read when ``/metrics`` is scraped.

- ``vllm:landmark_documents_total``: documents received in chat requests (read and checked).
- ``vllm:landmark_document_raw_tokens_total`` / ``..._injected_tokens_total``: LLM tokens of
  the documents vs the positions the LLM read for them.
- ``vllm:landmark_document_factor``: histogram of each planned span's scaling factor k.
- ``vllm:landmark_plan_seconds``: time to score (when the plan needs it) and plan one prompt's
  documents, once the prompt around them is tokenized.
- ``vllm:landmark_retrieval_seconds``: retriever time per document (encoding on a cache
  miss, query forward and span scoring).
- ``vllm:landmark_encoding_cache_hits_total`` / ``_misses_total`` / ``_bytes``: the
  retriever's document-encoding cache.
- ``vllm:landmark_file_store_bytes`` / ``vllm:landmark_file_store_files``: the Files API store.
- ``vllm:landmark_requests_refused_total{reason}``: requests refused by the plugin.
- ``vllm:landmark_requests_cancelled_total``: document requests whose client left during
  planning (their planning work was stopped).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "LandmarkMetrics",
    "metrics",
    "record_documents",
    "watch_encoding_caches",
    "watch_file_store",
]

#: Refusal reasons (label values of vllm:landmark_requests_refused_total).
REFUSAL_REASONS = (
    "invalid_document",
    "file_not_found",
    "store_full",
    "too_large",
    "too_many_documents",
    "too_many_document_tokens",
    "unsupported_media_type",
    "bad_upload",
)


@dataclass
class LandmarkMetrics:
    """The plugin's metric objects (one set per process)."""

    documents: Any
    raw_tokens: Any
    injected_tokens: Any
    factor: Any
    plan_seconds: Any
    retrieval_seconds: Any
    refused: Any
    cancelled: Any

    def refuse(self, reason: str) -> None:
        self.refused.labels(reason=reason).inc()


_lock = threading.Lock()
_metrics: LandmarkMetrics | None = None
_gauges: dict[str, Callable[[], float]] = {}


class _GaugeCollector:
    """Gauges read at scrape time from functions registered by name."""

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with _lock:
            readers = dict(_gauges)
        for name, read in sorted(readers.items()):
            try:
                value = float(read())
            except Exception:  # noqa: BLE001 - a scrape must not fail on one reader
                continue
            if name.endswith("_total"):
                yield CounterMetricFamily(name.removesuffix("_total"), _HELP[name], value=value)
            else:
                yield GaugeMetricFamily(name, _HELP[name], value=value)


_HELP = {
    "vllm:landmark_encoding_cache_hits_total": "Retriever document-encoding cache hits.",
    "vllm:landmark_encoding_cache_misses_total": "Retriever document-encoding cache misses.",
    "vllm:landmark_encoding_cache_bytes": "Bytes held by the retriever's encoding cache.",
    "vllm:landmark_file_store_bytes": "Bytes of text held by the Files API store.",
    "vllm:landmark_file_store_files": "Files held by the Files API store.",
}


def metrics() -> LandmarkMetrics:
    """The process's metrics, registered in the default registry on first use."""
    global _metrics
    with _lock:
        if _metrics is not None:
            return _metrics
        from prometheus_client import REGISTRY, Counter, Histogram

        _metrics = LandmarkMetrics(
            documents=Counter("vllm:landmark_documents", "Documents received in chat requests."),
            raw_tokens=Counter(
                "vllm:landmark_document_raw_tokens", "LLM tokens of the documents received."
            ),
            injected_tokens=Counter(
                "vllm:landmark_document_injected_tokens",
                "Prompt positions the LLM read for the documents (raw + soft tokens).",
            ),
            factor=Histogram(
                "vllm:landmark_document_factor",
                "Scaling factor k of each planned document span.",
                buckets=(1, 2, 4, 8, 16, 32),
            ),
            plan_seconds=Histogram(
                "vllm:landmark_plan_seconds",
                "Seconds to score and plan the documents of one prompt.",
                buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            ),
            retrieval_seconds=Histogram(
                "vllm:landmark_retrieval_seconds",
                "Retriever seconds per document (encoding on a cache miss, query, scoring).",
                buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            ),
            refused=Counter(
                "vllm:landmark_requests_refused",
                "Requests the plugin refused, by reason.",
                labelnames=["reason"],
            ),
            cancelled=Counter(
                "vllm:landmark_requests_cancelled",
                "Document requests whose client disconnected during planning.",
            ),
        )
        for reason in REFUSAL_REASONS:
            _metrics.refused.labels(reason=reason)
        REGISTRY.register(_GaugeCollector())
        return _metrics


def _watch(readers: dict[str, Callable[[], float]]) -> None:
    metrics()
    with _lock:
        _gauges.update(readers)


def watch_encoding_caches() -> None:
    """Report the retrievers' EncodingCaches (every loaded ranker's ``stats()``) on /metrics;
    a retriever loaded later is counted from then on."""
    from ..retrieval.service import loaded_span_rankers

    def total(field: str) -> Callable[[], float]:
        return lambda: float(sum(getattr(r.cache.stats(), field) for r in loaded_span_rankers()))

    _watch(
        {
            "vllm:landmark_encoding_cache_hits_total": total("hits"),
            "vllm:landmark_encoding_cache_misses_total": total("misses"),
            "vllm:landmark_encoding_cache_bytes": total("bytes"),
        }
    )


def watch_file_store(store: Any) -> None:
    """Report a FileStore's bytes and file count on /metrics."""
    _watch(
        {
            "vllm:landmark_file_store_bytes": lambda: store.nbytes,
            "vllm:landmark_file_store_files": lambda: len(store),
        }
    )


def record_documents(documents: Sequence[Any]) -> None:
    """Count the planned documents of one answered request (`PlannedDocument` objects)."""
    meter = metrics()
    for planned in documents:
        meter.raw_tokens.inc(len(planned.token_ids))
        meter.injected_tokens.inc(planned.plan.soft_tokens)
        for span in planned.plan.spans:
            meter.factor.observe(span.factor)
