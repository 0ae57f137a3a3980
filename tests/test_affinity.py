"""Document affinity: the engine a request names follows its documents' tokens only."""

from __future__ import annotations

from types import SimpleNamespace

from vllm_landmark.server.affinity import affinity_rank, documents_key, routable_ranks


def test_rank_depends_on_the_documents_only():
    documents = [tuple(range(100, 400)), (5, 6, 7)]
    assert affinity_rank(documents, 4) == affinity_rank([list(d) for d in documents], 4)
    assert documents_key(documents) != documents_key(documents[::-1])
    # Token boundaries count: (1, 23) and (12, 3) are different documents.
    assert documents_key([(1, 23)]) != documents_key([(12, 3)])
    assert affinity_rank(documents, 1) is None
    assert affinity_rank([], 4) is None


def test_ranks_spread_over_engines():
    ranks = [affinity_rank([(seed, seed + 1, seed * 7)], 4) for seed in range(400)]
    counts = [ranks.count(r) for r in range(4)]
    assert min(counts) > 60, counts  # about 100 each: the digest spreads documents evenly


def test_routable_ranks_follow_vllms_range():
    both = SimpleNamespace(data_parallel_size=4, data_parallel_size_local=2)
    assert routable_ranks(SimpleNamespace(**vars(both), local_engines_only=False)) == 4
    assert routable_ranks(SimpleNamespace(**vars(both), local_engines_only=True)) == 2
