"""Tokenizing documents with the LLM's tokenizer, cached so repeated documents cost nothing."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from threading import Lock
from typing import Any

_CACHE_SIZE = 64
_cache: OrderedDict[tuple[int, str], tuple[int, ...]] = OrderedDict()
_lock = Lock()


def encode_document(tokenizer: Any, text: str) -> tuple[int, ...]:
    """Token ids of a document's text, without BOS/EOS.

    Special-token strings inside the document are tokenized as plain text, so a document
    cannot smuggle control tokens (end of turn, role headers) into the prompt.
    """
    key = (id(tokenizer), hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest())
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    try:
        ids = tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
    except TypeError:  # tokenizers without that option
        ids = tokenizer.encode(text, add_special_tokens=False)
    result = tuple(int(t) for t in ids)
    with _lock:
        _cache[key] = result
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return result
