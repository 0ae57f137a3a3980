"""The `landmark` block of a chat response: raw vs injected document tokens."""

from __future__ import annotations

from typing import Any

from ..compression.factors import num_soft_tokens


def landmark_block(info: Any, documents: list[dict[str, Any]]) -> dict[str, Any]:
    """Per document: raw LLM tokens, the factor used and the soft tokens injected.

    `info` is the DocumentProcessingInfo that processed the request; it caches tokenization,
    so this costs no second pass over the documents.
    """
    rows = []
    for item in documents:
        raw = len(info.document_token_ids(item))
        factor = info.document_factor(item, raw)
        rows.append(
            {"raw_tokens": raw, "factor": factor, "injected_tokens": num_soft_tokens(raw, factor)}
        )
    return {
        "documents": rows,
        "raw_document_tokens": sum(r["raw_tokens"] for r in rows),
        "injected_document_tokens": sum(r["injected_tokens"] for r in rows),
        "embedder": info.landmark_config.embedder,
    }
