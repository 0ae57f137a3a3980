"""What the M3 encoder accepts as text: checked strings, lone surrogates replaced, the folder's
prompt prepended, and no more tokens than the encoder takes."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

# Model types whose position ids start after the padding index (RoBERTa family).
_OFFSET_POSITION_MODELS = {"xlm-roberta", "roberta", "camembert", "xlm-roberta-xl"}
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str, index: int = 0) -> str:
    """Check one input text; replace lone surrogates with U+FFFD (pairs become their character).

    Raises ``TypeError`` for non-strings and ``ValueError`` for empty or whitespace-only text.
    """
    if not isinstance(text, str):
        raise TypeError(f"text {index} must be a str, got {type(text).__name__}")
    if _SURROGATE.search(text):
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    if not text.strip():
        raise ValueError(f"text {index} is empty or whitespace only: nothing to encode")
    return text


def max_text_tokens(config: Any, tokenizer: Any) -> int:
    """The most tokens (special tokens included) an encoder takes in one text: its position
    embeddings (less the RoBERTa family's padding offset), capped by the tokenizer's limit."""
    limit = config.max_position_embeddings
    if config.model_type in _OFFSET_POSITION_MODELS:
        limit -= (config.pad_token_id or 0) + 1
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:
        limit = min(limit, tok_limit)
    return int(limit)


def tokenize_texts(
    tokenizer: Any,
    texts: Sequence[str],
    encoder_limit: int,
    *,
    max_length: int | None = None,
    truncation: bool = False,
    prompt: str = "",
) -> list[list[int]]:
    """Token ids (with special tokens) of each checked text, ``prompt`` prepended.

    ``max_length`` (default and upper bound: ``encoder_limit``) counts special tokens and the
    prompt's; a longer text is a ``ValueError`` unless ``truncation=True``.
    """
    if isinstance(texts, str):
        texts = [texts]
    if len(texts) == 0:
        raise ValueError("no texts to encode")
    limit = encoder_limit if max_length is None else int(max_length)
    if not 2 < limit <= encoder_limit:
        raise ValueError(f"max_length must be in 3..{encoder_limit}, got {limit}")
    cleaned = [prompt + clean_text(t, i) for i, t in enumerate(texts)]
    kwargs: dict[str, Any] = {"truncation": True, "max_length": limit} if truncation else {}
    ids: list[list[int]] = tokenizer(
        cleaned, add_special_tokens=True, return_attention_mask=False, verbose=False, **kwargs
    )["input_ids"]
    for i, row in enumerate(ids):
        if len(row) > limit:
            raise ValueError(
                f"text {i} has {len(row)} tokens, more than max_length={limit} "
                f"(encoder limit {encoder_limit}); shorten it or pass truncation=True"
            )
    return ids
