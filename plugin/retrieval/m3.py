"""BGE-M3 encoder: dense, lexical (sparse) and multi-vector (ColBERT) outputs from one forward.

Outputs and scores follow FlagEmbedding 1.4.2 (``BGEM3FlagModel``), the parity reference; their
definitions are in :mod:`.m3_scores`, the folder's heads, pooling and prompts in :mod:`.m3_folder`,
the text checks and length limit in :mod:`.m3_text`.

Differences from FlagEmbedding, on purpose:

* ``encode`` does not truncate unless asked (``truncation=True``); FlagEmbedding silently cuts
  every text at 512 tokens. An input longer than the limit is an error.
* Empty or whitespace-only texts are errors (FlagEmbedding encodes them as ``<s></s>``).
* Prompts: a folder whose ``config_sentence_transformers.json`` has ``prompts`` (e5:
  ``"query: "`` / ``"passage: "``) gets them prepended by ``encode(prompt_name=...)``, and by
  ``compute_score`` to its queries and passages. BGE-M3 has none: nothing changes for it.
* Lone UTF-16 surrogates (``"\\ud800"``, which Python strings can hold but UTF-8 cannot encode,
  and which make the tokenizer raise) are replaced with U+FFFD; a high+low surrogate pair is
  joined into the character it encodes.
* ``compute_score`` scores every pair on its own. FlagEmbedding scores a batch of pairs with
  zero vectors standing in for the padding of shorter passages, so there the ColBERT maximum
  of a query token over a shorter passage is never below 0 (only visible when similarities
  are negative). Its default weights are ``[1, 1, 1]``; here they are ``DEFAULT_WEIGHTS``.
* The tokenizer is read from ``tokenizer.json`` as written (as transformers 4 did, and so
  FlagEmbedding). transformers 5's ``XLMRobertaTokenizer`` rebuilds its own pipeline from the
  vocabulary, which tokenizes trailing spaces and spaces before special tokens differently.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
import torch.nn.functional as F

from .m3_folder import load_heads, read_pooling, read_prompts, resolve_folder
from .m3_scores import (
    DEFAULT_WEIGHTS,
    M3Output,
    ScoreKey,
    as_pairs,
    check_weights,
    colbert_score,
    dense_score,
    hybrid_score,
    lexical_matching_score,
    pair_scores,
)
from .m3_text import clean_text as clean_text
from .m3_text import max_text_tokens, tokenize_texts

__all__ = [
    "DEFAULT_WEIGHTS",
    "M3Encoder",
    "M3Output",
    "MissingHeadError",
    "colbert_score",
    "dense_score",
    "hybrid_score",
    "lexical_matching_score",
]


class MissingHeadError(RuntimeError):
    """Raised when a sparse or multi-vector output is asked of a folder without that head."""


# ----------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------


class M3Encoder:
    """A BGE-M3 encoder loaded from a local folder (encoder + tokenizer + optional heads).

    One forward pass gives the dense vector, the lexical weights and the multi-vector output.
    Texts are batched longest first; a batch holds at most ``batch_size`` texts and
    ``max_batch_tokens`` padded tokens (a padded batch needs an attention mask, and masked
    attention on the CPU costs memory in ``batch * length**2``; a text alone needs none).
    A folder without ``sparse_linear`` / ``colbert_linear`` is accepted with a warning; asking
    for the missing output raises :class:`MissingHeadError` (heads are never made up at random).
    :attr:`pooling` (``"cls"`` or ``"mean"``) and :attr:`prompts` come from the folder's
    sentence-transformers files when it has them (see the module docstring).
    ``backend="onnx"`` runs the encoder forward on ONNX Runtime (:mod:`.onnx_encoder`, float32,
    CPU; outputs equal torch's to float32 rounding); the default ``"torch"`` is the path the
    FlagEmbedding parity tests check.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 16,
        max_batch_tokens: int = 8192,
        attn_implementation: str = "sdpa",
        quantize: str | None = None,
        backend: str = "torch",
    ) -> None:
        from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerFast

        self.path = resolve_folder(model_path)
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens

        if (self.path / "tokenizer.json").is_file():
            # The file's own pipeline, exactly as transformers 4 (and FlagEmbedding) apply it.
            self.tokenizer = PreTrainedTokenizerFast.from_pretrained(str(self.path))
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        self.model = AutoModel.from_pretrained(
            str(self.path), dtype=dtype, attn_implementation=attn_implementation
        )
        self.model.to(self.device).eval()
        config = self.model.config
        self.hidden_size: int = config.hidden_size
        #: How the dense vector pools the token states: ``"cls"`` (BGE-M3) or ``"mean"`` (e5).
        self.pooling: Literal["cls", "mean"] = read_pooling(self.path)
        #: Text prefixes by name, e.g. ``{"query": "query: ", "passage": "passage: "}`` for e5.
        self.prompts: dict[str, str] = read_prompts(self.path)

        #: The lexical and multi-vector heads; None where the folder has none (warned).
        self.sparse_linear, self.colbert_linear = load_heads(self.path, self.hidden_size)
        for head in (self.sparse_linear, self.colbert_linear):
            if head is not None:
                head.to(device=self.device, dtype=dtype).eval()

        # Ids whose lexical weight is always dropped (same set as FlagEmbedding).
        tok = self.tokenizer
        self.unused_token_ids: frozenset[int] = frozenset(
            tok.convert_tokens_to_ids(getattr(tok, name))
            for name in ("cls_token", "eos_token", "pad_token", "unk_token")
            if getattr(tok, name, None) is not None
        )
        if tok.pad_token_id is None:
            raise ValueError(f"the tokenizer in {self.path} has no pad token")
        self.pad_token_id: int = tok.pad_token_id

        #: The most tokens (special tokens included) the encoder takes in one text.
        self.max_length: int = max_text_tokens(config, tok)

        #: ``None`` (float, exact) or ``"int8"`` (:mod:`.quantize`, CPU only, faster).
        self.quantize: str | None = quantize
        if quantize is not None:
            from .quantize import QUANTIZE_MODES, quantize_int8

            if quantize not in QUANTIZE_MODES:
                raise ValueError(f"quantize={quantize!r}; choose one of {QUANTIZE_MODES}")
            if self.device.type != "cpu" or dtype != torch.float32:
                raise ValueError("int8 quantization runs on the CPU from float32 weights")
            self.model = quantize_int8(self.model)

        #: ``"torch"`` (the FlagEmbedding-parity path) or ``"onnx"`` (:mod:`.onnx_encoder`:
        #: the same float32 forward on ONNX Runtime, CPU only, faster).
        self.backend: str = backend
        #: Document windows per forward (`encoding.encode_document`): ONNX Runtime measured
        #: faster one window at a time than batched; torch batches up to ``batch_size``.
        self.windows_per_forward = 1 if backend == "onnx" else batch_size
        if backend != "torch":
            from .onnx_encoder import BACKENDS, onnx_model

            if backend not in BACKENDS:
                raise ValueError(f"backend={backend!r}; choose one of {BACKENDS}")
            if self.device.type != "cpu" or dtype != torch.float32 or quantize is not None:
                raise ValueError("the onnx backend runs float32 on the CPU, unquantized")
            self.model = onnx_model(self.path)  # the torch weights are dropped

    @property
    def has_sparse(self) -> bool:
        """Whether the lexical (sparse) head was loaded."""
        return self.sparse_linear is not None

    @property
    def has_colbert(self) -> bool:
        """Whether the multi-vector (ColBERT) head was loaded."""
        return self.colbert_linear is not None

    @property
    def colbert_dim(self) -> int | None:
        """Size of a multi-vector output, ``None`` without the head."""
        return None if self.colbert_linear is None else self.colbert_linear.out_features

    # ------------------------------------------------------------------------------------------

    def tokenize(
        self,
        texts: Sequence[str],
        *,
        max_length: int | None = None,
        truncation: bool = False,
        prompt_name: str | None = None,
    ) -> list[list[int]]:
        """Checked token ids (with special tokens) of each text; see :meth:`encode`."""
        prompt = self.prompts.get(prompt_name, "") if prompt_name is not None else ""
        return tokenize_texts(
            self.tokenizer,
            texts,
            self.max_length,
            max_length=max_length,
            truncation=truncation,
            prompt=prompt,
        )

    def _batches(self, lengths: list[int], batch_size: int) -> list[list[int]]:
        """Indices grouped longest first, each batch within batch_size and max_batch_tokens."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches: list[list[int]] = []
        current: list[int] = []
        for i in order:
            width = lengths[current[0]] if current else lengths[i]
            if current and (
                len(current) >= batch_size or (len(current) + 1) * width > self.max_batch_tokens
            ):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches

    def encode(
        self,
        texts: str | Sequence[str],
        *,
        max_length: int | None = None,
        truncation: bool = False,
        return_sparse: bool | None = None,
        return_colbert_vecs: bool | None = None,
        batch_size: int | None = None,
        prompt_name: str | None = None,
    ) -> M3Output:
        """Encode texts; outputs always come as lists/arrays in input order (a str is one text).

        ``max_length`` (default and upper bound: :attr:`max_length`) counts special tokens.
        A longer text is an error unless ``truncation=True``. ``return_sparse`` /
        ``return_colbert_vecs`` default to "if the head is there"; ``True`` without the head
        raises :class:`MissingHeadError`. ``prompt_name`` (e.g. ``"query"``, ``"passage"``)
        prepends that prompt of :attr:`prompts` to every text (none if the folder has no such
        prompt); ``max_length`` then counts the prompt's tokens too.
        """
        want_sparse = self.has_sparse if return_sparse is None else bool(return_sparse)
        want_colbert = (
            self.has_colbert if return_colbert_vecs is None else bool(return_colbert_vecs)
        )
        if want_sparse and not self.has_sparse:
            raise MissingHeadError(
                f"lexical weights need the sparse_linear head, missing in {self.path}"
            )
        if want_colbert and not self.has_colbert:
            raise MissingHeadError(
                f"multi-vector output needs the colbert_linear head, missing in {self.path}"
            )
        ids = self.tokenize(
            [texts] if isinstance(texts, str) else texts,
            max_length=max_length,
            truncation=truncation,
            prompt_name=prompt_name,
        )
        n = len(ids)
        dense: list[np.ndarray | None] = [None] * n
        lexical: list[dict[str, float]] = [{} for _ in range(n)]
        colbert: list[np.ndarray | None] = [None] * n
        lengths = [len(row) for row in ids]
        with torch.inference_mode():
            for batch in self._batches(lengths, batch_size or self.batch_size):
                width = lengths[batch[0]]
                input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    input_ids[row, : lengths[i]] = torch.tensor(ids[i], dtype=torch.long)
                    mask[row, : lengths[i]] = 1
                input_ids, mask = input_ids.to(self.device), mask.to(self.device)
                hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
                if self.pooling == "mean":
                    m = mask.unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * m).sum(dim=1) / m.sum(dim=1)
                else:
                    pooled = hidden[:, 0]
                d = F.normalize(pooled, dim=-1).float().cpu().numpy()
                weights = c = None
                if want_sparse:
                    weights = torch.relu(self.sparse_linear(hidden)).squeeze(-1).float().cpu()
                if want_colbert:
                    c = F.normalize(self.colbert_linear(hidden[:, 1:]), dim=-1).float().cpu()
                for row, i in enumerate(batch):
                    dense[i] = d[row]
                    if weights is not None:
                        lexical[i] = self._lexical(ids[i], weights[row, : lengths[i]])
                    if c is not None:
                        colbert[i] = c[row, : lengths[i] - 1].numpy()
        return M3Output(
            dense_vecs=np.stack(dense).astype(np.float32),  # type: ignore[arg-type]
            lexical_weights=lexical if want_sparse else None,
            colbert_vecs=colbert if want_colbert else None,  # type: ignore[arg-type]
            input_ids=ids,
        )

    def _lexical(self, ids: list[int], weights: torch.Tensor) -> dict[str, float]:
        """Max weight per token id, unused ids and weights <= 0 dropped."""
        result: dict[str, float] = {}
        for token_id, w in zip(ids, weights.tolist(), strict=True):
            if w > 0 and token_id not in self.unused_token_ids:
                key = str(token_id)
                if w > result.get(key, 0.0):
                    result[key] = w
        return result

    # ------------------------------------------------------------------------------------------

    @overload
    def compute_score(
        self,
        pairs: tuple[str, str],
        *,
        max_query_length: int | None = ...,
        max_passage_length: int | None = ...,
        weights: Sequence[float] | None = ...,
        batch_size: int | None = ...,
    ) -> dict[ScoreKey, float]: ...

    @overload
    def compute_score(
        self,
        pairs: Sequence[tuple[str, str]] | Sequence[Sequence[str]],
        *,
        max_query_length: int | None = ...,
        max_passage_length: int | None = ...,
        weights: Sequence[float] | None = ...,
        batch_size: int | None = ...,
    ) -> dict[ScoreKey, list[float]]: ...

    def compute_score(
        self,
        pairs: Any,
        *,
        max_query_length: int | None = None,
        max_passage_length: int | None = None,
        weights: Sequence[float] | None = None,
        batch_size: int | None = None,
    ) -> dict[ScoreKey, Any]:
        """Scores of (query, passage) pairs, with FlagEmbedding's keys and layout.

        Returns ``{"colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense"}`` ->
        list of floats (one per pair), or floats for a single pair given as two strings.
        Queries and passages are truncated to their max lengths (default: the encoder limit).
        ``weights`` are (dense, sparse, colbert), default :data:`DEFAULT_WEIGHTS`; each mixed
        score divides by the sum of the weights it uses ("sparse+dense" is NaN if both are 0).
        Queries take the folder's ``"query"`` prompt and passages its ``"passage"`` prompt, if any.
        """
        weights = check_weights(weights)
        pair_list, single = as_pairs(pairs)
        if not (self.has_sparse and self.has_colbert):
            raise MissingHeadError(
                f"compute_score needs both heads (sparse_linear and colbert_linear), {self.path} "
                "is dense-only; use encode() and dense_score() instead"
            )
        sides = ((0, max_query_length, "query"), (1, max_passage_length, "passage"))
        q, p = (
            self.encode(
                [pair[side] for pair in pair_list],
                max_length=limit,
                truncation=True,
                batch_size=batch_size,
                prompt_name=prompt,
            )
            for side, limit, prompt in sides
        )
        out = pair_scores(q, p, weights)
        if single:
            return {k: v[0] for k, v in out.items()}
        return out  # type: ignore[return-value]
