"""The `landmark` block of a chat response: raw vs injected document tokens."""

from __future__ import annotations

from typing import Any


def landmark_block(info: Any, documents: list[dict[str, Any]]) -> dict[str, Any]:
    """Per document: raw LLM tokens, the tokens kept, the factors used, soft tokens injected.

    `info` is the DocumentProcessingInfo that processed the request; tokenization is cached,
    so this costs no second pass over the documents.
    """
    rows = []
    for item in documents:
        token_ids = info.document_token_ids(item)
        plan = info.document_plan(item, token_ids)
        factors = sorted({span.factor for span in plan.spans})
        rows.append(
            {
                "raw_tokens": len(token_ids),
                "kept_tokens": plan.kept_tokens,
                "factors": factors,
                "spans": len(plan.spans),
                "injected_tokens": plan.soft_tokens,
            }
        )
    return {
        "documents": rows,
        "raw_document_tokens": sum(r["raw_tokens"] for r in rows),
        "injected_document_tokens": sum(r["injected_tokens"] for r in rows),
        "embedder": info.embedder.name,
    }
