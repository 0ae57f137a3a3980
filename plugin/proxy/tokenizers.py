"""The upstream model's tokenizer, which the proxy counts its budget in.

Two kinds, one interface (:class:`UpstreamTokenizer`): exact token counts and the character
offset where each token starts, which is all the span selection needs.

* ``tiktoken:<encoding>`` (``o200k_base``, ``cl100k_base``, ...): OpenAI models. The encoding
  is read from tiktoken's cache (``$TIKTOKEN_CACHE_DIR``), so it works offline once present;
  ``tiktoken:<encoding>=<file>`` reads the rank table from a local ``.tiktoken`` file instead,
  with the encoding's own pattern and special tokens (its hash is checked).
* a Hugging Face tokenizer folder (a fast tokenizer, ``tokenizer.json``): any other model.

Documents are counted as plain text (special-token strings in them are text, as OpenAI and
vLLM count message content), without BOS/EOS.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

TIKTOKEN_PREFIX = "tiktoken:"

_constructor_lock = threading.Lock()


class UpstreamTokenizer(Protocol):
    """Counts tokens of the upstream model exactly."""

    name: str

    def count(self, text: str) -> int:
        """Tokens of ``text`` (no special tokens added)."""
        ...

    def token_starts(self, text: str) -> np.ndarray:
        """Character offset where each token of ``text`` starts (non-decreasing)."""
        ...


def hf_offsets_call(tokenizer: UpstreamTokenizer, text: str, **_: Any) -> dict[str, Any]:
    """A Hugging Face-style encoding (``offset_mapping``) built from token starts."""
    starts = tokenizer.token_starts(text)
    ends = np.append(starts[1:], len(text)) if len(starts) else starts
    return {"offset_mapping": np.stack([starts, ends], axis=1).tolist()}


class TiktokenTokenizer:
    """A ``tiktoken.Encoding``; documents are encoded as ordinary text."""

    def __init__(self, encoding: Any) -> None:
        self.encoding = encoding
        self.name = f"tiktoken:{encoding.name}"

    def count(self, text: str) -> int:
        return len(self.encoding.encode_ordinary(text))

    def token_starts(self, text: str) -> np.ndarray:
        tokens = self.encoding.encode_ordinary(text)
        _, starts = self.encoding.decode_with_offsets(tokens)
        return np.maximum.accumulate(np.asarray(starts, dtype=np.int64)) if starts else np.zeros(0)

    def __call__(self, text: str, **kwargs: Any) -> dict[str, Any]:
        """Offsets as a Hugging Face fast tokenizer gives them (for the span ranker)."""
        return hf_offsets_call(self, text, **kwargs)


class HFTokenizer:
    """A Hugging Face fast tokenizer (offsets needed)."""

    def __init__(self, tokenizer: Any, name: str) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"{name}: a fast tokenizer (tokenizer.json) is needed for offsets")
        self.tokenizer = tokenizer
        self.name = name

    def _encode(self, text: str) -> dict[str, Any]:
        return self.tokenizer(
            text,
            add_special_tokens=False,
            return_offsets_mapping=True,
            split_special_tokens=True,
            verbose=False,
        )

    def count(self, text: str) -> int:
        return len(self._encode(text)["input_ids"])

    def token_starts(self, text: str) -> np.ndarray:
        offsets = np.asarray(self._encode(text)["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        return np.maximum.accumulate(offsets[:, 0]) if len(offsets) else offsets[:, 0]

    def __call__(self, text: str, **kwargs: Any) -> dict[str, Any]:
        return hf_offsets_call(self, text, **kwargs)


def read_rank_file(path: Path, expected_sha256: str | None = None) -> dict[bytes, int]:
    """A ``.tiktoken`` rank table (``base64-token rank`` per line); hash checked if given."""
    data = path.read_bytes()
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise ValueError(f"{path} is not the expected rank table (sha256 differs)")
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def tiktoken_from_file(name: str, path: Path) -> Any:
    """The tiktoken encoding ``name`` with its rank table read from a local file.

    The pattern and special tokens come from tiktoken's own constructor for ``name``; only
    its loader is pointed at ``path`` (the expected hash still applies).
    """
    import tiktoken
    from tiktoken_ext import openai_public

    constructor = openai_public.ENCODING_CONSTRUCTORS.get(name)
    if constructor is None:
        known = ", ".join(sorted(openai_public.ENCODING_CONSTRUCTORS))
        raise ValueError(f"unknown tiktoken encoding {name!r}; known: {known}")

    def load_local(_url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        return read_rank_file(path, expected_hash)

    with _constructor_lock:
        original = openai_public.load_tiktoken_bpe
        openai_public.load_tiktoken_bpe = load_local
        try:
            spec = constructor()
        finally:
            openai_public.load_tiktoken_bpe = original
    return tiktoken.Encoding(**spec)


def load_upstream_tokenizer(spec: str) -> UpstreamTokenizer:
    """``tiktoken:<encoding>``, ``tiktoken:<encoding>=<file>`` or a tokenizer folder."""
    if spec.startswith(TIKTOKEN_PREFIX):
        import tiktoken

        name, _, file = spec[len(TIKTOKEN_PREFIX) :].partition("=")
        if file:
            return TiktokenTokenizer(tiktoken_from_file(name, Path(file).expanduser()))
        try:
            return TiktokenTokenizer(tiktoken.get_encoding(name))
        except Exception as exc:  # noqa: BLE001 - download refused offline, unknown name
            raise ValueError(
                f"cannot load tiktoken encoding {name!r} ({exc}); offline, put its file in "
                f"$TIKTOKEN_CACHE_DIR or give it as tiktoken:{name}=/path/{name}.tiktoken"
            ) from exc
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise ValueError(
            f"upstream tokenizer {spec!r} is neither tiktoken:<encoding> nor a tokenizer folder"
        )
    from transformers import AutoTokenizer

    return HFTokenizer(AutoTokenizer.from_pretrained(str(folder)), name=str(folder))
