"""A thread-safe LRU cache of document encodings, bounded by bytes.

Keys are ``(content hash, model fingerprint, settings)``: the same text encoded by the same
model folder (same files) with the same window settings is encoded once, so a second question
about a document costs only the query's forward. Values report their size through ``nbytes``.

Concurrent requests for one missing key wait for a single computation instead of each running
its own forward (per-key locks); requests for other keys are not blocked meanwhile.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "CacheStats",
    "EncodingCache",
    "content_hash",
    "model_fingerprint",
]

#: Default bound: about eight 8,192-token BGE-M3 documents (hidden + multi-vector, float32).
DEFAULT_CACHE_BYTES = 512 << 20


class Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


V = TypeVar("V", bound=Sized)


def content_hash(text: str) -> str:
    """SHA-256 of a text's UTF-8 bytes (lone surrogates kept through ``surrogatepass``)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def model_fingerprint(folder: str | Path, *extra: Any) -> str:
    """A short id of a model folder: its resolved path and every file's name, size and mtime.

    Cheap (no weights are read) and changes whenever a file of the folder is replaced.
    ``extra`` (e.g. the dtype) is mixed in.
    """
    root = Path(folder).expanduser().resolve()
    h = hashlib.sha256(str(root).encode())
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        st = path.stat()
        h.update(f"\0{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    for item in extra:
        h.update(f"\0{item}".encode())
    return h.hexdigest()[:16]


@dataclass
class CacheStats:
    """Counters of an :class:`EncodingCache`."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0
    max_bytes: int = 0


class EncodingCache(Generic[V]):
    """LRU mapping ``key -> value`` holding at most ``max_bytes`` of values (``value.nbytes``).

    A value larger than ``max_bytes`` is returned but not kept. ``max_bytes=0`` disables caching.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._data: OrderedDict[Hashable, V] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}
        self._hits = self._misses = self._evictions = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        with self._lock:
            return self._bytes

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                self._hits, self._misses, self._evictions, len(self._data), self._bytes,
                self.max_bytes,
            )  # fmt: skip

    def get(self, key: Hashable) -> V | None:
        """The value (now most recently used), or ``None``; counts a hit or a miss."""
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self._misses += 1
                return None
            self._data.move_to_end(key)
            self._hits += 1
            return value

    def put(self, key: Hashable, value: V) -> None:
        """Insert (or replace) a value, then evict least recently used ones over the bound."""
        size = int(value.nbytes)
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= int(old.nbytes)
            if size > self.max_bytes:
                return
            self._data[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes and self._data:
                _, evicted = self._data.popitem(last=False)
                self._bytes -= int(evicted.nbytes)
                self._evictions += 1

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> tuple[V, bool]:
        """``(value, hit)``: the cached value, or ``compute()`` stored under ``key``.

        Threads asking for the same missing key run ``compute`` once; the others wait and then
        get the stored value (or compute themselves if it could not be kept).
        """
        value = self.get(key)
        if value is not None:
            return value, True
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        try:
            with key_lock:
                with self._lock:
                    value = self._data.get(key)
                    if value is not None:
                        self._data.move_to_end(key)
                        self._hits += 1
                        self._misses -= 1  # the first look was a miss only in timing
                        return value, True
                value = compute()
                self.put(key, value)
                return value, False
        finally:
            with self._lock:
                if self._key_locks.get(key) is key_lock and not key_lock.locked():
                    del self._key_locks[key]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def discard(self, predicate: Callable[[Hashable], bool]) -> int:
        """Drop every entry whose key matches ``predicate``; returns how many were dropped."""
        with self._lock:
            keys = [key for key in self._data if predicate(key)]
            for key in keys:
                self._bytes -= int(self._data.pop(key).nbytes)
        return len(keys)
