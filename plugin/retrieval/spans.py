"""Chunking-free span ranking: encode a document once, score any run of sentences against a query.

:class:`SpanRanker` ties the steps together: :mod:`.encoding` (the document encoded once,
windowed when long, and cached by :mod:`.cache`; the query one forward), :mod:`.scoring`
(per-sentence reductions, then every candidate run of sentences) and the answers here: the
top spans (:meth:`SpanRanker.rank`) or per-sentence scores for the planner
(:meth:`SpanRanker.score_all_spans`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .cache import DEFAULT_CACHE_BYTES, EncodingCache, content_hash, model_fingerprint
from .encoding import (
    DocumentEncoding,
    QueryEncoding,
    encode_document,
    encode_query,
    llm_token_offsets,
    plan_windows,
)
from .hops import Hop, chain_first, next_hop
from .identifiers import identifier_unit_counts
from .lexical import bm25_span_scores, reciprocal_rank_fusion
from .m3 import M3Encoder
from .m3_scores import check_weights
from .scoring import (
    MAX_SPAN_SENTENCES,
    SpanScores,
    UnitStats,
    candidate_spans,
    reduce_units,
    score_spans,
)
from .segment import DEFAULT_MAX_CHARS, Segment

__all__ = [
    "DocumentEncoding",
    "LandmarkScores",
    "QueryEncoding",
    "RankedSpan",
    "SpanRanker",
    "encode_document",
    "encode_query",
    "llm_token_offsets",
    "plan_windows",
    "DEFAULT_MAX_DOCUMENT_TOKENS",
    "MAX_SPAN_SENTENCES",
    "SpanRanking",
]

#: Default bound on a ranked document, in retriever tokens: twice the plugin's default
#: ceiling on a document in LLM tokens (``max_document_tokens``, 1,048,576), so any document
#: the plugin takes can be ranked (English reads about 1.1 retriever tokens per LLM token).
#: The encoding keeps about ``4 * colbert_dim + 32`` bytes a token (:mod:`.encoding`):
#: 1.6 KB for the bundled e5-small, 4.1 KB for BGE-M3 (8.6 GB at this bound).
DEFAULT_MAX_DOCUMENT_TOKENS = 1 << 21


@dataclass
class RankedSpan:
    """One ranked span: units ``[start_sentence, end_sentence)``, its text and offsets.

    ``start_char``/``end_char`` index the document as given; ``start_token``/``end_token`` are
    encoder tokens; ``llm_start_token``/``llm_end_token`` LLM tokens (``None`` without an LLM
    tokenizer). Components are ``None`` when the encoder lacks that head.
    """

    rank: int
    score: float
    dense: float
    sparse: float | None
    colbert: float | None
    start_sentence: int
    end_sentence: int
    start_char: int
    end_char: int
    start_token: int
    end_token: int
    llm_start_token: int | None
    llm_end_token: int | None
    text: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class LandmarkScores:
    """Per-unit (landmark) scores in document order, for the planner.

    ``score[i]``: the best planning score of any candidate span containing unit ``i`` (the
    hybrid score, or with lexical fusion its reciprocal rank fusion with BM25, :mod:`.lexical`);
    ``sentence_score`` / ``dense`` / ``sparse`` / ``colbert``: the unit scored alone.
    ``char_offsets`` (S, 2) index the document as given; ``token_offsets`` (S, 2) encoder
    tokens; ``llm_token_offsets`` (S, 2) LLM tokens (``None`` without a tokenizer): ranges that
    tile ``[0, n)``. ``cached``: the document encoding came from the cache. ``rounds``: the
    retrieval rounds that ran (:mod:`.hops`), ``hops`` what the rounds after the first found.
    """

    segments: list[Segment]
    char_offsets: np.ndarray
    token_offsets: np.ndarray
    llm_token_offsets: np.ndarray | None
    llm_num_tokens: int | None
    score: np.ndarray
    sentence_score: np.ndarray
    dense: np.ndarray
    sparse: np.ndarray | None
    colbert: np.ndarray | None
    num_tokens: int
    windows: list[tuple[int, int]]
    cached: bool
    timings: dict[str, float] = field(default_factory=dict)
    rounds: int = 1
    hops: list[Hop] = field(default_factory=list)


@dataclass
class SpanRanking:
    """Result of :meth:`SpanRanker.rank`: the ranked spans plus what the document looked like."""

    spans: list[RankedSpan]
    num_sentences: int
    num_tokens: int
    llm_num_tokens: int | None
    windows: list[tuple[int, int]]
    cached: bool
    timings: dict[str, float]


@dataclass
class _ScoredDocument:
    """One document scored against one query: what :meth:`SpanRanker.rank` and
    :meth:`SpanRanker.score_all_spans` build their answers from."""

    doc: DocumentEncoding
    cached: bool
    query: QueryEncoding
    segments: list[Segment]
    token_ranges: np.ndarray  # (S, 2) encoder-token range of each unit
    stats: UnitStats
    spans: np.ndarray  # (m, 2) candidate runs of units [s, e)
    scores: SpanScores
    weights: tuple[float, float, float]
    chars: np.ndarray  # (S, 2) character range of each unit in the document as given
    llm_ranges: np.ndarray | None  # (S, 2) LLM-token range of each unit
    llm_num_tokens: int | None
    timings: dict[str, float]

    def ranked_span(self, rank: int, i: int, s: int, e: int) -> RankedSpan:
        """Candidate ``i`` (units ``[s, e)``) as a :class:`RankedSpan`."""
        scores, segments = self.scores, self.segments
        a, b = segments[s].start, segments[e - 1].end
        llm = self.llm_ranges
        return RankedSpan(
            rank=rank,
            score=float(scores.hybrid[i]),
            dense=float(scores.dense[i]),
            sparse=None if scores.sparse is None else float(scores.sparse[i]),
            colbert=None if scores.colbert is None else float(scores.colbert[i]),
            start_sentence=s,
            end_sentence=e,
            start_char=int(self.chars[s, 0]),
            end_char=int(self.chars[e - 1, 1]),
            start_token=int(self.token_ranges[s, 0]),
            end_token=int(self.token_ranges[e - 1, 1]),
            llm_start_token=None if llm is None else int(llm[s, 0]),
            llm_end_token=None if llm is None else int(llm[e - 1, 1]),
            text=self.doc.text[a:b],
        )


class SpanRanker:
    """Ranks spans of documents against queries with one :class:`~.m3.M3Encoder`.

    Document encodings are cached (LRU, ``cache_bytes``; pass a shared ``cache`` to pool
    several rankers), so a second question about a document costs one query forward.
    ``weights`` are (dense, sparse, colbert), default :data:`~.m3.DEFAULT_WEIGHTS`;
    ``max_document_tokens`` bounds a document in retriever tokens (memory, see
    :data:`DEFAULT_MAX_DOCUMENT_TOKENS`); ``max_chars`` bounds a unit of the segmenter.

    The multi-vector and lexical components never decrease when a span grows (a maximum over
    more tokens), the dense one can; so among candidates of different lengths longer spans
    tend to win, and a shorter span wins a tie. Ask for one length (``span_sentences=1``) to
    compare sentences alone.
    """

    def __init__(
        self,
        encoder: M3Encoder,
        *,
        weights: Sequence[float] | None = None,
        cache: EncodingCache[DocumentEncoding] | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        overlap: int | None = None,
        window: int | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
        max_document_tokens: int = DEFAULT_MAX_DOCUMENT_TOKENS,
    ) -> None:
        self.encoder = encoder
        self.max_document_tokens = max_document_tokens
        self.weights = check_weights(weights)
        self.cache: EncodingCache[DocumentEncoding] = (
            cache if cache is not None else EncodingCache(cache_bytes)
        )
        self.overlap = overlap
        self.window = window
        self.max_chars = max_chars
        self.fingerprint = model_fingerprint(
            encoder.path,
            encoder.dtype,
            str(encoder.device),
            getattr(encoder, "quantize", None),
            getattr(encoder, "backend", "torch"),
        )

    def document_encoding(self, document: str) -> tuple[DocumentEncoding, bool]:
        """The document's encoding and whether it came from the cache."""
        if not isinstance(document, str):
            raise TypeError(f"document must be a str, got {type(document).__name__}")
        if not document.strip():
            raise ValueError("the document is empty or whitespace only: nothing to rank")
        key = (content_hash(document), self.fingerprint, self.window, self.overlap, self.max_chars)

        def compute() -> DocumentEncoding:
            enc = encode_document(
                self.encoder,
                document,
                overlap=self.overlap,
                window=self.window,
                max_tokens=self.max_document_tokens,
                max_chars=self.max_chars,
            )
            enc.fingerprint = self.fingerprint
            return enc

        return self.cache.get_or_compute(key, compute)

    def _score(
        self,
        document: str,
        query: str,
        span_sentences: Sequence[int] | int | None,
        span_tokens: int | None,
        weights: Sequence[float] | None,
        llm_tokenizer: Any,
    ) -> _ScoredDocument:
        """Encode (or fetch) the document, encode the query, score every candidate span."""
        t0 = time.perf_counter()
        doc, cached = self.document_encoding(document)
        document_s = time.perf_counter() - t0
        scored = self._score_encoded(doc, cached, query, span_sentences, span_tokens, weights)
        scored.timings["document_s"] = document_s
        t3 = time.perf_counter()
        if llm_tokenizer is not None:
            scored.llm_ranges, scored.llm_num_tokens = llm_token_offsets(
                llm_tokenizer, doc.text, scored.segments
            )
        scored.timings["llm_offsets_s"] = time.perf_counter() - t3
        return scored

    def _score_encoded(
        self,
        doc: DocumentEncoding,
        cached: bool,
        query: str,
        span_sentences: Sequence[int] | int | None,
        span_tokens: int | None,
        weights: Sequence[float] | None,
    ) -> _ScoredDocument:
        """Score every candidate span of an encoded document for one query (no LLM offsets)."""
        t0 = time.perf_counter()
        w = self.weights if weights is None else check_weights(weights)
        q = encode_query(self.encoder, query)
        t1 = time.perf_counter()
        segments, token_ranges = doc.units.segments, doc.units.token_ranges
        stats = reduce_units(doc, q)
        if isinstance(span_sentences, int):
            span_sentences = (span_sentences,)
        if span_sentences is None and span_tokens is None:
            span_sentences = (1, 2, 3)
        counts = token_ranges[:, 1] - token_ranges[:, 0]
        spans = candidate_spans(counts, span_sentences, span_tokens)
        scores = score_spans(stats, q, spans, w)
        t2 = time.perf_counter()
        chars = np.asarray([(s.start, s.end) for s in segments], dtype=np.int64)
        if doc.char_map is not None:
            chars = doc.char_map[chars]
        timings = {
            "query_s": t1 - t0,
            "document_s": 0.0,
            "document_encode_s": 0.0 if cached else doc.seconds,
            "score_s": t2 - t1,
            "llm_offsets_s": 0.0,
        }
        return _ScoredDocument(
            doc=doc,
            cached=cached,
            query=q,
            segments=segments,
            token_ranges=token_ranges,
            stats=stats,
            spans=spans,
            scores=scores,
            weights=w,
            chars=chars,
            llm_ranges=None,
            llm_num_tokens=None,
            timings=timings,
        )

    def rank(
        self,
        document: str,
        query: str,
        *,
        span_sentences: Sequence[int] | int | None = None,
        span_tokens: int | None = None,
        top_k: int = 5,
        allow_overlap: bool = False,
        weights: Sequence[float] | None = None,
        llm_tokenizer: Any = None,
    ) -> SpanRanking:
        """The ``top_k`` best spans, best first.

        Candidates are every run of ``span_sentences`` consecutive units (default 1, 2 and 3),
        or, with ``span_tokens``, from every unit the shortest run of at least that many
        encoder tokens. Unless ``allow_overlap``, a span sharing a unit with a better one is
        skipped. With ``llm_tokenizer`` the spans carry LLM token offsets too.
        """
        if top_k < 1:
            raise ValueError(f"top_k must be positive, got {top_k}")
        r = self._score(document, query, span_sentences, span_tokens, weights, llm_tokenizer)
        spans = r.spans
        order = np.lexsort((spans[:, 1] - spans[:, 0], -r.scores.hybrid))
        taken = np.zeros(len(r.segments), dtype=bool)
        out: list[RankedSpan] = []
        for i in order:
            s, e = int(spans[i, 0]), int(spans[i, 1])
            if not allow_overlap:
                if taken[s:e].any():
                    continue
                taken[s:e] = True
            out.append(r.ranked_span(len(out) + 1, i, s, e))
            if len(out) >= top_k:
                break
        return SpanRanking(
            spans=out,
            num_sentences=len(r.segments),
            num_tokens=r.doc.num_tokens,
            llm_num_tokens=r.llm_num_tokens,
            windows=list(r.doc.windows),
            cached=r.cached,
            timings=r.timings,
        )

    def score_all_spans(
        self,
        document: str,
        query: str,
        *,
        span_sentences: Sequence[int] | int | None = None,
        span_tokens: int | None = None,
        weights: Sequence[float] | None = None,
        llm_tokenizer: Any = None,
        lexical_fusion: bool = False,
        exact_identifiers: bool = True,
        rounds: int = 1,
    ) -> LandmarkScores:
        """Per-unit scores in document order (see :class:`LandmarkScores`), for the planner.

        ``lexical_fusion``: rank candidate spans by the reciprocal rank fusion of their hybrid
        score and their BM25 score over the document's sentences (:mod:`.lexical`); with
        ``exact_identifiers``, a sentence that holds an identifier the question quotes (a UUID, a
        code, a path: :mod:`.identifiers`), whole and verbatim, then outranks every sentence
        that holds fewer of them (the fused score, below 1, breaks ties). ``rounds`` > 1 follows
        what the best sentence names for up to ``rounds - 1`` more rounds (:mod:`.hops`), on
        the same encoding; the sentences found come first, in the order found.
        """
        if rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {rounds}")
        r = self._score(document, query, span_sentences, span_tokens, weights, llm_tokenizer)
        best = self._unit_scores(r, document, query, lexical_fusion, exact_identifiers)
        chain = [int(np.argmax(best))] if len(best) else []
        hops: list[Hop] = []
        started = time.perf_counter()

        def score_for(expanded: str) -> np.ndarray:
            """A later round's unit scores, on the same encoding."""
            more = self._score_encoded(r.doc, True, expanded, span_sentences, span_tokens, weights)
            return self._unit_scores(more, document, expanded, lexical_fusion, False)

        while len(chain) < rounds:
            hop = next_hop(document, r.chars, chain, query, score_for)
            if hop is None:
                break
            hops.append(hop)
            chain.append(hop.unit)
        if rounds > 1:
            r.timings["hops_s"] = time.perf_counter() - started
            best = chain_first(best, chain)
        n_units = len(r.segments)
        single = np.stack([np.arange(n_units), np.arange(n_units) + 1], axis=1)
        alone = score_spans(r.stats, r.query, single, r.weights)
        return LandmarkScores(
            segments=r.segments,
            char_offsets=r.chars,
            token_offsets=r.token_ranges,
            llm_token_offsets=r.llm_ranges,
            llm_num_tokens=r.llm_num_tokens,
            score=best,
            sentence_score=alone.hybrid,
            dense=alone.dense,
            sparse=alone.sparse,
            colbert=alone.colbert,
            num_tokens=r.doc.num_tokens,
            windows=list(r.doc.windows),
            cached=r.cached,
            timings=r.timings,
            rounds=1 + len(hops),
            hops=hops,
        )

    @staticmethod
    def _unit_scores(
        r: _ScoredDocument,
        document: str,
        query: str,
        lexical_fusion: bool,
        exact_identifiers: bool,
    ) -> np.ndarray:
        """Each unit's best containing span score (fused, identifier hits on top)."""
        spans, hybrid = r.spans, r.scores.hybrid
        if lexical_fusion:
            lexical = bm25_span_scores(r.doc.input_ids, r.token_ranges, spans, r.query.content_ids)
            hybrid = reciprocal_rank_fusion(hybrid, lexical)
        # Best containing span per unit: spans sorted by score, painted best last.
        best = np.full(len(r.segments), -np.inf)
        for w in np.unique(spans[:, 1] - spans[:, 0]):
            pick = np.nonzero(spans[:, 1] - spans[:, 0] == w)[0]
            for offset in range(int(w)):
                np.maximum.at(best, spans[pick, 0] + offset, hybrid[pick])
        if lexical_fusion and exact_identifiers:  # fused scores are below 1: a hit outranks
            best = best + identifier_unit_counts(document, r.chars, query)
        return best
