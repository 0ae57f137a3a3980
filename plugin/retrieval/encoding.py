"""Encode a whole document once (windowed when it is long) and a query, with the M3 heads.

How a document is encoded (:func:`encode_document`):

* The text is tokenized once by the encoder's tokenizer, with character offsets.
* If its tokens fit the encoder (``max_length`` minus the special tokens: 8,190 content tokens
  for BGE-M3), it is encoded WHOLE in one forward, so every token vector sees the whole
  document. Otherwise it is encoded in overlapping windows of the full encoder length, spread
  evenly so that consecutive windows overlap by at least ``overlap`` tokens (default a quarter
  of the window). Each token keeps the vectors of the window that gives it the most context:
  the window where it is farthest from an edge, an edge that is also the document's own start
  or end not counting as one. With evenly spread windows that is the window whose centre is
  nearest, and every token keeps at least ``overlap / 2`` tokens of context on both sides
  (or everything up to the document's end).
* Windows have one length, so several are batched without padding (no attention mask), up to
  the encoder's ``windows_per_forward`` (one on ONNX Runtime, which measured faster so).
* Streamed, so memory grows with the document by what scoring needs and no more: each
  window's outputs are reduced as it leaves the encoder. Kept per token (content tokens only,
  no ``<s>``/``</s>``): the lexical weight ``relu(sparse_linear(h))`` (0 for the ids
  FlagEmbedding drops) and the normalized multi-vector ``normalize(colbert_linear(h))``. The
  hidden states are not kept: they are summed per unit (sentence, :func:`~.segment.segment`)
  on the way, which is all the dense score reads (:class:`Units`). That is what :mod:`.cache`
  stores: a second question costs one query forward and the scoring. Per token, about
  ``4 * colbert_dim + 32`` bytes (1.6 KB for e5-small, 4.1 KB for BGE-M3).
* A folder with sentence-transformers prompts (e5: ``"query: "`` / ``"passage: "``) gets them
  as :meth:`M3Encoder.encode` does: each window reads ``<s> passage: <tokens> </s>`` (the
  prompt's tokens are not kept), the query ``query: <question>``.

Token offsets: a token belongs to the unit (sentence) in which it starts, for the encoder's
tokens and for the LLM's (:func:`llm_token_offsets`).
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

from .m3 import M3Encoder, clean_text
from .segment import DEFAULT_MAX_CHARS, Segment, segment


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


def special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after a single text."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return list(full[:i]), list(full[i + len(bare) :])
    raise ValueError("cannot find how the tokenizer adds special tokens")


def token_starts(offsets: np.ndarray) -> np.ndarray:
    """Non-decreasing start offsets (a tokenizer may report a smaller start after a larger)."""
    return np.maximum.accumulate(offsets[:, 0]) if len(offsets) else offsets[:, 0]


def unit_token_ranges(starts: np.ndarray, segments: Sequence[Segment], n: int) -> np.ndarray:
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
    return unit_token_ranges(token_starts(offsets), segments, n), n


@dataclass
class Units:
    """A document's units (sentences) and their query-independent reductions.

    ``token_ranges`` (S, 2): the encoder tokens of each unit (:func:`unit_token_ranges`);
    ``hidden_sum`` (S, H) float64: the sum of each unit's token hidden states (a unit that
    owns no token takes the token holding its start, as :class:`UnitReducer` reduces).
    """

    segments: list[Segment]
    token_ranges: np.ndarray
    hidden_sum: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.token_ranges.nbytes + self.hidden_sum.nbytes + 64 * len(self.segments)


class UnitReducer:
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


@dataclass
class DocumentEncoding:
    """Token-level outputs of one document: what the cache keeps (independent of any query).

    ``input_ids`` (n,), ``offsets`` (n, 2) character offsets into ``text`` (the cleaned text),
    ``sparse`` (n,) lexical weights or ``None``, ``colbert`` (n, D) normalized multi-vectors
    or ``None``; ``units`` the sentences for the segmenter's ``max_chars`` with their hidden
    state sums; ``windows``: the content-token ranges encoded (one when the document fits the
    encoder); ``owner`` (n,) the window each token's vectors come from.
    """

    text: str
    char_map: np.ndarray | None
    input_ids: np.ndarray
    offsets: np.ndarray
    sparse: np.ndarray | None
    colbert: np.ndarray | None
    units: Units
    windows: list[tuple[int, int]]
    owner: np.ndarray
    seconds: float
    fingerprint: str = ""

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def nbytes(self) -> int:
        arrays = [self.input_ids, self.offsets, self.owner]
        arrays += [a for a in (self.sparse, self.colbert, self.char_map) if a is not None]
        return sum(a.nbytes for a in arrays) + self.units.nbytes + 2 * len(self.text) + 256


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
    content_ids: list[int] = field(default_factory=list)  # no specials, no prompt


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


def window_owners(n: int, windows: Sequence[tuple[int, int]]) -> np.ndarray:
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


def head_outputs(encoder: M3Encoder, hidden: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """Lexical weights and normalized multi-vectors of hidden states (None: no such head)."""
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
    max_chars: int = DEFAULT_MAX_CHARS,
) -> DocumentEncoding:
    """Token-level outputs of a whole document (see the module docstring).

    ``window`` (content tokens per forward, default and upper bound: the encoder limit minus
    its special tokens) and ``overlap`` (default ``window // 4``) only matter for documents
    longer than the window; ``max_chars`` bounds a unit of the segmenter. Raises
    ``ValueError`` for empty or whitespace-only text and for more than ``max_tokens`` tokens
    (checked before any forward).
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
    prefix, suffix = special_affixes(tok)
    prefix = prefix + _prompt_ids(encoder, "passage")  # e5: every window reads "passage: ..."
    limit = encoder.max_length - len(prefix) - len(suffix)
    window = limit if window is None else int(window)
    if not 1 <= window <= limit:
        raise ValueError(f"window must be in 1..{limit} content tokens, got {window}")
    overlap = window // 4 if overlap is None else int(overlap)
    windows = plan_windows(n, window, overlap)
    owner = window_owners(n, windows)

    segments = segment(cleaned, max_chars=max_chars)
    token_ranges = unit_token_ranges(token_starts(offsets), segments, n)
    counts = token_ranges[:, 1] - token_ranges[:, 0]
    unit_of_token = torch.from_numpy(np.repeat(np.arange(len(segments)), counts))
    reducer = UnitReducer(token_ranges, n)
    borrowers = np.nonzero(reducer.empty)[0]  # units that own no token read this one:
    borrowed = reducer.lookup[borrowers]
    hidden_sum = torch.zeros((len(segments), encoder.hidden_size), dtype=torch.float64)
    sparse_out = np.empty(n, dtype=np.float32) if encoder.has_sparse else None
    colbert_out = (
        np.empty((n, encoder.colbert_dim), dtype=np.float32) if encoder.has_colbert else None
    )
    width = len(prefix) + (windows[0][1] - windows[0][0]) + len(suffix)
    per_batch = max(1, min(encoder.windows_per_forward, encoder.max_batch_tokens // width))
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
                sparse, colbert = head_outputs(encoder, h)
                mine = torch.from_numpy(a + keep)
                h_cpu = h.double().cpu()
                hidden_sum.index_add_(0, unit_of_token[mine], h_cpu)
                lent = np.nonzero((borrowed >= a + keep[0]) & (borrowed <= a + keep[-1]))[0]
                for u, t in zip(borrowers[lent], borrowed[lent], strict=True):
                    hidden_sum[u] = h_cpu[t - a - keep[0]]
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
        sparse=sparse_out,
        colbert=colbert_out,
        units=Units(segments, token_ranges, hidden_sum.numpy()),
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
    prefix, suffix = special_affixes(encoder.tokenizer)
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
        sparse, colbert = head_outputs(encoder, hidden)
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
        content_ids=list(ids[len(prefix) : len(ids) - len(suffix)]),
    )
