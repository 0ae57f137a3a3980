"""The embedder's peft LoRA: its config, reading a saved adapter, merging it into plain Linears.

Saved adapters are standard peft files whose keys name the base model's own modules (under
:data:`PEFT_KEY_PREFIX`). Reading and merging need no peft; training (a live adapter) does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from .embedder_config import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, EmbedderConfig

#: Prefix peft's PeftModel puts before module names in a saved adapter.
PEFT_KEY_PREFIX = "base_model.model."


def peft_lora_config(config: EmbedderConfig) -> Any:
    """The peft LoraConfig of an embedder (layers 0..L-1 of the base model); needs peft."""
    from peft import LoraConfig

    lora = config.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        use_rslora=lora.use_rslora,
        bias="none",
        layers_to_transform=list(range(config.num_layers)),
        layers_pattern="layers",
        base_model_name_or_path=config.base_model.name,
    )


def read_adapter(folder: Path, config: EmbedderConfig) -> dict[str, torch.Tensor]:
    """The adapter tensors, after checking adapter_config.json describes plain LoRA."""
    adapter_config = json.loads((folder / ADAPTER_CONFIG_NAME).read_text())
    problems = []
    if adapter_config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type={adapter_config.get('peft_type')!r}")
    if adapter_config.get("use_dora"):
        problems.append("use_dora=true")
    if adapter_config.get("rank_pattern") or adapter_config.get("alpha_pattern"):
        problems.append("rank/alpha patterns")
    lora = config.lora
    if (adapter_config.get("r"), adapter_config.get("lora_alpha")) != (lora.r, lora.alpha):
        problems.append("r/lora_alpha differ from embedder_config.json")
    if bool(adapter_config.get("use_rslora", False)) != lora.use_rslora:
        problems.append("use_rslora differs from embedder_config.json")
    if problems:
        raise ValueError(f"unsupported adapter in {folder}: {', '.join(problems)}")
    with safe_open(folder / ADAPTER_WEIGHTS_NAME, framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118


@torch.no_grad()
def merge_lora(module: nn.Module, adapter: dict[str, torch.Tensor], scaling: float) -> None:
    """W += scaling * B @ A for each adapted projection of ``module``, on plain Linear layers."""
    modules = dict(module.named_modules())
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in adapter.items():
        if not key.startswith(PEFT_KEY_PREFIX):
            raise ValueError(f"adapter tensor {key!r} lacks the {PEFT_KEY_PREFIX!r} prefix")
        name = key[len(PEFT_KEY_PREFIX) :]
        for part in ("lora_A", "lora_B"):
            marker = f".{part}.weight"
            if name.endswith(marker):
                pairs.setdefault(name[: -len(marker)], {})[part] = value
                break
        else:
            raise ValueError(f"unsupported adapter tensor {key!r} (plain LoRA only)")
    for module_name, pair in sorted(pairs.items()):
        target = modules.get(module_name)
        if not isinstance(target, nn.Linear) or set(pair) != {"lora_A", "lora_B"}:
            raise ValueError(f"adapter names {module_name!r}, not a linear layer of the stack")
        delta = pair["lora_B"].float() @ pair["lora_A"].float()
        target.weight.copy_((target.weight.float() + scaling * delta).to(target.weight.dtype))
