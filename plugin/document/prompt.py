"""A prompt that holds documents: tokenized around them, then planned, then pasted or injected.

Two steps, each returning values:
1. `tokenize_around_documents` (tokenization only, run where vLLM tokenizes prompts): the
   prompt text is split at each document's marker (`marker.split_at_markers`) and tokenized
   piece by piece, which gives each document an insertion index rather than a token. The
   result carries a `PromptLayout` (documents, pieces, positions, the answer's reserve).
2. `finish_prompt` (after the retriever's scores, on the plugin's own threads): the documents
   are planned (`DocumentReader.plan`, i.e. `planning.plan_prompt`); a document read whole at
   k=1 is pasted into the text (token-identical to pasting it, whatever the tokenizer), the
   others replace the raw items as `PlannedDocument`s keyed for vLLM's caches by (document,
   plan). `plan_tokenized_prompt` runs both halves of step 2 in the caller's thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..planning import PlannedDocument, ScoredSpans
from . import MODALITY
from .items import check_document_count, check_document_tokens, normalize_document
from .marker import DOCUMENT_MARKER, split_at_markers
from .reader import DocumentReader, ParsedDocument

#: Key of a tokenized prompt that holds documents not yet planned.
LAYOUT_KEY = "landmark_layout"


@dataclass(frozen=True)
class PromptLayout:
    """A tokenized prompt's documents before planning: what `finish_prompt` needs.

    pieces: the prompt text around the documents (one more than documents); positions: the
    insertion index of each document in the text's tokens; max_output_tokens: the request's
    (0: not given).
    """

    documents: tuple[ParsedDocument, ...]
    pieces: tuple[str, ...]
    positions: tuple[int, ...]
    encode_kwargs: dict[str, Any]
    max_output_tokens: int


def has_documents(prompt: Any) -> bool:
    mm_data = prompt.get("multi_modal_data") if isinstance(prompt, dict) else None
    return bool(mm_data and mm_data.get(MODALITY))


def has_layout(prompt: Any) -> bool:
    return isinstance(prompt, dict) and LAYOUT_KEY in prompt


def tokenize_around_documents(
    reader: DocumentReader, prompt: dict, encode_kwargs: dict[str, Any], max_output_tokens: int
) -> tuple[list[int], dict]:
    """(token ids of the text around the documents, the prompt with its `PromptLayout`).

    Offline items (text, dicts) are parsed here; chat requests bring `ParsedDocument`s.
    """
    raw = prompt["multi_modal_data"][MODALITY]
    raw = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    check_document_count(len(raw), reader.config)
    documents = tuple(
        item
        if isinstance(item, ParsedDocument)
        else reader.parse(normalize_document(item, reader.config), DOCUMENT_MARKER)
        for item in raw
    )
    check_document_tokens(sum(d.num_tokens for d in documents), reader.config)
    pieces = split_at_markers(prompt["prompt"], [d.marker for d in documents])
    token_ids, positions = reader.segments.encode(pieces, encode_kwargs)
    layout = PromptLayout(
        documents,
        tuple(pieces),
        tuple(positions),
        dict(encode_kwargs),
        max_output_tokens,
    )
    return token_ids, {**prompt, LAYOUT_KEY: layout}


def to_score(reader: DocumentReader, token_ids: Sequence[int], prompt: dict) -> list[bool]:
    """Which of the prompt's documents need the retriever's scores (exact)."""
    layout: PromptLayout = prompt[LAYOUT_KEY]
    return reader.to_score(
        layout.documents, layout.positions, len(token_ids), layout.max_output_tokens
    )


def finish_prompt(
    reader: DocumentReader,
    token_ids: Sequence[int],
    prompt: dict,
    scores: Sequence[ScoredSpans | None] | None = None,
) -> tuple[list[int], dict, list[PlannedDocument]]:
    """(token ids, prompt with planned documents, every document's plan) for a laid-out prompt.

    Raises `DocumentError` when the documents cannot be planned.
    """
    layout: PromptLayout = prompt[LAYOUT_KEY]
    documents = layout.documents
    planned = reader.plan(
        documents, layout.positions, len(token_ids), layout.max_output_tokens, scores
    )
    token_ids = list(token_ids)
    pasted = [reader.can_paste(d, p) for d, p in zip(documents, planned, strict=True)]
    if any(pasted):
        merged = [layout.pieces[0]]
        for document, piece, paste in zip(documents, layout.pieces[1:], pasted, strict=True):
            if paste:
                merged[-1] += document.text + piece
            else:
                merged.append(piece)
        token_ids, positions = reader.segments.encode(merged, layout.encode_kwargs)
        injected_at = iter(positions)
        planned = [
            p if paste else replace(p, position=next(injected_at))
            for p, paste in zip(planned, pasted, strict=True)
        ]
    injected = [p for p, paste in zip(planned, pasted, strict=True) if not paste]
    mm_data = {k: v for k, v in prompt["multi_modal_data"].items() if k != MODALITY}
    uuids = {k: v for k, v in (prompt.get("multi_modal_uuids") or {}).items() if k != MODALITY}
    if injected:
        mm_data[MODALITY] = injected
        uuids[MODALITY] = [p.cache_key for p in injected]
    out = {
        k: v
        for k, v in prompt.items()
        if k not in ("multi_modal_data", "multi_modal_uuids", "prompt_token_ids", LAYOUT_KEY)
    }
    if mm_data:
        out["multi_modal_data"] = mm_data
        out["multi_modal_uuids"] = uuids
    return token_ids, out, planned


def plan_tokenized_prompt(
    reader: DocumentReader, token_ids: Sequence[int], prompt: dict
) -> tuple[list[int], dict, list[PlannedDocument]]:
    """`finish_prompt` after scoring the documents that need it, all in the caller's thread
    (the offline engine)."""
    layout: PromptLayout = prompt[LAYOUT_KEY]
    wanted = to_score(reader, token_ids, prompt)
    scores = [reader.score(d) if w else None for d, w in zip(layout.documents, wanted, strict=True)]
    return finish_prompt(reader, token_ids, prompt, scores)
