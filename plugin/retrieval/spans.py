"""Chunking-free span ranking: encode a document once, score any run of sentences against a query.

How a document is encoded (:func:`encode_document`):

* The text is cut into units by :mod:`.segment` (the sentence ends are the landmarks) and
  tokenized once by the encoder's tokenizer, with character offsets.
* If its tokens fit the encoder (``max_length`` minus the special tokens: 8,190 content tokens
  for BGE-M3), it is encoded WHOLE in one forward, so every token vector sees the whole
  document. Otherwise it is encoded in overlapping windows of the full encoder length, spread
  evenly so that consecutive windows overlap by at least ``overlap`` tokens (default a quarter
  of the window). Each token keeps the vectors of the window that gives it the most context:
  the window where it is farthest from an edge, an edge that is also the document's own start
  or end not counting as one. With evenly spread windows that is the window whose centre is
  nearest, and every token keeps at least ``overlap / 2`` tokens of context on both sides
  (or everything up to the document's end).
* Windows have one length, so several are batched without padding (no attention mask).
* Kept per token (content tokens only, no ``<s>``/``</s>``): the last hidden state, the lexical
  weight ``relu(sparse_linear(h))`` (0 for the ids FlagEmbedding drops) and the normalized
  multi-vector ``normalize(colbert_linear(h))``. That, plus the units (sentences, their token
  ranges and hidden-state sums), is what :mod:`.cache` stores: a second question costs one
  query forward and the scoring below.
* A folder with sentence-transformers prompts (e5: ``"query: "`` / ``"passage: "``) gets them
  as :meth:`M3Encoder.encode` does: each window reads ``<s> passage: <tokens> </s>`` (the
  prompt's tokens are not kept), the query ``query: <question>``.

How a span (sentences ``s .. e-1``, i.e. every token whose start lies in them) is scored:

* multi-vector: FlagEmbedding's late interaction restricted to the span: for each query vector
  (all query tokens after ``<s>``, ``</s>`` included, exactly as ``colbert_score``) the best
  inner product with a token vector of the span, summed and divided by the number of query
  vectors.
* lexical: FlagEmbedding's lexical matching restricted to the span: the span's weight of a
  token id is the maximum over its tokens with that id; the score is the sum over the query's
  ids of query weight x span weight.
* dense: cosine between the normalized MEAN of the span's token hidden states and the
  normalized mean of the query's content-token hidden states (same pooling on both sides).
  Why not the query's ``[CLS]`` vector: BGE-M3 pools with ``[CLS]``, and a token state is not a
  ``[CLS]`` state; comparing a CLS vector with a mean of token states mixes two regions of the
  space. Why hidden states and not the multi-vector outputs: the colbert head is a projection
  trained for token-level max-sim, and its mean would mostly repeat the multi-vector score;
  the hidden states carry the encoder's full contextual representation, which is what a
  sentence embedding pools. For a mean-pooled encoder (e5) this is the model's own dense
  pooling restricted to the span, computed in context. The mean is taken by sums, so any span
  costs one ``hidden``-sized vector however long it is.
* hybrid: ``sum(w * s) / sum(w)`` over the components available, weights (dense, sparse,
  colbert), default :data:`~.m3.DEFAULT_WEIGHTS`.

Per sentence first (maxima and sums over its tokens), then over runs of sentences by sliding
maxima/sums: scoring every 1-3 sentence span of an 8,192-token BGE-M3 document (650 units)
takes about 0.1 s on 2 CPU cores, against seconds for the query forward.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .cache import DEFAULT_CACHE_BYTES, EncodingCache, content_hash, model_fingerprint
from .m3 import M3Encoder, _check_weights, clean_text
from .segment import DEFAULT_MAX_CHARS, Segment, segment

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

#: Longest run of sentences one span may cover when spans are built to a token target.
MAX_SPAN_SENTENCES = 64
#: Default bound on a ranked document, in retriever tokens: its token arrays (hidden states +
#: multi-vectors, float32) take about 8 KB per token for BGE-M3, so 1 GB at this bound.
DEFAULT_MAX_DOCUMENT_TOKENS = 1 << 17


# ----------------------------------------------------------------------------------------------
# Text and offsets
# ----------------------------------------------------------------------------------------------


def _clean_with_map(text: str) -> tuple[str, np.ndarray | None]:
    """``clean_text`` plus, when it changed lengths (surrogate pairs joined), a map from
    cleaned character offsets to offsets in ``text`` (length ``len(cleaned) + 1``)."""
    cleaned = clean_text(text)
    if len(cleaned) == len(text):
        return cleaned, None
    starts: list[int] = []
    i = 0
    while i < len(text):
        starts.append(i)
        high = "\ud800" <= text[i] <= "\udbff"
        i += 2 if high and i + 1 < len(text) and "\udc00" <= text[i + 1] <= "\udfff" else 1
    starts.append(len(text))
    return cleaned, np.asarray(starts, dtype=np.int64)


def _special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after a single text."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return list(full[:i]), list(full[i + len(bare) :])
    raise ValueError("cannot find how the tokenizer adds special tokens")


def _token_starts(offsets: np.ndarray) -> np.ndarray:
    """Non-decreasing start offsets (a tokenizer may report a smaller start after a larger)."""
    return np.maximum.accumulate(offsets[:, 0]) if len(offsets) else offsets[:, 0]


def _unit_token_ranges(starts: np.ndarray, segments: Sequence[Segment], n: int) -> np.ndarray:
    """Token range ``[a, b)`` of each unit: the tokens whose start lies from the unit's start to
    the next unit's start (the first unit also takes any tokens before it)."""
    bounds = np.searchsorted(starts, [s.start for s in segments], side="left")
    bounds[0] = 0
    out = np.empty((len(segments), 2), dtype=np.int64)
    out[:, 0] = bounds
    out[:-1, 1] = bounds[1:]
    out[-1, 1] = n
    return out


def llm_token_offsets(
    tokenizer: Any, text: str, segments: Sequence[Segment]
) -> tuple[np.ndarray, int]:
    """LLM token range ``[a, b)`` of each unit, and the document's LLM token count.

    The document is tokenized as the document processor does (no BOS/EOS, special-token
    strings split as text) with a fast tokenizer's offset mapping; a token belongs to the unit
    in which it starts, so the ranges tile ``[0, n)`` with no gap and no overlap.
    """
    kwargs: dict[str, Any] = {"add_special_tokens": False, "return_offsets_mapping": True}
    try:
        enc = tokenizer(text, split_special_tokens=True, **kwargs)
    except TypeError:
        enc = tokenizer(text, **kwargs)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    n = len(offsets)
    if n == 0:
        return np.zeros((len(segments), 2), dtype=np.int64), 0
    return _unit_token_ranges(_token_starts(offsets), segments, n), n


# ----------------------------------------------------------------------------------------------
# Encodings
# ----------------------------------------------------------------------------------------------


@dataclass
class DocumentEncoding:
    """Token-level outputs of one document: what the cache keeps (independent of any query).

    ``input_ids`` (n,), ``offsets`` (n, 2) character offsets into ``text`` (the cleaned text),
    ``hidden`` (n, H) last hidden states, ``sparse`` (n,) lexical weights or ``None``,
    ``colbert`` (n, D) normalized multi-vectors or ``None``; ``windows``: the content-token
    ranges encoded (one when the document fits the encoder); ``owner`` (n,) the window each
    token's vectors come from.
    """

    text: str
    char_map: np.ndarray | None
    input_ids: np.ndarray
    offsets: np.ndarray
    hidden: np.ndarray
    sparse: np.ndarray | None
    colbert: np.ndarray | None
    windows: list[tuple[int, int]]
    owner: np.ndarray
    seconds: float
    fingerprint: str = ""
    units: dict[int, Any] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def nbytes(self) -> int:
        arrays = [self.input_ids, self.offsets, self.hidden, self.owner]
        arrays += [a for a in (self.sparse, self.colbert, self.char_map) if a is not None]
        units = sum(u.nbytes for u in self.units.values())
        return sum(a.nbytes for a in arrays) + units + 2 * len(self.text) + 256


@dataclass
class QueryEncoding:
    """A query's outputs: ``colbert`` (n-1, D) as FlagEmbedding (after ``<s>``, ``</s>`` kept),
    ``lexical`` ``{token_id: weight}``, ``mean`` the normalized mean of its content-token hidden
    states (the dense side of span scores), ``dense`` its normalized ``[CLS]`` vector."""

    text: str
    input_ids: list[int]
    dense: np.ndarray
    mean: np.ndarray
    lexical: dict[int, float] | None
    colbert: np.ndarray | None


def plan_windows(n: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Evenly spread windows ``[a, b)`` of length ``window`` covering ``range(n)``, where
    consecutive windows share at least ``overlap`` tokens; one window when ``n <= window``."""
    if window < 1:
        raise ValueError(f"window must be positive, got {window}")
    if n <= window:
        return [(0, n)]
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, {window}), got {overlap}")
    stride = window - overlap
    count = math.ceil((n - window) / stride) + 1
    starts = [round(i * (n - window) / (count - 1)) for i in range(count)]
    return [(a, a + window) for a in starts]


def _owners(n: int, windows: Sequence[tuple[int, int]]) -> np.ndarray:
    """For each token, the window where it is farthest from an edge (ties: the earlier one).

    Distance to an edge = min(tokens before it in the window, tokens after it in the window);
    a window edge that is the document's start or end is no edge (infinite context there).
    """
    best = np.full(n, -1.0)
    owner = np.zeros(n, dtype=np.int32)
    for w, (a, b) in enumerate(windows):
        t = np.arange(a, b)
        left = (t - a).astype(float) if a > 0 else np.full(b - a, np.inf)
        right = (b - 1 - t).astype(float) if b < n else np.full(b - a, np.inf)
        score = np.minimum(left, right)
        better = score > best[a:b]
        best[a:b][better] = score[better]
        owner[a:b][better] = w
    return owner


def _heads(encoder: M3Encoder, hidden: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    sparse = colbert = None
    if encoder.sparse_linear is not None:
        sparse = torch.relu(encoder.sparse_linear(hidden)).squeeze(-1)
    if encoder.colbert_linear is not None:
        colbert = F.normalize(encoder.colbert_linear(hidden), dim=-1)
    return sparse, colbert


def encode_document(
    encoder: M3Encoder,
    text: str,
    *,
    overlap: int | None = None,
    window: int | None = None,
    max_tokens: int | None = None,
) -> DocumentEncoding:
    """Token-level outputs of a whole document (see the module docstring).

    ``window`` (content tokens per forward, default and upper bound: the encoder limit minus
    its special tokens) and ``overlap`` (default ``window // 4``) only matter for documents
    longer than the window. Raises ``ValueError`` for empty or whitespace-only text and for
    more than ``max_tokens`` tokens (checked before any forward).
    """
    started = time.perf_counter()
    cleaned, char_map = _clean_with_map(text)
    tok = encoder.tokenizer
    enc = tok(cleaned, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    n = len(ids)
    if n == 0:
        raise ValueError("the document has no tokens: nothing to encode")
    if max_tokens is not None and n > max_tokens:
        raise ValueError(
            f"the document has {n} retriever tokens, over the retriever's document limit of "
            f"{max_tokens} tokens"
        )
    prefix, suffix = _special_affixes(tok)
    prefix = prefix + _prompt_ids(encoder, "passage")  # e5: every window reads "passage: ..."
    limit = encoder.max_length - len(prefix) - len(suffix)
    window = limit if window is None else int(window)
    if not 1 <= window <= limit:
        raise ValueError(f"window must be in 1..{limit} content tokens, got {window}")
    overlap = window // 4 if overlap is None else int(overlap)
    windows = plan_windows(n, window, overlap)
    owner = _owners(n, windows)

    hidden_out = np.empty((n, encoder.hidden_size), dtype=np.float32)
    sparse_out = np.empty(n, dtype=np.float32) if encoder.has_sparse else None
    colbert_out = (
        np.empty((n, encoder.colbert_dim), dtype=np.float32) if encoder.has_colbert else None
    )
    width = len(prefix) + (windows[0][1] - windows[0][0]) + len(suffix)
    per_batch = max(1, min(encoder.batch_size, encoder.max_batch_tokens // width))
    p = len(prefix)
    with torch.inference_mode():
        for first in range(0, len(windows), per_batch):
            group = list(range(first, min(first + per_batch, len(windows))))
            rows = [prefix + ids[windows[w][0] : windows[w][1]].tolist() + suffix for w in group]
            input_ids = torch.tensor(rows, dtype=torch.long, device=encoder.device)
            hidden = encoder.model(input_ids=input_ids).last_hidden_state
            for row, w in enumerate(group):
                a, b = windows[w]
                keep = np.nonzero(owner[a:b] == w)[0]
                if len(keep) == 0:
                    continue
                h = hidden[row, torch.as_tensor(p + keep, device=hidden.device)]
                sparse, colbert = _heads(encoder, h)
                hidden_out[a + keep] = h.float().cpu().numpy()
                if sparse_out is not None and sparse is not None:
                    sparse_out[a + keep] = sparse.float().cpu().numpy()
                if colbert_out is not None and colbert is not None:
                    colbert_out[a + keep] = colbert.float().cpu().numpy()
    if sparse_out is not None and encoder.unused_token_ids:
        sparse_out[np.isin(ids, list(encoder.unused_token_ids))] = 0.0
    return DocumentEncoding(
        text=cleaned,
        char_map=char_map,
        input_ids=ids,
        offsets=offsets,
        hidden=hidden_out,
        sparse=sparse_out,
        colbert=colbert_out,
        windows=windows,
        owner=owner,
        seconds=time.perf_counter() - started,
    )


def _prompt(encoder: M3Encoder, name: str) -> str:
    """The encoder folder's prompt of that name (e5: ``"query: "`` / ``"passage: "``), or ""."""
    prompts = getattr(encoder, "prompts", None) or {}
    return prompts.get(name, "") or ""


def _prompt_ids(encoder: M3Encoder, name: str) -> list[int]:
    """Token ids of a prompt as it starts a text (trailing space left to the text's first
    word, as joint tokenization does); ``[]`` without a prompt."""
    prompt = _prompt(encoder, name).rstrip()
    if not prompt:
        return []
    return list(encoder.tokenizer(prompt, add_special_tokens=False)["input_ids"])


def encode_query(encoder: M3Encoder, query: str) -> QueryEncoding:
    """One forward of the query (an error if it is empty or over the encoder limit).

    The folder's ``"query"`` prompt, if any, is prepended as :meth:`M3Encoder.encode` does;
    ``dense`` is pooled as the encoder pools (``[CLS]``, or the mean for e5), ``mean`` over
    the query's own tokens (no specials, no prompt).
    """
    if not isinstance(query, str):
        raise TypeError(f"the query must be a str, got {type(query).__name__}")
    if not query.strip():
        raise ValueError("the query is empty or whitespace only")
    text = _prompt(encoder, "query") + clean_text(query)
    ids = encoder.tokenize([text], max_length=encoder.max_length, truncation=True)[0]
    if len(ids) >= encoder.max_length:  # cut at the limit: was it longer?
        full = len(encoder.tokenizer(text, verbose=False)["input_ids"])
        if full > encoder.max_length:
            raise ValueError(
                f"the query has {full} tokens, over the retriever's limit of "
                f"{encoder.max_length} tokens"
            )
    prefix, suffix = _special_affixes(encoder.tokenizer)
    prompt_ids = _prompt_ids(encoder, "query")
    if ids[len(prefix) : len(prefix) + len(prompt_ids)] == prompt_ids:
        prefix = prefix + prompt_ids
    with torch.inference_mode():
        hidden = encoder.model(
            input_ids=torch.tensor([ids], dtype=torch.long, device=encoder.device)
        ).last_hidden_state[0]
        pooled = hidden.mean(dim=0) if getattr(encoder, "pooling", "cls") == "mean" else hidden[0]
        dense = F.normalize(pooled, dim=-1)
        content = hidden[len(prefix) : len(ids) - len(suffix)]
        if len(content) == 0:
            content = hidden
        mean = F.normalize(content.mean(dim=0), dim=-1)
        sparse, colbert = _heads(encoder, hidden)
    lexical = None
    if sparse is not None:
        lexical = {}
        for token_id, w in zip(ids, sparse.float().cpu().tolist(), strict=True):
            if w > 0 and token_id not in encoder.unused_token_ids and w > lexical.get(token_id, 0):
                lexical[token_id] = w
    return QueryEncoding(
        text=query,
        input_ids=list(ids),
        dense=dense.float().cpu().numpy(),
        mean=mean.float().cpu().numpy(),
        lexical=lexical,
        colbert=None if colbert is None else colbert[1:].float().cpu().numpy(),
    )


# ----------------------------------------------------------------------------------------------
# Span scores
# ----------------------------------------------------------------------------------------------


@dataclass
class _UnitStats:
    """Per-unit reductions of a document for one query."""

    colbert_max: np.ndarray | None  # (Q, S) best similarity of each query vector in the unit
    lexical_max: np.ndarray | None  # (K, S) max weight of each query id in the unit
    lexical_w: np.ndarray | None  # (K,) query weights
    hidden_sum: np.ndarray  # (S, H) float64 sums of hidden states
    num_tokens: np.ndarray  # (S,) tokens per unit


class _UnitReducer:
    """Reduces arrays over each unit's tokens.

    A unit that starts inside a token shared with its predecessor owns no token: it is
    reduced to that token (the one containing its start). The other units tile ``[0, n)``.
    """

    def __init__(self, token_ranges: np.ndarray, n: int) -> None:
        self.starts = token_ranges[:, 0]
        self.empty = token_ranges[:, 1] == self.starts
        self.full = np.nonzero(~self.empty)[0]
        self.lookup = np.where(self.empty, self.starts - 1, self.starts).clip(0, n - 1)

    def last_axis(self, values: np.ndarray, ufunc: np.ufunc, **kw: Any) -> np.ndarray:
        """``values`` (..., n) -> (..., S)."""
        reduced = ufunc.reduceat(values, self.starts[self.full], axis=-1, **kw)
        out = np.empty(values.shape[:-1] + (len(self.starts),), dtype=reduced.dtype)
        out[..., self.full] = reduced
        if self.empty.any():
            out[..., self.empty] = values[..., self.lookup[self.empty]]
        return out

    def rows(self, values: np.ndarray, ufunc: np.ufunc, **kw: Any) -> np.ndarray:
        """``values`` (n, ...) -> (S, ...); fast on C-contiguous rows (hidden states)."""
        reduced = ufunc.reduceat(values, self.starts[self.full], axis=0, **kw)
        out = np.empty((len(self.starts),) + values.shape[1:], dtype=reduced.dtype)
        out[self.full] = reduced
        if self.empty.any():
            out[self.empty] = values[self.lookup[self.empty]]
        return out


@dataclass
class _Units:
    """The query-independent part of a document's units, kept with its cached encoding."""

    segments: list[Segment]
    token_ranges: np.ndarray  # (S, 2) encoder-token range of each unit
    hidden_sum: np.ndarray  # (S, H) float64 sums of hidden states

    @property
    def nbytes(self) -> int:
        return self.token_ranges.nbytes + self.hidden_sum.nbytes + 64 * len(self.segments)


def _units(doc: DocumentEncoding, max_chars: int) -> _Units:
    """Units of a document for one segmenter setting (cached inside the encoding)."""
    units = doc.units.get(max_chars)
    if units is None:
        segments = segment(doc.text, max_chars=max_chars)
        token_ranges = _unit_token_ranges(_token_starts(doc.offsets), segments, doc.num_tokens)
        reducer = _UnitReducer(token_ranges, doc.num_tokens)
        hidden_sum = reducer.rows(doc.hidden, np.add, dtype=np.float64)
        units = _Units(segments, token_ranges, hidden_sum)
    return units


def _reduce_units(doc: DocumentEncoding, query: QueryEncoding, units: _Units) -> _UnitStats:
    n = doc.num_tokens
    token_ranges = units.token_ranges
    starts = token_ranges[:, 0]
    counts = token_ranges[:, 1] - token_ranges[:, 0]
    empty = counts == 0
    lookup = np.where(empty, starts - 1, starts).clip(0, n - 1)
    reducer = _UnitReducer(token_ranges, n)

    colbert_max = None
    if doc.colbert is not None and query.colbert is not None:
        sims = query.colbert @ doc.colbert.T  # (Q, n)
        colbert_max = reducer.last_axis(sims, np.maximum)
    lexical_max = lexical_w = None
    if doc.sparse is not None and query.lexical is not None:
        qids = np.fromiter(query.lexical.keys(), dtype=np.int64, count=len(query.lexical))
        lexical_w = np.fromiter(query.lexical.values(), dtype=np.float64, count=len(qids))
        lexical_max = np.zeros((len(qids), len(starts)))
        if len(qids):
            order = np.argsort(qids)
            sorted_ids = qids[order]
            pos = np.searchsorted(sorted_ids, doc.input_ids).clip(0, len(qids) - 1)
            hit = np.nonzero(sorted_ids[pos] == doc.input_ids)[0]
            unit_of_token = np.searchsorted(starts, hit, side="right") - 1
            # Units ordered by start; ties (empty units) resolve to the last unit starting there.
            np.maximum.at(lexical_max, (order[pos[hit]], unit_of_token), doc.sparse[hit])
            for u in np.nonzero(empty)[0]:
                k = np.nonzero(qids == doc.input_ids[lookup[u]])[0]
                if len(k):
                    lexical_max[k, u] = doc.sparse[lookup[u]]
    return _UnitStats(colbert_max, lexical_max, lexical_w, units.hidden_sum, np.maximum(counts, 1))


def _score_spans(
    stats: _UnitStats, query: QueryEncoding, spans: np.ndarray, weights: tuple[float, float, float]
) -> dict[str, np.ndarray | None]:
    """Components and hybrid of each span ``[s, e)`` of units (rows of ``spans``)."""
    m = len(spans)
    widths = spans[:, 1] - spans[:, 0]
    dense = np.empty(m)
    sparse = np.empty(m) if stats.lexical_max is not None else None
    colbert = np.empty(m) if stats.colbert_max is not None else None
    q_mean = query.mean.astype(np.float64)
    cm, lm, hs = stats.colbert_max, stats.lexical_max, stats.hidden_sum
    for w in range(1, int(widths.max()) + 1):
        if w > 1:  # sliding max / sum over w consecutive units, start-indexed
            cm = None if cm is None else np.maximum(cm[:, :-1], stats.colbert_max[:, w - 1 :])
            lm = None if lm is None else np.maximum(lm[:, :-1], stats.lexical_max[:, w - 1 :])
            hs = hs[:-1] + stats.hidden_sum[w - 1 :]
        pick = np.nonzero(widths == w)[0]
        if len(pick) == 0:
            continue
        s = spans[pick, 0]
        vec = hs[s]
        norm = np.linalg.norm(vec, axis=1)
        dense[pick] = (vec @ q_mean) / np.maximum(norm, 1e-12)
        if colbert is not None:
            colbert[pick] = cm[:, s].sum(axis=0) / cm.shape[0]
        if sparse is not None:
            sparse[pick] = stats.lexical_w @ lm[:, s] if len(stats.lexical_w) else 0.0
    w_dense, w_sparse, w_colbert = weights
    total = w_dense + (w_sparse if sparse is not None else 0.0)
    total += w_colbert if colbert is not None else 0.0
    hybrid = w_dense * dense
    if sparse is not None:
        hybrid = hybrid + w_sparse * sparse
    if colbert is not None:
        hybrid = hybrid + w_colbert * colbert
    hybrid = hybrid / total if total > 0 else dense
    return {"hybrid": hybrid, "dense": dense, "sparse": sparse, "colbert": colbert}


def _candidate_spans(
    token_counts: np.ndarray, span_sentences: Sequence[int] | None, span_tokens: int | None
) -> np.ndarray:
    """Rows ``[s, e)``: every run of ``k`` units for each ``k`` in ``span_sentences``, or, for a
    token target, from each unit the shortest run reaching ``span_tokens`` tokens."""
    n_units = len(token_counts)
    rows: list[np.ndarray] = []
    if span_tokens is not None:
        if span_tokens < 1:
            raise ValueError(f"span_tokens must be positive, got {span_tokens}")
        cum = np.concatenate([[0], np.cumsum(token_counts)])
        starts = np.arange(n_units)
        ends = np.searchsorted(cum, cum[:-1] + span_tokens, side="left")
        ends = np.clip(ends, starts + 1, np.minimum(n_units, starts + MAX_SPAN_SENTENCES))
        rows.append(np.stack([starts, ends], axis=1))
    else:
        sizes = sorted({int(k) for k in (span_sentences or (1,))})
        if not sizes or sizes[0] < 1 or sizes[-1] > MAX_SPAN_SENTENCES:
            raise ValueError(
                f"span_sentences must be run lengths in 1..{MAX_SPAN_SENTENCES}, got {sizes}"
            )
        for k in sizes:
            k = min(k, n_units)
            starts = np.arange(n_units - k + 1)
            rows.append(np.stack([starts, starts + k], axis=1))
    spans = np.unique(np.concatenate(rows), axis=0)
    return spans.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


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

    ``score[i]``: the best hybrid score of any candidate span containing unit ``i``;
    ``sentence_score`` / ``dense`` / ``sparse`` / ``colbert``: the unit scored alone.
    ``char_offsets`` (S, 2) index the document as given; ``token_offsets`` (S, 2) encoder
    tokens; ``llm_token_offsets`` (S, 2) LLM tokens (``None`` without a tokenizer): ranges that
    tile ``[0, n)``. ``cached``: the document encoding came from the cache.
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


# ----------------------------------------------------------------------------------------------
# Ranker
# ----------------------------------------------------------------------------------------------


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
        self.weights = _check_weights(weights)
        self.cache: EncodingCache[DocumentEncoding] = (
            cache if cache is not None else EncodingCache(cache_bytes)
        )
        self.overlap = overlap
        self.window = window
        self.max_chars = max_chars
        self.fingerprint = model_fingerprint(encoder.path, encoder.dtype, str(encoder.device))

    def document_encoding(self, document: str) -> tuple[DocumentEncoding, bool]:
        """The document's encoding and whether it came from the cache."""
        if not isinstance(document, str):
            raise TypeError(f"document must be a str, got {type(document).__name__}")
        if not document.strip():
            raise ValueError("the document is empty or whitespace only: nothing to rank")
        key = (content_hash(document), self.fingerprint, self.window, self.overlap)

        def compute() -> DocumentEncoding:
            enc = encode_document(
                self.encoder,
                document,
                overlap=self.overlap,
                window=self.window,
                max_tokens=self.max_document_tokens,
            )
            enc.fingerprint = self.fingerprint
            # The units (sentences, their token ranges and hidden-state sums) do not depend on
            # the query: computed once and cached with the encoding.
            enc.units[self.max_chars] = _units(enc, self.max_chars)
            return enc

        return self.cache.get_or_compute(key, compute)

    def _prepare(
        self,
        document: str,
        query: str,
        span_sentences: Sequence[int] | int | None,
        span_tokens: int | None,
        weights: Sequence[float] | None,
        llm_tokenizer: Any,
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        w = self.weights if weights is None else _check_weights(weights)
        q = encode_query(self.encoder, query)
        t1 = time.perf_counter()
        doc, cached = self.document_encoding(document)
        t2 = time.perf_counter()
        units = _units(doc, self.max_chars)
        segments, token_ranges = units.segments, units.token_ranges
        stats = _reduce_units(doc, q, units)
        if isinstance(span_sentences, int):
            span_sentences = (span_sentences,)
        if span_sentences is None and span_tokens is None:
            span_sentences = (1, 2, 3)
        counts = token_ranges[:, 1] - token_ranges[:, 0]
        spans = _candidate_spans(counts, span_sentences, span_tokens)
        scores = _score_spans(stats, q, spans, w)
        t3 = time.perf_counter()
        llm_ranges = llm_n = None
        if llm_tokenizer is not None:
            llm_ranges, llm_n = llm_token_offsets(llm_tokenizer, doc.text, segments)
        chars = np.asarray([(s.start, s.end) for s in segments], dtype=np.int64)
        if doc.char_map is not None:
            chars = doc.char_map[chars]
        timings = {
            "query_s": t1 - t0,
            "document_s": t2 - t1,
            "document_encode_s": 0.0 if cached else doc.seconds,
            "score_s": t3 - t2,
            "llm_offsets_s": time.perf_counter() - t3,
        }
        return {
            "doc": doc,
            "cached": cached,
            "query": q,
            "segments": segments,
            "token_ranges": token_ranges,
            "stats": stats,
            "spans": spans,
            "scores": scores,
            "weights": w,
            "chars": chars,
            "llm_ranges": llm_ranges,
            "llm_n": llm_n,
            "timings": timings,
        }

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
        r = self._prepare(document, query, span_sentences, span_tokens, weights, llm_tokenizer)
        spans, scores, doc = r["spans"], r["scores"], r["doc"]
        order = np.lexsort((spans[:, 1] - spans[:, 0], -scores["hybrid"]))
        taken = np.zeros(len(r["segments"]), dtype=bool)
        out: list[RankedSpan] = []
        for i in order:
            s, e = int(spans[i, 0]), int(spans[i, 1])
            if not allow_overlap:
                if taken[s:e].any():
                    continue
                taken[s:e] = True
            out.append(self._ranked(r, len(out) + 1, i, s, e))
            if len(out) >= top_k:
                break
        return SpanRanking(
            spans=out,
            num_sentences=len(r["segments"]),
            num_tokens=doc.num_tokens,
            llm_num_tokens=r["llm_n"],
            windows=list(doc.windows),
            cached=r["cached"],
            timings=r["timings"],
        )

    def _ranked(self, r: dict[str, Any], rank: int, i: int, s: int, e: int) -> RankedSpan:
        scores, doc, segments = r["scores"], r["doc"], r["segments"]
        a, b = segments[s].start, segments[e - 1].end
        start_char, end_char = int(r["chars"][s, 0]), int(r["chars"][e - 1, 1])
        llm = r["llm_ranges"]
        return RankedSpan(
            rank=rank,
            score=float(scores["hybrid"][i]),
            dense=float(scores["dense"][i]),
            sparse=None if scores["sparse"] is None else float(scores["sparse"][i]),
            colbert=None if scores["colbert"] is None else float(scores["colbert"][i]),
            start_sentence=s,
            end_sentence=e,
            start_char=start_char,
            end_char=end_char,
            start_token=int(r["token_ranges"][s, 0]),
            end_token=int(r["token_ranges"][e - 1, 1]),
            llm_start_token=None if llm is None else int(llm[s, 0]),
            llm_end_token=None if llm is None else int(llm[e - 1, 1]),
            text=doc.text[a:b],
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
    ) -> LandmarkScores:
        """Per-unit scores in document order (see :class:`LandmarkScores`), for the planner."""
        r = self._prepare(document, query, span_sentences, span_tokens, weights, llm_tokenizer)
        spans, scores = r["spans"], r["scores"]
        n_units = len(r["segments"])
        # Best containing span per unit: spans sorted by score, painted best last.
        best = np.full(n_units, -np.inf)
        for w in np.unique(spans[:, 1] - spans[:, 0]):
            pick = np.nonzero(spans[:, 1] - spans[:, 0] == w)[0]
            for offset in range(int(w)):
                np.maximum.at(best, spans[pick, 0] + offset, scores["hybrid"][pick])
        single = np.stack([np.arange(n_units), np.arange(n_units) + 1], axis=1)
        alone = _score_spans(r["stats"], r["query"], single, r["weights"])
        return LandmarkScores(
            segments=r["segments"],
            char_offsets=r["chars"],
            token_offsets=r["token_ranges"],
            llm_token_offsets=r["llm_ranges"],
            llm_num_tokens=r["llm_n"],
            score=best,
            sentence_score=alone["hybrid"],
            dense=alone["dense"],
            sparse=alone["sparse"],
            colbert=alone["colbert"],
            num_tokens=r["doc"].num_tokens,
            windows=list(r["doc"].windows),
            cached=r["cached"],
            timings=r["timings"],
        )
