"""Start-up guard for the private vLLM methods the plugin's own classes override.

Targets vLLM 0.32.x. The "document" modality subclasses vLLM's multimodal classes
(`vllm_landmark.document.processor`); besides the public hooks it overrides these private
methods, whose names and arguments vLLM may change in any release:
- `MultiModalDataParser._get_subparsers` (adds the "document" subparser);
- `BaseMultiModalProcessor._call_hf_processor`, `_get_mm_fields_config`, `_get_prompt_updates`
  (the processor's extension points; there is no Hugging Face processor for documents);
- `BaseMultiModalProcessor._maybe_apply_prompt_updates` (inserts each document's soft tokens
  at its planned position in the prompt).
Nothing is wrapped here: `apply()` only checks them, so a vLLM that renamed one stops at
start-up with a message naming it instead of failing on the first document.
"""

from __future__ import annotations

from .targets import Target, check_targets

TARGET_VLLM = ("0.32",)
_PROCESSOR = "vllm.multimodal.processing.processor"
TARGETS = (
    Target("vllm.multimodal.parse", "MultiModalDataParser._get_subparsers", ("self",)),
    Target(_PROCESSOR, "BaseMultiModalProcessor._call_hf_processor", ("hf_data", "hf_kwargs")),
    Target(
        _PROCESSOR,
        "BaseMultiModalProcessor._get_mm_fields_config",
        ("hf_inputs", "hf_processor_mm_kwargs"),
    ),
    Target(
        _PROCESSOR,
        "BaseMultiModalProcessor._get_prompt_updates",
        ("mm_items", "hf_processor_mm_kwargs", "out_mm_kwargs"),
    ),
    Target(
        _PROCESSOR,
        "BaseMultiModalProcessor._maybe_apply_prompt_updates",
        ("mm_items", "mm_res"),
    ),
)


def apply() -> None:
    """Check the targets (nothing to install)."""
    check_targets(__name__, TARGET_VLLM, TARGETS)
