"""A faster CPU encoder: int8 dynamic quantization of the encoder's linear layers.

Weights are int8 (per output channel), activations are quantized on the fly per batch; the
matrix products run in fbgemm's int8 kernels. The feed-forward output projections
(``*.output.dense`` outside attention) stay float32: their inputs (after GELU) carry the
activation outliers that per-tensor activation scales cannot hold (quantizing them dropped the
mean cosine of multi-vectors to the float32 ones from 0.99 to 0.94 on a 7K-token document).
The lexical and multi-vector heads stay float32 too. CPU only; the float32 path is unchanged.
Opt-in (``M3Encoder(quantize="int8")``, or ``LANDMARK_RETRIEVER_QUANTIZE=int8`` for the
server): it moved nDCG@10 on the retrieval-quality set by more than the 0.005 the project allows
for a default (``eval/RESULTS.md``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

#: Names accepted by ``M3Encoder(quantize=...)``.
QUANTIZE_MODES = ("int8",)


def keeps_float(name: str) -> bool:
    """Linear layers left in float32: the feed-forward output projections."""
    return name.endswith("output.dense") and ".attention." not in name


def quantize_int8(
    model: torch.nn.Module, keep: Callable[[str], bool] = keeps_float
) -> torch.nn.Module:
    """``model`` with its linear layers int8-quantized, but those ``keep`` names."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = {
        name: per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not keep(name)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice (moved to torchao)
        return quantize_dynamic(model, spec, dtype=torch.qint8)
