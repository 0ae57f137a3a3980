"""vllm-landmark: serve LLMs over documents longer than their context window.

`register()` is the `vllm.general_plugins` entry point: vLLM calls it in every process.
"""

from __future__ import annotations

from .config import LandmarkConfig, LandmarkConfigError
from .document.marker import DOCUMENT_MARKER

__all__ = ["DOCUMENT_MARKER", "LandmarkConfig", "LandmarkConfigError", "engine_kwargs", "register"]
__version__ = "0.1.0"

_registered = False


def register() -> None:
    """Register LandmarkForCausalLM and apply the patches; safe to call any number of times."""
    global _registered
    if _registered:
        return
    from vllm import ModelRegistry

    from .patches import apply_all

    if "LandmarkForCausalLM" not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(
            "LandmarkForCausalLM", "vllm_landmark.modeling:LandmarkForCausalLM"
        )
    apply_all()
    _registered = True


def engine_kwargs(config: LandmarkConfig | None = None, **overrides: object) -> dict:
    """`LLM(model, **engine_kwargs(LandmarkConfig(...)))` serves `model` with the plugin."""
    from .engine import engine_kwargs as _engine_kwargs

    return _engine_kwargs(config, **overrides)
