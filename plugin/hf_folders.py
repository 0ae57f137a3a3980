"""Where a model's files are: a local folder, or a repo id already in the Hugging Face cache."""

from __future__ import annotations

from pathlib import Path


def looks_like_repo_id(model: str | Path) -> bool:
    """``owner/name`` that is not an existing path: what a Hugging Face repo id looks like."""
    return str(model).count("/") == 1 and not Path(model).expanduser().exists()


def find_model_folder(model: str | Path) -> Path | None:
    """The local folder of a model, or None.

    ``model`` itself when it is a folder; else, for a repo id, its snapshot in the local
    Hugging Face cache (looked up only, never downloaded).
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(model), local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not in the cache"
        return None
