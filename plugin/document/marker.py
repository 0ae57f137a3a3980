"""Where documents go in a prompt, for any tokenizer.

No token of the vocabulary is reserved for documents. A document is marked in the rendered
prompt *text* by a marker string, and the prompt is tokenized piece by piece around the
markers: the text between two markers is tokenized exactly as the tokenizer tokenizes text
that follows one of its own special tokens, and each marker becomes an insertion point
(a token index), not a token. The multimodal processor later inserts the document's soft-token
run at that index; vLLM's placeholder ranges, not a token search, say where documents are.

Two kinds of markers:
- chat requests: a fresh random marker per document part, made after the request arrived, so
  no text a user typed can contain it (text that looks like a marker is just text);
- offline prompts (`LLM.generate({"prompt": ..., "multi_modal_data": {"document": ...}})`):
  the public `DOCUMENT_MARKER`, one per document in order. Whoever writes such a prompt is the
  program itself, not an end user.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: Marks a document in an offline text prompt (one per document, in order).
DOCUMENT_MARKER = "<|landmark_document|>"


def new_marker() -> str:
    """A marker no user text can contain: 128 random bits, made per document part."""
    return f"<|landmark_document:{secrets.token_hex(16)}|>"


class MarkerError(ValueError):
    """The rendered prompt does not hold each document's marker exactly once."""


def split_at_markers(prompt: str, markers: Sequence[str]) -> list[str]:
    """The prompt cut at `markers` (in order; a marker may repeat): len(markers) + 1 pieces."""
    for marker in set(markers):
        expected, found = markers.count(marker), prompt.count(marker)
        if found != expected:
            raise MarkerError(
                f"the prompt holds {found} document marker(s) for {expected} document(s): "
                "each document needs its marker exactly once (a chat template that drops "
                "message content can cause this)"
            )
    pieces: list[str] = []
    rest = prompt
    for index, marker in enumerate(markers):
        head, found, rest = rest.partition(marker)
        if not found:
            raise MarkerError(f"document {index} is out of order in the rendered prompt")
        pieces.append(head)
    pieces.append(rest)
    return pieces


@dataclass(frozen=True)
class SegmentTokenizer:
    """Tokenizes prompt pieces as if each document were one of the tokenizer's special tokens.

    `boundary` is a special token of the tokenizer (its BOS, EOS, UNK or PAD, or any other
    special token) that encodes to one id. Text after a document is tokenized as
    `encode(boundary + text)` minus the boundary's id: the same split the tokenizer itself
    makes after a special token (e.g. a SentencePiece tokenizer adds no word-start marker
    there). A tokenizer without any special token tokenizes each piece on its own.
    """

    tokenizer: Any
    boundary: str | None
    boundary_id: int | None
    special_texts: frozenset[str] = frozenset()

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> SegmentTokenizer:
        candidates = _special_token_candidates(tokenizer)
        specials = frozenset(candidates) | _added_special_texts(tokenizer)
        for text in candidates:
            ids = tokenizer.encode(text + "a", add_special_tokens=False)
            alone = tokenizer.encode(text, add_special_tokens=False)
            if len(alone) == 1 and ids[:1] == alone:
                return cls(tokenizer, text, int(alone[0]), specials)
        return cls(tokenizer, None, None, specials)

    def encode_after_document(self, text: str) -> list[int]:
        if not text:
            return []
        if self.boundary is None:
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        ids = self.tokenizer.encode(self.boundary + text, add_special_tokens=False)
        if not ids or ids[0] != self.boundary_id:
            raise MarkerError("the boundary token did not tokenize as one special token")
        return list(ids[1:])

    def encode(
        self, pieces: Sequence[str], encode_kwargs: dict[str, Any]
    ) -> tuple[list[int], list[int]]:
        """(prompt token ids, insertion index of each document) for `pieces` around documents.

        The first piece is tokenized with vLLM's own arguments (so BOS handling is vLLM's);
        every later piece as text following a document.
        """
        kwargs = {
            key: value
            for key, value in encode_kwargs.items()
            if key not in ("truncation", "max_length", "return_offsets_mapping")
        }
        ids = list(self.tokenizer(pieces[0], **kwargs)["input_ids"])
        positions: list[int] = []
        for piece in pieces[1:]:
            positions.append(len(ids))
            ids.extend(self.encode_after_document(piece))
        return ids, positions


def _special_token_candidates(tokenizer: Any) -> list[str]:
    names = ("bos_token", "eos_token", "unk_token", "pad_token")
    found = [getattr(tokenizer, name, None) for name in names]
    found += list(getattr(tokenizer, "all_special_tokens", []) or [])
    seen: list[str] = []
    for text in found:
        if isinstance(text, str) and text and text not in seen:
            seen.append(text)
    return seen


def _added_special_texts(tokenizer: Any) -> frozenset[str]:
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return frozenset(
        token.content for token in decoder.values() if getattr(token, "special", False)
    )


def filler_token_id(tokenizer: Any) -> int:
    """The id that fills a document's soft-token positions in the prompt.

    The model replaces these positions' embeddings, so the id only shows in echoed prompts
    and in prompt-based penalties; it should not be the end-of-sequence token (a repetition
    penalty would then discourage ending). The UNK or PAD token when there is one, else the
    BOS token if it differs from EOS, else the first id that is no special token.
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    for name in ("unk_token_id", "pad_token_id", "bos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int) and value != eos:
            return value
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    return next(i for i in range(len(tokenizer)) if i not in specials)
