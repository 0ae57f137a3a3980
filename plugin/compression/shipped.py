"""Trained embedders shipped inside the package, found by the base model's fingerprint."""

from __future__ import annotations

from pathlib import Path

from .base_model import base_model_identity
from .embedder_config import EMBEDDER_CONFIG_NAME, EmbedderConfig


def shipped_embedders_dir() -> Path:
    """Where trained embedders ship inside the package (vllm_landmark/data/embedders)."""
    return Path(__file__).resolve().parents[1] / "data" / "embedders"


def find_shipped_embedder(
    base_model_folder: str | Path, root: str | Path | None = None
) -> Path | None:
    """The shipped embedder folder trained for this base model (by fingerprint), or None.

    Folders whose ``embedder_config.json`` does not read (another format version, broken
    JSON, missing fields) are skipped.
    """
    root = Path(root) if root is not None else shipped_embedders_dir()
    if not root.is_dir():
        return None
    fingerprint = base_model_identity(base_model_folder).fingerprint
    for config_path in sorted(root.glob(f"*/{EMBEDDER_CONFIG_NAME}")):
        try:
            config = EmbedderConfig.from_folder(config_path.parent)
        except (ValueError, KeyError, TypeError):
            continue
        if config.base_model.fingerprint == fingerprint:
            return config_path.parent
    return None
