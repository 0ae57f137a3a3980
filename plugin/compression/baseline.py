"""The untrained k>1 embedder: the mean of each run of k consecutive token embeddings.

It exists as a clearly named baseline for comparison (and as the default until a trained
embedder is configured); k=1 returns the LLM's own token embeddings unchanged.
"""

from __future__ import annotations

import torch


def mean_pool_groups(token_embeds: torch.Tensor, factor: int) -> torch.Tensor:
    """Average each group of `factor` consecutive rows; the last group may be shorter.

    (n, h) -> (ceil(n / factor), h). Computed in float32 and cast back, so the result does
    not depend on the batch it came with.
    """
    if factor == 1:
        return token_embeds
    num_tokens, hidden = token_embeds.shape
    num_groups = -(-num_tokens // factor)
    padded = token_embeds.new_zeros((num_groups * factor, hidden), dtype=torch.float32)
    padded[:num_tokens] = token_embeds.float()
    sums = padded.view(num_groups, factor, hidden).sum(dim=1)
    counts = torch.full((num_groups, 1), float(factor), device=token_embeds.device)
    counts[-1, 0] = float(num_tokens - (num_groups - 1) * factor)
    return (sums / counts).to(token_embeds.dtype)
