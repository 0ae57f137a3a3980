"""The document-encoding cache: LRU by bytes, thread safety, and a hit path with no document
forward (forwards counted on the real tiny encoder)."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from vllm_landmark.retrieval.cache import EncodingCache, content_hash, model_fingerprint
from vllm_landmark.retrieval.m3 import M3Encoder
from vllm_landmark.retrieval.spans import SpanRanker, encode_document
from vllm_landmark.testing.tiny_m3 import build_tiny_m3, generate_text


@dataclass
class Blob:
    nbytes: int
    name: str = ""


def test_lru_eviction_by_bytes() -> None:
    cache: EncodingCache[Blob] = EncodingCache(max_bytes=100)
    cache.put("a", Blob(40))
    cache.put("b", Blob(40))
    assert cache.nbytes == 80 and len(cache) == 2
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("c", Blob(40))  # over 100: the least recently used ("b") goes
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.nbytes == 80
    cache.put("d", Blob(90))  # needs both others out
    assert len(cache) == 1 and cache.nbytes == 90
    cache.put("huge", Blob(101))  # larger than the bound: not kept, nothing evicted for it
    assert "huge" not in cache and "d" in cache
    cache.put("d", Blob(10))  # replacing a key frees its old size
    assert cache.nbytes == 10
    stats = cache.stats()
    assert stats.evictions == 3 and stats.entries == 1 and stats.bytes == 10
    assert stats.hits == 1
    disabled: EncodingCache[Blob] = EncodingCache(max_bytes=0)
    value, hit = disabled.get_or_compute("k", lambda: Blob(1))
    assert value.nbytes == 1 and not hit and len(disabled) == 0
    with pytest.raises(ValueError):
        EncodingCache(max_bytes=-1)


def test_concurrent_requests_for_one_key_compute_once() -> None:
    cache: EncodingCache[Blob] = EncodingCache(max_bytes=1000)
    calls = []
    lock = threading.Lock()

    def compute(name: str) -> Blob:
        with lock:
            calls.append(name)
        time.sleep(0.05)
        return Blob(10, name)

    def ask(i: int) -> tuple[Blob, bool]:
        key = "same" if i % 2 else f"other-{i}"
        return cache.get_or_compute(key, lambda: compute(key))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, range(16)))
    assert calls.count("same") == 1
    assert len(calls) == 1 + 8
    assert sum(hit for _, hit in results) == 7
    assert cache.nbytes == 90 and len(cache) == 9


def test_content_hash_and_model_fingerprint(tmp_path: Path) -> None:
    assert content_hash("abc") != content_hash("abd")
    assert content_hash("lone \ud800") == content_hash("lone \ud800")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    first = model_fingerprint(folder, "float32")
    assert first == model_fingerprint(folder, "float32")
    assert first != model_fingerprint(folder, "float16")
    (folder / "colbert_linear.pt").write_bytes(b"x")
    assert model_fingerprint(folder, "float32") != first


# ----------------------------------------------------------------------------------------------
# With the real encoder: count forwards
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> M3Encoder:
    return M3Encoder(build_tiny_m3(tmp_path_factory.mktemp("cache") / "tiny_m3"))


class ForwardCounter:
    """Counts the encoder's forwards (a forward hook on the real model) and their lengths."""

    def __init__(self, encoder: M3Encoder) -> None:
        self.lengths: list[int] = []
        self._handle = encoder.model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.lengths.append(int(ids.shape[1]))

    def __enter__(self) -> ForwardCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


def test_second_question_costs_only_the_query_forward(encoder: M3Encoder) -> None:
    rng = random.Random(1)
    document = generate_text(rng, 25)
    ranker = SpanRanker(encoder)
    with ForwardCounter(encoder) as counter:
        first = ranker.rank(document, "river city?", top_k=2)
        assert not first.cached
        assert len(counter.lengths) == 2  # the query, the document
        doc_len = max(counter.lengths)
        second = ranker.rank(document, "Wo ist der Berg?", top_k=2)
        third = ranker.score_all_spans(document, "一个问题")
        assert second.cached and third.cached
        assert len(counter.lengths) == 4  # one query forward each, no document forward
        assert max(counter.lengths[2:]) < doc_len
    assert ranker.cache.stats().hits == 2


def test_eviction_by_bytes_forces_a_new_document_forward(encoder: M3Encoder) -> None:
    rng = random.Random(2)
    doc_a, doc_b = generate_text(rng, 20), generate_text(rng, 20)
    size = encode_document(encoder, doc_a).nbytes
    ranker = SpanRanker(encoder, cache_bytes=int(size * 1.5))  # room for one document
    with ForwardCounter(encoder) as counter:
        ranker.rank(doc_a, "river", top_k=1)
        ranker.rank(doc_a, "city", top_k=1)
        assert len(counter.lengths) == 3
        ranker.rank(doc_b, "river", top_k=1)  # evicts doc_a
        assert len(ranker.cache) == 1 and ranker.cache.stats().evictions == 1
        assert ranker.cache.nbytes <= ranker.cache.max_bytes
        again = ranker.rank(doc_a, "river", top_k=1)
        assert not again.cached
        assert len(counter.lengths) == 7  # query + document again


def test_threads_asking_about_one_document_encode_it_once(encoder: M3Encoder) -> None:
    rng = random.Random(3)
    document = generate_text(rng, 30)
    ranker = SpanRanker(encoder)
    questions = ["river", "city", "Berg", "河流", "гора", "garden"]
    with ForwardCounter(encoder) as counter, ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda q: ranker.rank(document, q, top_k=2), questions))
    n_doc = len(encode_document(encoder, document).input_ids) + 2
    assert counter.lengths.count(n_doc) == 1
    assert len(counter.lengths) == len(questions) + 1
    assert sum(not r.cached for r in results) == 1
    # Same answers as asked one at a time.
    for q, r in zip(questions, results, strict=True):
        alone = SpanRanker(encoder).rank(document, q, top_k=2)
        assert [s.score for s in r.spans] == pytest.approx([s.score for s in alone.spans])


def test_the_cache_key_includes_the_model(encoder: M3Encoder, tmp_path: Path) -> None:
    other = M3Encoder(build_tiny_m3(tmp_path / "other", seed=5))
    shared: EncodingCache = EncodingCache()
    a, b = SpanRanker(encoder, cache=shared), SpanRanker(other, cache=shared)
    assert a.fingerprint != b.fingerprint
    doc = "The river flows. The city sleeps."
    assert not a.rank(doc, "river").cached
    assert not b.rank(doc, "river").cached  # same text, other model: its own entry
    assert a.rank(doc, "city").cached and b.rank(doc, "city").cached
    assert len(shared) == 2
