"""What a BGE-M3-layout folder holds besides the encoder: the two heads, pooling and prompts."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch

from ..hf_folders import find_model_folder, looks_like_repo_id

#: File names of the two heads inside a BGE-M3 folder (``.pt`` first, as FlagEmbedding reads).
HEAD_FILES: dict[str, tuple[str, ...]] = {
    "sparse_linear": ("sparse_linear.pt", "sparse_linear.safetensors"),
    "colbert_linear": ("colbert_linear.pt", "colbert_linear.safetensors"),
}

#: What each head gives, for the warning about a missing one.
HEAD_OUTPUTS = {"sparse_linear": "lexical weights", "colbert_linear": "multi-vector output"}

#: sentence-transformers files read for the pooling mode and the prompts (both optional).
POOLING_FILE = "1_Pooling/config.json"
PROMPTS_FILE = "config_sentence_transformers.json"


def resolve_folder(model_path: str | Path) -> Path:
    """The model's local folder (a path, or a repo id in the local HF cache); else an error."""
    folder = find_model_folder(model_path)
    if folder is not None:
        return folder
    if looks_like_repo_id(model_path):
        raise FileNotFoundError(
            f"{model_path!r} is not a folder and not in the local Hugging Face cache"
        )
    raise FileNotFoundError(f"BGE-M3 model folder not found: {model_path}")


def load_head(folder: Path, name: str) -> dict[str, torch.Tensor] | None:
    """The state dict of head ``name`` (``.pt`` read with ``weights_only``), or None."""
    for file_name in HEAD_FILES[name]:
        file = folder / file_name
        if not file.is_file():
            continue
        if file.suffix == ".pt":
            state = torch.load(file, map_location="cpu", weights_only=True)
        else:
            from safetensors.torch import load_file

            state = load_file(str(file), device="cpu")
        if not isinstance(state, Mapping) or "weight" not in state:
            raise ValueError(f"{file} is not a Linear state dict (no 'weight' entry)")
        unknown = set(state) - {"weight", "bias"}
        if unknown:
            raise ValueError(f"{file} has unexpected entries {sorted(unknown)}")
        return dict(state)
    return None


def linear_from_state(
    state: dict[str, torch.Tensor], in_features: int, out_features: int | None, file: str
) -> torch.nn.Linear:
    """A Linear from a head's state dict, after checking its shape against the encoder."""
    weight = state["weight"]
    if weight.ndim != 2 or weight.shape[1] != in_features:
        raise ValueError(
            f"{file}: weight shape {tuple(weight.shape)} does not fit hidden size {in_features}"
        )
    if out_features is not None and weight.shape[0] != out_features:
        raise ValueError(
            f"{file}: weight shape {tuple(weight.shape)}, expected {out_features} rows"
        )
    linear = torch.nn.Linear(in_features, weight.shape[0], bias="bias" in state)
    linear.load_state_dict(state)
    return linear


def load_heads(
    folder: Path, hidden_size: int
) -> tuple[torch.nn.Linear | None, torch.nn.Linear | None]:
    """The (sparse_linear, colbert_linear) heads of a folder, None for each one it lacks.

    A missing head is a warning naming what is lost (the encoder then raises MissingHeadError
    when that output is asked for); heads are never made up at random.
    """
    heads: list[torch.nn.Linear | None] = []
    missing: list[str] = []
    for name, rows in (("sparse_linear", 1), ("colbert_linear", None)):
        state = load_head(folder, name)
        if state is None:
            missing.append(name)
        heads.append(None if state is None else linear_from_state(state, hidden_size, rows, name))
    if missing:
        files = " / ".join(name for m in missing for name in HEAD_FILES[m])
        how = "dense-only" if len(missing) == 2 else f"without {missing[0]}"
        warnings.warn(
            f"BGE-M3 folder {folder} has no {files}: loaded {how}; "
            f"{' and '.join(HEAD_OUTPUTS[m] for m in missing)} unavailable (asking for them "
            "raises MissingHeadError)",
            UserWarning,
            stacklevel=3,
        )
    return heads[0], heads[1]


def read_pooling(folder: Path) -> Literal["cls", "mean"]:
    """``"mean"`` when the folder's sentence-transformers pooling says so, else ``"cls"``."""
    file = folder / POOLING_FILE
    if not file.is_file():
        return "cls"
    config = json.loads(file.read_text())
    modes = sorted(k for k, v in config.items() if k.startswith("pooling_mode_") and v is True)
    if modes in ([], ["pooling_mode_cls_token"]):
        return "cls"
    if modes == ["pooling_mode_mean_tokens"]:
        return "mean"
    raise ValueError(f"{file}: unsupported pooling {modes} (CLS or mean pooling only)")


def read_prompts(folder: Path) -> dict[str, str]:
    """The ``prompts`` of the folder's ``config_sentence_transformers.json`` (may be empty)."""
    file = folder / PROMPTS_FILE
    if not file.is_file():
        return {}
    prompts = json.loads(file.read_text()).get("prompts") or {}
    if not isinstance(prompts, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()
    ):
        raise ValueError(f"{file}: 'prompts' must map names to strings")
    return dict(prompts)
