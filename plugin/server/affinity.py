"""Document affinity: requests about the same documents go to the same data-parallel engine.

vLLM's data-parallel front end balances requests over its engines by load, so a second
question about a document often lands on an engine that has never seen it: its prefix cache
(the document's KV blocks) and its multimodal encoder cache (the document's soft tokens) are
on the other engine. vLLM already lets a request name its engine (`data_parallel_rank`, fed
by the `X-data-parallel-rank` header for external routers); this module picks that rank from
the content of the request's documents, so every request carrying the same documents, from
any API server process and on any node, names the same engine. Requests without documents,
and requests whose caller sent the header, keep vLLM's own choice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any


def routable_ranks(parallel_config: Any) -> int:
    """How many engines a request of this API server may name (vLLM's own range check).

    With an external or hybrid load balancer each API server talks to its node's engines
    only (`local_engines_only`); otherwise to every data-parallel rank, remote nodes included.
    """
    if getattr(parallel_config, "local_engines_only", False):
        return int(parallel_config.data_parallel_size_local)
    return int(parallel_config.data_parallel_size)


def documents_key(documents: Sequence[Sequence[int]]) -> bytes:
    """A digest of the documents' LLM tokens, in order (the plan and the question do not count)."""
    digest = hashlib.sha256(b"landmark-affinity-v1")
    for token_ids in documents:
        digest.update(len(token_ids).to_bytes(8, "little"))
        digest.update(",".join(map(str, token_ids)).encode())
    return digest.digest()


def affinity_rank(documents: Sequence[Sequence[int]], ranks: int) -> int | None:
    """The engine for a request with these documents, or None (no documents, one engine)."""
    if ranks <= 1 or not documents:
        return None
    return int.from_bytes(documents_key(documents)[:8], "little") % ranks
