"""`LandmarkConfig`: the one place that holds the plugin's settings.

The vLLM flags (`--landmark-*`), the `landmark` CLI and the Python API all fill this object.
It travels to every vLLM process inside the model's Hugging Face config (see `engine.py`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Scaling factors an embedder may use: k document tokens become one soft token.
ALLOWED_FACTORS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)

#: Name of the untrained k>1 embedder: the mean of each k consecutive token embeddings.
MEAN_BASELINE = "mean-baseline"
#: Default embedder setting: a bundled trained embedder for the served model, else the baseline.
AUTO_EMBEDDER = "auto"
#: retriever= this name means the bundled multilingual default (prepared on first use).
DEFAULT_RETRIEVER = "default"

#: Attribute of the Hugging Face config that carries the settings to every process.
HF_CONFIG_KEY = "landmark_config"
#: Attribute of the Hugging Face config that remembers the wrapped model's architectures.
HF_BASE_ARCHITECTURES_KEY = "landmark_base_architectures"


class LandmarkConfigError(ValueError):
    """A setting has a value the plugin cannot use; the message names it and the allowed range."""


@dataclass(frozen=True)
class LandmarkConfig:
    """Settings of the plugin.

    budget: soft tokens one document may take in the prompt. None means half the model window.
    factor: force one scaling factor k for every document. None picks, per document, the
        smallest allowed factor whose compressed length fits the budget.
    factors: the factors the planner may choose from (a subset of ALLOWED_FACTORS).
    embedder: AUTO_EMBEDDER (the bundled trained embedder for the served model if any, else
        the baseline), MEAN_BASELINE (untrained mean pooling) or a trained embedder folder.
    retriever: a BGE-M3-layout folder used to rank spans, or DEFAULT_RETRIEVER for the bundled
        multilingual-e5-small with trained heads (resolved to its prepared folder at once, so
        every process sees the same path). None: no retrieval.
    max_document_tokens: hard limit on one document's length in LLM tokens.
    max_document_chars: hard limit on one document's length in characters, checked before
        tokenizing so oversized input costs nothing.
    placeholder_token: token that marks a document in the prompt; None chooses an unused
        special token of the tokenizer.
    """

    budget: int | None = None
    factor: int | None = None
    factors: tuple[int, ...] = ALLOWED_FACTORS
    embedder: str = AUTO_EMBEDDER
    retriever: str | None = None
    max_document_tokens: int = 1 << 20
    max_document_chars: int = 8 << 20
    placeholder_token: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "factors", tuple(sorted(set(int(k) for k in self.factors))))
        if self.retriever == DEFAULT_RETRIEVER:
            from .default_models import prepare_default_retriever

            object.__setattr__(self, "retriever", str(prepare_default_retriever()))
        self.validate()

    def validate(self) -> None:
        """Raise LandmarkConfigError naming the first invalid setting."""
        if not self.factors:
            raise LandmarkConfigError(f"factors is empty; allowed factors are {ALLOWED_FACTORS}")
        bad = [k for k in self.factors if k not in ALLOWED_FACTORS]
        if bad:
            raise LandmarkConfigError(
                f"factors {bad} are not allowed; choose from {ALLOWED_FACTORS}"
            )
        if self.factor is not None and self.factor not in ALLOWED_FACTORS:
            raise LandmarkConfigError(
                f"factor={self.factor} is not allowed; choose one of {ALLOWED_FACTORS}"
            )
        if self.budget is not None and self.budget < 1:
            raise LandmarkConfigError(f"budget={self.budget} must be a positive token count")
        if self.max_document_tokens < 1:
            raise LandmarkConfigError(
                f"max_document_tokens={self.max_document_tokens} must be positive"
            )
        if self.max_document_chars < 1:
            raise LandmarkConfigError(
                f"max_document_chars={self.max_document_chars} must be positive"
            )
        if (
            self.embedder not in (MEAN_BASELINE, AUTO_EMBEDDER)
            and not Path(self.embedder).expanduser().is_dir()
        ):
            raise LandmarkConfigError(
                f"embedder={self.embedder!r} is neither {AUTO_EMBEDDER!r}, {MEAN_BASELINE!r} "
                "nor an existing folder"
            )
        if self.retriever is not None and not Path(self.retriever).expanduser().is_dir():
            raise LandmarkConfigError(
                f"retriever={self.retriever!r} is neither {DEFAULT_RETRIEVER!r} nor an existing "
                "folder (BGE-M3 layout expected)"
            )

    def resolved_budget(self, max_model_len: int) -> int:
        """The per-document soft-token budget for a model with this window."""
        return self.budget if self.budget is not None else max(1, max_model_len // 2)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["factors"] = list(self.factors)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> LandmarkConfig:
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LandmarkConfigError(
                f"unknown landmark settings {unknown}; known: {sorted(known)}"
            )
        if "factors" in data:
            data["factors"] = tuple(data["factors"])
        return cls(**data)
