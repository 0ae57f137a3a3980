"""``landmark proxy``: document-aware chat in front of any OpenAI-compatible endpoint.

The retriever picks a document's most relevant contiguous windows, they are pasted as text
within a budget counted exactly in the upstream model's tokens, and the request is forwarded.
"""

from .app import ProxyConfig, create_app, run_proxy
from .selection import DocumentSelection, select_document
from .tokenizers import HFTokenizer, TiktokenTokenizer, load_upstream_tokenizer

__all__ = [
    "DocumentSelection",
    "HFTokenizer",
    "ProxyConfig",
    "TiktokenTokenizer",
    "create_app",
    "load_upstream_tokenizer",
    "run_proxy",
    "select_document",
]
