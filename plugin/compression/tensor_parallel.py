"""Tensor-parallel sharding of the embedder's decoder layers (Megatron-style, as vLLM does).

Under `--tensor-parallel-size N` each rank holds 1/N of every projection of the embedder's
layers, split the way vLLM splits the LLM's own layers:

- column-parallel (output rows split): q_proj (by query heads), k_proj and v_proj (by kv heads;
  replicated when there are fewer kv heads than ranks, rank r holding kv head r // (N / kv),
  as vLLM's `QKVParallelLinear` does), gate_proj and up_proj (by intermediate rows);
- row-parallel (input columns split): o_proj and down_proj; each rank's partial product is
  summed by an all-reduce over vLLM's tensor-parallel group, the bias added once (rank 0);
- replicated: the two RMSNorms per layer and the hidden x hidden output projection (one
  matrix, 1/(12 L) of the layers' weights for a Llama; sharding it would cost an all-gather).

Each rank reads only its slice of every base tensor from the safetensors and merges only its
slice of the LoRA (rows of B for a column-parallel projection, columns of A for a
row-parallel one), so no rank ever materialises the full layers.

Why plain `nn.Linear` with these shapes rather than vLLM's `ColumnParallelLinear` /
`RowParallelLinear`: the math is the same (the all-reduce is vLLM's own
`tensor_model_parallel_all_reduce`, passed in by the model wrapper), but vLLM's layers repack
their weights for oneDNN on the CPU build and drop `.weight`, which would change TP=1 numbers
and break the LoRA merge and peft training that work on plain Linears. With the layers' shapes
and one all-reduce per attention and MLP block as the only differences, TP=1 stays the exact
code path it was, and the GPU path calls the same flash-attn varlen kernel with the rank's heads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .base_model import BaseWeights, DecoderSpec

#: Projections whose output rows are split across ranks, and those whose input columns are.
COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
ROW_PARALLEL = ("o_proj", "down_proj")


@dataclass(frozen=True)
class TensorParallelShard:
    """This rank's place in the tensor-parallel group, and the group's sum over ranks."""

    rank: int
    size: int
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ValueError(f"tensor-parallel rank {self.rank} of size {self.size} is invalid")
        if self.size > 1 and self.all_reduce is None:
            raise ValueError("a tensor-parallel shard of size > 1 needs an all_reduce")

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum ``x`` over the group (identity on one rank)."""
        return x if self.size == 1 else self.all_reduce(x)


def check_shardable(spec: DecoderSpec, size: int) -> None:
    """Raise ValueError, naming the numbers, when the embedder's layers cannot split N ways."""
    heads, kv_heads = spec.num_attention_heads, spec.num_key_value_heads
    problems = []
    if heads % size:
        problems.append(f"its {heads} attention heads are not divisible by {size}")
    if kv_heads >= size and kv_heads % size:
        problems.append(f"its {kv_heads} kv heads are not divisible by {size}")
    if kv_heads < size and size % kv_heads:
        problems.append(f"{size} is not a multiple of its {kv_heads} kv heads")
    if spec.intermediate_size % size:
        problems.append(
            f"its intermediate size {spec.intermediate_size} is not divisible by {size}"
        )
    if problems:
        raise ValueError(
            f"the embedder cannot be sharded over --tensor-parallel-size {size}: "
            + "; ".join(problems)
            + " (use a tensor-parallel size that divides the model's attention heads)"
        )


@dataclass(frozen=True)
class LocalShape:
    """The per-rank sizes of one decoder layer."""

    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    #: first query head, first kv head and first intermediate row held by this rank
    head_start: int
    kv_head_start: int
    intermediate_start: int
    #: whether this rank adds the row-parallel biases (rank 0 only, as vLLM does)
    owns_row_bias: bool


def local_shape(spec: DecoderSpec, shard: TensorParallelShard | None) -> LocalShape:
    """This rank's heads and intermediate rows (the whole layer without a shard)."""
    heads, kv_heads, inter = (
        spec.num_attention_heads,
        spec.num_key_value_heads,
        spec.intermediate_size,
    )
    if shard is None or shard.size == 1:
        return LocalShape(heads, kv_heads, inter, 0, 0, 0, True)
    check_shardable(spec, shard.size)
    size, rank = shard.size, shard.rank
    local_heads, local_inter = heads // size, inter // size
    if kv_heads >= size:
        local_kv, kv_start = kv_heads // size, rank * (kv_heads // size)
    else:  # replicated: size / kv_heads ranks share each kv head
        local_kv, kv_start = 1, rank // (size // kv_heads)
    return LocalShape(
        local_heads,
        local_kv,
        local_inter,
        rank * local_heads,
        kv_start,
        rank * local_inter,
        rank == 0,
    )


def tensor_slice(name: str, spec: DecoderSpec, shape: LocalShape) -> tuple[int, int, int] | None:
    """(dim, start, end) of base tensor ``name`` this rank holds; None when it is whole.

    Row-parallel biases are whole on rank 0; :func:`drops_tensor` says where they are absent.
    """
    parts = name.split(".")
    if len(parts) < 2 or parts[-2] not in COLUMN_PARALLEL + ROW_PARALLEL:
        return None
    proj, kind = parts[-2], parts[-1]
    d = spec.head_dim
    if proj in ("q_proj", "o_proj"):
        span = (shape.head_start * d, (shape.head_start + shape.num_heads) * d)
    elif proj in ("k_proj", "v_proj"):
        span = (shape.kv_head_start * d, (shape.kv_head_start + shape.num_kv_heads) * d)
    else:  # gate_proj, up_proj, down_proj
        span = (shape.intermediate_start, shape.intermediate_start + shape.intermediate_size)
    if proj in ROW_PARALLEL:
        return (1, *span) if kind == "weight" else None
    return (0, *span)


def drops_tensor(name: str, shape: LocalShape) -> bool:
    """Whether this rank holds no copy of ``name`` (a row-parallel bias off rank 0)."""
    parts = name.split(".")
    return (
        not shape.owns_row_bias
        and len(parts) >= 2
        and parts[-2] in ROW_PARALLEL
        and parts[-1] == "bias"
    )


def shard_adapter(
    adapter: dict[str, torch.Tensor], spec: DecoderSpec, shape: LocalShape
) -> dict[str, torch.Tensor]:
    """This rank's slice of a LoRA: W[rows] gets B[rows] @ A, W[:, cols] gets B @ A[:, cols]."""
    out: dict[str, torch.Tensor] = {}
    for key, value in adapter.items():
        module, _, part = key.rpartition(".lora_")
        part = "lora_" + part
        where = tensor_slice(module + ".weight", spec, shape)
        if where is None:
            out[key] = value
            continue
        dim, start, end = where
        if dim == 0 and part.startswith("lora_B"):
            out[key] = value[start:end].contiguous()
        elif dim == 1 and part.startswith("lora_A"):
            out[key] = value[:, start:end].contiguous()
        else:
            out[key] = value
    return out


def read_shard(
    weights: BaseWeights,
    names: list[str],
    spec: DecoderSpec,
    shard: TensorParallelShard | None,
) -> dict[str, torch.Tensor]:
    """The base tensors ``names`` as this rank holds them, reading only its slices."""
    if shard is None or shard.size == 1:
        return {name: weights.get(name) for name in names}
    shape = local_shape(spec, shard)
    state = {}
    for name in names:
        if drops_tensor(name, shape):
            continue
        where = tensor_slice(name, spec, shape)
        state[name] = weights.get(name) if where is None else weights.slice(name, *where)
    return state


__all__ = [
    "COLUMN_PARALLEL",
    "ROW_PARALLEL",
    "LocalShape",
    "TensorParallelShard",
    "check_shardable",
    "drops_tensor",
    "local_shape",
    "read_shard",
    "shard_adapter",
    "tensor_slice",
]
