"""Validating and normalising document items, shared by every entry point.

A document item is a string (the text) or a dict with "text" (str) or "token_ids"
(list of LLM token ids, already tokenized), and optionally "factor" (force a scaling
factor for this document) or "plan" (explicit `[start, end, k]` spans over the document's
LLM tokens, in order; tokens outside every span are left out) or "query" (the question the
retriever plans the document for). Everything is checked here,
before any tokenizing, so that bad input gets a message naming the problem.
"""

from __future__ import annotations

from typing import Any

from ..config import ALLOWED_FACTORS, LandmarkConfig


class DocumentError(ValueError):
    """A document cannot be used as given; the message says why."""


class TooMuchDocumentError(DocumentError):
    """A request carries more documents, or more document tokens, than one request may
    (HTTP 413); `reason` is the refusal's metric label."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_document_count(count: int, config: LandmarkConfig) -> None:
    """Raise TooMuchDocumentError when a request carries more documents than allowed."""
    if count > config.max_request_documents:
        raise TooMuchDocumentError(
            f"the request carries {count} documents, over the limit of "
            f"{config.max_request_documents} per request (--landmark-max-request-documents)",
            "too_many_documents",
        )


def check_document_tokens(total: int, config: LandmarkConfig) -> None:
    """Raise TooMuchDocumentError when a request's documents hold more tokens than allowed."""
    if total > config.max_request_document_tokens:
        raise TooMuchDocumentError(
            f"the request's documents hold {total} tokens or more, over the limit of "
            f"{config.max_request_document_tokens} per request "
            "(--landmark-max-request-document-tokens)",
            "too_many_document_tokens",
        )


def normalize_document(item: Any, config: LandmarkConfig) -> dict[str, Any]:
    """Return {"text": str} or {"token_ids": list[int]}, plus "factor" when given."""
    if isinstance(item, str):
        item = {"text": item}
    if not isinstance(item, dict):
        raise DocumentError(
            f"a document must be a string or a dict with 'text' or 'token_ids', "
            f"got {type(item).__name__}"
        )
    unknown = sorted(set(item) - {"text", "token_ids", "factor", "plan", "query"})
    if unknown:
        raise DocumentError(
            f"unknown document fields {unknown}; known: factor, plan, query, text, token_ids"
        )
    if item.get("factor") is not None and item.get("plan") is not None:
        raise DocumentError("give a document either 'factor' or 'plan', not both")
    has_text, has_ids = "text" in item, "token_ids" in item
    if has_text == has_ids:
        raise DocumentError("a document needs exactly one of 'text' and 'token_ids'")
    out: dict[str, Any] = {}
    if has_text:
        out["text"] = check_document_text(item["text"], config)
    else:
        ids = item["token_ids"]
        if not isinstance(ids, (list, tuple)) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids
        ):
            raise DocumentError("'token_ids' must be a list of non-negative integers")
        if not ids:
            raise DocumentError("the document is empty (no token ids)")
        if len(ids) > config.max_document_tokens:
            raise DocumentError(
                f"the document has {len(ids)} tokens, over the limit of "
                f"{config.max_document_tokens} (--landmark-max-document-tokens)"
            )
        out["token_ids"] = list(ids)
    if item.get("factor") is not None:
        factor = item["factor"]
        if factor not in ALLOWED_FACTORS:
            raise DocumentError(
                f"factor={factor!r} is not allowed; choose one of {ALLOWED_FACTORS}"
            )
        out["factor"] = int(factor)
    if item.get("plan") is not None:
        out["plan"] = _check_plan(item["plan"])
    if item.get("query") is not None:
        query = item["query"]
        if not isinstance(query, str) or not query.strip():
            raise DocumentError("'query' must be a non-empty string (the question to plan for)")
        if "factor" in out or "plan" in out:
            raise DocumentError("'query' plans the document: give it without 'factor'/'plan'")
        out["query"] = query
    return out


def _check_plan(plan: Any) -> list[list[int]]:
    """A plan's shape and factors; its bounds are checked once the token count is known."""
    if not isinstance(plan, (list, tuple)) or not plan:
        raise DocumentError("'plan' must be a non-empty list of [start, end, factor]")
    spans: list[list[int]] = []
    previous_end = 0
    for index, span in enumerate(plan):
        if (
            not isinstance(span, (list, tuple))
            or len(span) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in span)
        ):
            raise DocumentError(f"plan[{index}] must be [start, end, factor] integers")
        start, end, factor = span
        if factor not in ALLOWED_FACTORS:
            raise DocumentError(
                f"plan[{index}] factor={factor} is not allowed; choose one of {ALLOWED_FACTORS}"
            )
        if start < previous_end or end <= start:
            raise DocumentError(
                f"plan[{index}] = [{start}, {end}] must be non-empty and start at or after "
                f"the previous span's end ({previous_end})"
            )
        previous_end = end
        spans.append([start, end, factor])
    return spans


def check_document_text(text: Any, config: LandmarkConfig) -> str:
    """The document text if it is usable: a non-blank str within the character limit."""
    if not isinstance(text, str):
        raise DocumentError(f"document text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise DocumentError("the document is empty (no text besides whitespace)")
    if len(text) > config.max_document_chars:
        raise DocumentError(
            f"the document has {len(text)} characters, over the limit of "
            f"{config.max_document_chars} (--landmark-max-document-chars)"
        )
    if "\x00" in text:
        raise DocumentError("the document contains NUL characters: binary data is not text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DocumentError(
            f"the document is not valid Unicode text: a lone surrogate "
            f"(U+{ord(text[exc.start]):04X}) at character {exc.start}"
        ) from exc
    return text
