"""One span ranker per retriever folder per process, shared by every request.

The API-server process plans documents with it; loading happens on first use and the
document-encoding cache then serves follow-up questions about the same document.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

_lock = threading.Lock()


@lru_cache(maxsize=4)
def _ranker(folder: str) -> Any:
    from .m3 import M3Encoder
    from .spans import SpanRanker

    return SpanRanker(M3Encoder(folder))


def get_span_ranker(folder: str) -> Any:
    """The SpanRanker of a BGE-M3-layout folder (built once, thread-safe)."""
    with _lock:
        return _ranker(folder)
