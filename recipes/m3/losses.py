"""The three M3 scores on padded batches, and the self-knowledge distillation loss.

Scores match :mod:`vllm_landmark.retrieval.m3` (FlagEmbedding's definitions) pair by pair:
dense = inner product of normalized pooled vectors; sparse = sum over shared token ids of the
product of the per-id maximum weights (special tokens dropped); colbert = mean over the query's
vectors (tokens after CLS) of the best inner product with a passage vector. Padding never takes
part (a padded passage position cannot be a query token's best match, unlike FlagEmbedding's
training code, which lets zero vectors in).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Normalized dense vectors ``(n, hidden)``: CLS or the masked mean of the token states."""
    if mode == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
    else:
        pooled = hidden[:, 0]
    return F.normalize(pooled, dim=-1)


def token_weights(
    hidden: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    sparse_linear: torch.nn.Module,
    unused_ids: Sequence[int],
) -> torch.Tensor:
    """``relu(sparse_linear(h))`` per token ``(n, L)``; padding and unused ids get 0."""
    w = torch.relu(sparse_linear(hidden)).squeeze(-1) * mask.to(hidden.dtype)
    if unused_ids:
        keep = ~torch.isin(ids, torch.as_tensor(list(unused_ids), device=ids.device))
        w = w * keep.to(w.dtype)
    return w


def sparse_scores(
    q_w: torch.Tensor, q_ids: torch.Tensor, p_w: torch.Tensor, p_ids: torch.Tensor
) -> torch.Tensor:
    """Lexical matching scores ``(nq, np)`` from per-token weights (max per id, then dot).

    Ids are mapped to a batch-local vocabulary, so the cost does not grow with the model's.
    """
    all_ids = torch.cat([q_ids.reshape(-1), p_ids.reshape(-1)])
    _, inverse = torch.unique(all_ids, return_inverse=True)
    vocab = int(inverse.max()) + 1
    q_local = inverse[: q_ids.numel()].view_as(q_ids)
    p_local = inverse[q_ids.numel() :].view_as(p_ids)
    q_vec = q_w.new_zeros(q_w.shape[0], vocab).scatter_reduce(
        1, q_local, q_w, reduce="amax", include_self=True
    )
    p_vec = p_w.new_zeros(p_w.shape[0], vocab).scatter_reduce(
        1, p_local, p_w, reduce="amax", include_self=True
    )
    return q_vec @ p_vec.T


def colbert_vectors(
    hidden: torch.Tensor, mask: torch.Tensor, colbert_linear: torch.nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized multi-vectors of the tokens after CLS ``(n, L-1, d)`` and their mask."""
    vecs = F.normalize(colbert_linear(hidden[:, 1:]), dim=-1)
    vmask = mask[:, 1:]
    return vecs * vmask.unsqueeze(-1).to(vecs.dtype), vmask


def colbert_scores(
    q_vecs: torch.Tensor, q_mask: torch.Tensor, p_vecs: torch.Tensor, p_mask: torch.Tensor
) -> torch.Tensor:
    """Late-interaction scores ``(nq, np)``: per query token the best passage token, averaged."""
    sim = torch.einsum("qid,pjd->qpij", q_vecs, p_vecs)
    sim = sim.masked_fill(~p_mask.bool()[None, :, None, :], -1e4)
    best = sim.max(dim=-1).values * q_mask.to(sim.dtype)[:, None, :]
    return best.sum(dim=-1) / q_mask.sum(dim=-1, keepdim=True).clamp_min(1).to(sim.dtype)


def m3_loss(
    scores: dict[str, torch.Tensor],
    group: int,
    *,
    temperature: float,
    teacher_weights: Sequence[float],
    loss_weights: Sequence[float],
) -> tuple[torch.Tensor, dict[str, float]]:
    """BGE-M3 self-knowledge distillation over in-batch + hard negatives.

    ``scores``: ``dense``, ``sparse``, ``colbert`` -> ``(n_queries, n_passages)``; query ``i``'s
    positive is passage ``i * group``. Loss = (sum_k w_k InfoNCE_k + InfoNCE_teacher) / 4 +
    (sum_k w_k KL(teacher || k)) / 3, halved, where the teacher logits are
    ``sum_k t_k s_k / temperature`` and ``softmax`` of them (detached) is the target.
    Returns the loss and its parts (floats) for logging.
    """
    names = ("dense", "sparse", "colbert")
    n_q = next(iter(scores.values())).shape[0]
    target = torch.arange(n_q, device=scores["dense"].device) * group
    logits = {k: scores[k] / temperature for k in names}
    teacher = sum(w * logits[k] for w, k in zip(teacher_weights, names, strict=True))
    target_dist = torch.softmax(teacher.detach(), dim=-1)
    parts: dict[str, torch.Tensor] = {"teacher_nce": F.cross_entropy(teacher, target)}
    contrast = parts["teacher_nce"]
    distill = torch.zeros((), device=teacher.device)
    for w, k in zip(loss_weights, names, strict=True):
        nce = F.cross_entropy(logits[k], target)
        kd = -(target_dist * torch.log_softmax(logits[k], dim=-1)).sum(dim=-1).mean()
        parts[f"{k}_nce"], parts[f"{k}_kd"] = nce, kd
        contrast = contrast + w * nce
        distill = distill + w * kd
    loss = (contrast / 4 + distill / 3) / 2
    out = {k: float(v.detach()) for k, v in parts.items()}
    with torch.no_grad():
        for k in (*names, "teacher"):
            s = teacher if k == "teacher" else logits[k]
            out[f"{k}_acc"] = float((s.argmax(dim=-1) == target).float().mean())
    return loss, out
