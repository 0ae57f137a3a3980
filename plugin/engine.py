"""Turning a LandmarkConfig into vLLM engine arguments (the Python API and the flags use it).

`--landmark` needs no config.json edits: a Hugging Face config override renames the
architecture to LandmarkForCausalLM, remembers the original one, and stores the settings,
so every vLLM process (API server, engine core, workers) sees the same values.
"""

from __future__ import annotations

from typing import Any

from .config import HF_BASE_ARCHITECTURES_KEY, HF_CONFIG_KEY, LandmarkConfig
from .modeling import ARCHITECTURE


class LandmarkHfOverrides:
    """A picklable `hf_overrides` callable that wraps the model in LandmarkForCausalLM."""

    def __init__(self, config: LandmarkConfig, extra: dict[str, Any] | None = None) -> None:
        self.config_dict = config.to_dict()
        self.extra = dict(extra or {})

    def __call__(self, hf_config: Any) -> Any:
        for key, value in self.extra.items():
            setattr(hf_config, key, value)
        architectures = list(getattr(hf_config, "architectures", None) or [])
        if ARCHITECTURE not in architectures:
            if not architectures:
                raise ValueError(
                    "the model config names no architecture; vllm-landmark needs one to wrap"
                )
            setattr(hf_config, HF_BASE_ARCHITECTURES_KEY, architectures)
            hf_config.architectures = [ARCHITECTURE]
        setattr(hf_config, HF_CONFIG_KEY, dict(self.config_dict))
        return hf_config

    def __repr__(self) -> str:
        return f"LandmarkHfOverrides({self.config_dict})"


def engine_kwargs(config: LandmarkConfig | None = None, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM(...)` / `EngineArgs(...)` that enable the plugin.

    Example: `LLM(model=path, **engine_kwargs(LandmarkConfig(budget=1024)))`.
    """
    config = config or LandmarkConfig()
    return {"hf_overrides": LandmarkHfOverrides(config, overrides or None)}
