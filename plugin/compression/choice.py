"""Which k>1 embedder serves a model: a trained checkpoint, or the untrained mean baseline.

`--landmark-embedder` takes `auto` (default: the bundled trained embedder made for the served
base model if there is one, else none: documents are never compressed, only cut to their best
spans), `mean-baseline` (the untrained mean of k token embeddings, for experiments: it reads
worse than leaving text out), or a checkpoint folder.
Both the API server (to plan with the factors the embedder was trained for) and the workers
(to load it) resolve the same way; the answer only depends on the files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..config import ALLOWED_FACTORS, MEAN_BASELINE, EmbedderSetting, parse_embedder
from ..hf_folders import find_model_folder
from .embedder_config import EMBEDDER_CONFIG_NAME, EmbedderConfig

logger = logging.getLogger(__name__)

NO_EMBEDDER_NAME = "none"


@dataclass(frozen=True)
class EmbedderChoice:
    name: str  # "none", "mean-baseline" or the checkpoint folder's name
    path: str | None  # None for "none" and the mean baseline
    factors: tuple[int, ...]  # factors it can serve besides k=1 (empty for "none")
    #: The factors the planner may choose by itself: a checkpoint's
    #: `EmbedderConfig.planning_factors` (those its factor_help record shows to help, or all it
    #: was trained for without a record). None: all of `factors`.
    helpful: tuple[int, ...] | None = None

    @property
    def planning_factors(self) -> tuple[int, ...]:
        return self.factors if self.helpful is None else self.helpful


#: No k>1 embedder: every kept token is read at k=1.
NO_EMBEDDER = EmbedderChoice(NO_EMBEDDER_NAME, None, ())


def _checkpoint(folder: Path) -> EmbedderChoice:
    """A checkpoint folder as a choice (its config read once, with the version check)."""
    config = EmbedderConfig.from_folder(folder)
    return EmbedderChoice(folder.name, str(folder), config.factors, config.planning_factors())


def resolve_model_folder(model: str) -> Path | None:
    """The local folder of a served model (a path, or a repo id in the local HF cache)."""
    return find_model_folder(model)


@lru_cache(maxsize=16)
def resolve_embedder(setting: EmbedderSetting | str, model: str) -> EmbedderChoice:
    """The embedder `setting` (`LandmarkConfig.embedder`, or its flag syntax) means for
    `model` (see the module docstring)."""
    setting = parse_embedder(setting)
    mean = EmbedderChoice(MEAN_BASELINE.value, None, tuple(k for k in ALLOWED_FACTORS if k > 1))
    if setting is MEAN_BASELINE:
        return mean
    if isinstance(setting, Path):
        folder = setting.expanduser()
        if not (folder / EMBEDDER_CONFIG_NAME).is_file():
            raise ValueError(f"embedder folder {folder} has no {EMBEDDER_CONFIG_NAME}")
        return _checkpoint(folder)
    model_folder = resolve_model_folder(model)
    if model_folder is not None:
        from .embedder import find_shipped_embedder

        try:
            folder = find_shipped_embedder(model_folder)
        except Exception as exc:  # noqa: BLE001 - an unusual layout: fall back, say why
            logger.warning("vllm-landmark: cannot fingerprint %s (%s)", model_folder, exc)
            folder = None
        if folder is not None:
            return _checkpoint(folder)
    logger.info(
        "vllm-landmark: no trained embedder for %s; documents over their share are cut to "
        "their best spans at k=1 (--landmark-embedder mean-baseline compresses untrained)",
        model,
    )
    return NO_EMBEDDER
