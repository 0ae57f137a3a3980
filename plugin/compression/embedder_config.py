"""What an embedder folder's ``embedder_config.json`` holds, and its one reader.

Cheap to import (no torch): the API server reads a checkpoint's factors with
:meth:`EmbedderConfig.from_folder`, which checks the format version.

Format 1 may hold an optional ``factor_help`` record (:class:`FactorHelp`): for each factor,
how much its soft tokens change the answer versus dropping that text, measured on held-out
QA. Readers that predate it ignore it and plan with every trained factor, as a checkpoint
without it does; with it, :meth:`EmbedderConfig.planning_factors` keeps only the factors
that help.
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
class FactorEffect:
    """One factor's measured effect: mean paired difference and its 95% interval, n items."""

    mean: float
    low: float
    high: float
    n: int

    def __post_init__(self) -> None:
        if not self.low <= self.mean <= self.high or self.n < 1:
            raise ValueError(f"factor effect needs low <= mean <= high and n >= 1, got {self}")


@dataclass(frozen=True)
class FactorHelp:
    """Whether each factor's soft tokens help the answer, versus dropping that text.

    ``splits`` maps a split name ("dev", "test") to ``{factor: FactorEffect}``: the paired
    difference of the answer's log-probability per token between a plan whose remainder is
    compressed at that factor and the same plan with the remainder dropped (same k=1 tokens).
    ``decided_on`` names the split the rule reads (the other is the report).

    The rule (:meth:`helps`): a factor helps when the lower end of its 95% interval is above
    0. Dropping is the safe default (it costs nothing and cannot derail generation), so a
    factor has to show it helps; a mean above 0 inside the noise is not enough.
    """

    metric: str
    decided_on: str
    splits: dict[str, dict[int, FactorEffect]]
    source: str = ""

    def __post_init__(self) -> None:
        if self.decided_on not in self.splits:
            raise ValueError(
                f"factor_help decides on split {self.decided_on!r}, which it does not record "
                f"(it has {sorted(self.splits)})"
            )

    def helps(self, factor: int) -> bool:
        """Whether ``factor`` helps on the deciding split (unmeasured factors do not)."""
        effect = self.splits[self.decided_on].get(int(factor))
        return effect is not None and effect.low > 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "decided_on": self.decided_on,
            "source": self.source,
            "splits": {
                name: {str(k): dataclasses.asdict(e) for k, e in sorted(effects.items())}
                for name, effects in self.splits.items()
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FactorHelp:
        try:
            splits = {
                str(name): {int(k): FactorEffect(**e) for k, e in effects.items()}
                for name, effects in data["splits"].items()
            }
            return cls(
                metric=str(data["metric"]),
                decided_on=str(data["decided_on"]),
                splits=splits,
                source=str(data.get("source", "")),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{EMBEDDER_CONFIG_NAME}: malformed factor_help ({exc})") from exc


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
    #: Measured help of each factor (optional; None keeps every trained factor for planning).
    factor_help: FactorHelp | None = None

    def __post_init__(self) -> None:
        factors = tuple(sorted({int(k) for k in self.factors}))
        object.__setattr__(self, "factors", factors)
        if not factors or any(k < 2 for k in factors):
            raise ValueError(f"factors must be integers >= 2, got {list(self.factors)}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.pooling != "mean":
            raise ValueError(f"pooling={self.pooling!r}: only 'mean' is implemented")

    def planning_factors(self) -> tuple[int, ...]:
        """The factors a planner may choose by itself: all trained ones, or those that help.

        Without a ``factor_help`` record every trained factor (today's behaviour); with one,
        only those :meth:`FactorHelp.helps` accepts (possibly none: then text that does not
        fit at k=1 is dropped). Explicit plans in requests may still use any trained factor.
        """
        if self.factor_help is None:
            return self.factors
        return tuple(k for k in self.factors if self.factor_help.helps(k))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["factors"] = list(self.factors)
        data["lora"]["target_modules"] = list(self.lora.target_modules)
        if self.factor_help is None:
            del data["factor_help"]
        else:
            data["factor_help"] = self.factor_help.to_dict()
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
            factor_help=(
                FactorHelp.from_dict(data["factor_help"]) if "factor_help" in data else None
            ),
        )
