"""Tokenizing documents with the LLM's tokenizer, cached so repeated documents cost nothing."""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from threading import Lock
from typing import Any

#: Every live DocumentTokenizer, so a deleted file can be dropped from all of their caches.
_instances: weakref.WeakSet[DocumentTokenizer] = weakref.WeakSet()


def encode_document(tokenizer: Any, text: str) -> tuple[int, ...]:
    """A document's LLM token ids: no BOS/EOS, special-token strings read as plain text."""
    try:
        ids = tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
    except TypeError:  # tokenizers without that option
        ids = tokenizer.encode(text, add_special_tokens=False)
    return tuple(int(t) for t in ids)


class DocumentTokenizer:
    """A document's LLM token ids (no BOS/EOS), with an LRU cache by content.

    Special-token strings inside the document are tokenized as plain text, so a document
    cannot smuggle control tokens (end of turn, role headers) into the prompt. One instance
    per tokenizer (the planner owns it): a follow-up question about the same document reuses
    its tokens.
    """

    def __init__(self, tokenizer: Any, cache_size: int = 64) -> None:
        self.tokenizer = tokenizer
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._lock = Lock()
        _instances.add(self)

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    def forget(self, text: str) -> bool:
        """Drop the cached tokens of `text`; True if they were cached."""
        with self._lock:
            return self._cache.pop(self._key(text), None) is not None

    def encode(self, text: str) -> tuple[int, ...]:
        key = self._key(text)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        result = encode_document(self.tokenizer, text)
        with self._lock:
            self._cache[key] = result
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return result


def forget_document(text: str) -> int:
    """Drop `text` from every document-token cache of this process (a file was deleted)."""
    return sum(tokenizer.forget(text) for tokenizer in list(_instances))
