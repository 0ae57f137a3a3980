"""What an embedder folder's ``embedder_config.json`` holds, and its one reader.

Cheap to import (no torch): the API server reads a checkpoint's factors with
:meth:`EmbedderConfig.from_folder`, which checks the format version.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EMBEDDER_CONFIG_NAME = "embedder_config.json"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
PROJECTION_NAME = "projection.safetensors"
FORMAT_VERSION = 1
DEFAULT_TARGET_MODULES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


class EmbedderMismatchError(ValueError):
    """The embedder checkpoint was trained for another base model than the one given."""


@dataclass(frozen=True)
class BaseModelIdentity:
    """Which base LLM an embedder belongs to: a readable name and a content fingerprint."""

    name: str
    fingerprint: str

    def __str__(self) -> str:
        return f"{self.name!r} (fingerprint {self.fingerprint[:16]})"


@dataclass(frozen=True)
class LoraSettings:
    """peft LoRA hyper-parameters of the embedder's decoder layers."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    use_rslora: bool = False

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


@dataclass(frozen=True)
class EmbedderConfig:
    """What `embedder_config.json` holds."""

    base_model: BaseModelIdentity
    num_layers: int
    factors: tuple[int, ...]
    hidden_size: int
    lora: LoraSettings = field(default_factory=LoraSettings)
    pooling: str = "mean"
    format_version: int = FORMAT_VERSION
    #: Free-form notes about how it was trained (steps, data, recipe config); not used to load.
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        factors = tuple(sorted({int(k) for k in self.factors}))
        object.__setattr__(self, "factors", factors)
        if not factors or any(k < 2 for k in factors):
            raise ValueError(f"factors must be integers >= 2, got {list(self.factors)}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.pooling != "mean":
            raise ValueError(f"pooling={self.pooling!r}: only 'mean' is implemented")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["factors"] = list(self.factors)
        data["lora"]["target_modules"] = list(self.lora.target_modules)
        return data

    @classmethod
    def from_folder(cls, folder: str | Path) -> EmbedderConfig:
        """Read `embedder_config.json` only (cheap: e.g. the API server's trained factors)."""
        path = Path(folder) / EMBEDDER_CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{folder} is not an embedder folder: no {EMBEDDER_CONFIG_NAME}"
            )
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbedderConfig:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{EMBEDDER_CONFIG_NAME} has format_version={version!r}; this version of "
                f"vllm_landmark reads {FORMAT_VERSION}"
            )
        lora = dict(data.get("lora", {}))
        lora["target_modules"] = tuple(lora.get("target_modules", DEFAULT_TARGET_MODULES))
        return cls(
            base_model=BaseModelIdentity(**data["base_model"]),
            num_layers=int(data["num_layers"]),
            factors=tuple(data["factors"]),
            hidden_size=int(data["hidden_size"]),
            lora=LoraSettings(**lora),
            pooling=data.get("pooling", "mean"),
            format_version=version,
            training=dict(data.get("training", {})),
        )
