"""The LLM side of the two-stream objective, shared by training and evaluation.

The frozen LLM reads, per sample, `prefix` tokens, the soft tokens of the context, `suffix`
tokens and the `target` tokens, and we take its next-token negative log-likelihood on the
target. Samples of a batch are right-padded, so plain causal attention needs no mask (real
tokens never see the padding after them) and positions start at 0 as in serving.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .data import Sample


def target_nll(
    llm: nn.Module,
    samples: Sequence[Sample],
    soft: Sequence[torch.Tensor],
    *,
    score_from: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample summed NLL over target[score_from:], and the number of scored tokens.

    `soft[i]` is (m_i, hidden): the compressed context (m_i = 0 for no context; the LLM's own
    token embeddings for the full context). Target token j is predicted from the position just
    before it, so target[0] needs something before it (context, prefix or suffix).
    """
    embed = llm.get_input_embeddings()
    dtype = embed.weight.dtype
    device = embed.weight.device
    sequences, positions, labels, owners = [], [], [], []
    for index, (sample, soft_tokens) in enumerate(zip(samples, soft, strict=True)):
        with torch.no_grad():
            prefix = embed(sample.prefix.to(device))
            suffix = embed(sample.suffix.to(device))
            target = embed(sample.target.to(device))
        sequence = torch.cat([prefix, soft_tokens.to(device, dtype), suffix, target])
        start = prefix.shape[0] + soft_tokens.shape[0] + suffix.shape[0]
        scored = torch.arange(score_from, sample.target.numel())
        if start + int(scored[0]) - 1 < 0:
            raise ValueError("target[0] has nothing before it: use score_from=1")
        sequences.append(sequence)
        positions.append(start + scored - 1)
        labels.append(sample.target[scored])
        owners.append(torch.full((scored.numel(),), index))
    length = max(s.shape[0] for s in sequences)
    batch = torch.zeros(len(sequences), length, sequences[0].shape[1], dtype=dtype, device=device)
    for row, sequence in enumerate(sequences):
        batch[row, : sequence.shape[0]] = sequence
    hidden = llm.model(inputs_embeds=batch).last_hidden_state
    rows = torch.cat(owners).to(device)
    picked = hidden[rows, torch.cat(positions).to(device)]
    logits = llm.lm_head(picked).float()
    nll = nn.functional.cross_entropy(logits, torch.cat(labels).to(device), reduction="none")
    sums = torch.zeros(len(samples), device=device).index_add(0, rows, nll)
    counts = torch.bincount(rows, minlength=len(samples))
    return sums, counts


def load_frozen_llm(folder: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """The base LLM from a Hugging Face folder, frozen, in eval mode."""
    from transformers import AutoModelForCausalLM

    llm = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")
    llm.requires_grad_(False)
    return llm.to(device).eval()
