"""Tensor-parallel embedder: each rank holds 1/TP of the layers, the output equals TP=1.

Two levels, both on real parts:
- the sharded math: two processes joined by a real torch.distributed (gloo) group each load
  their shard of a LoRA checkpoint; their packed outputs equal the whole module's;
- the engine: a tiny 4-head Llama and an embedder trained by the recipe, served by vLLM at
  TP=1 and at TP=2 (one core per rank); same greedy answer, logprobs within float32 noise,
  and each rank's embedder holds half of the sharded weights.

Tolerances: TP=2 sums each attention and MLP output as two partial products (and the LLM does
the same in its own layers), which reorders float32 additions: relative differences of a few
1e-7 per sum, growing through the layers. Measured here: soft tokens 5e-8 apart, logprobs
2e-6 nats. The soft tokens are compared at 1e-5 and the logprobs at 1e-4 nats, room for other
CPUs' summation orders; a missing all-reduce moves the soft tokens by 9e-2.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vllm_landmark.compression.base_model import DecoderSpec
from vllm_landmark.compression.embedder import ExtensibleEmbedder
from vllm_landmark.compression.tensor_parallel import (
    COLUMN_PARALLEL,
    ROW_PARALLEL,
    TensorParallelShard,
    check_shardable,
)
from vllm_landmark.testing.documents import make_document
from vllm_landmark.testing.server_process import free_port
from vllm_landmark.testing.tiny_llm import build_tiny_llama, save_tiny_decoder

SPAN_LENGTHS = (37, 64, 5, 130)
SPAN_FACTORS = (2, 4, 8, 4)


def build_multihead_llama(
    folder: Path, *, heads: int, kv_heads: int, bias: bool = False, seed: int = 0
) -> Path:
    """The tiny tokenizer with a 2-layer Llama of ``heads`` heads (head_dim 32, vLLM's CPU)."""
    import transformers

    build_tiny_llama(folder)  # tokenizer and chat template; the weights are replaced below
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return save_tiny_decoder(
        folder, tokenizer, seed=seed, heads=heads, kv_heads=kv_heads, bias=bias
    )


def lora_checkpoint(base: Path, out: Path) -> Path:
    """An embedder folder with a non-trivial LoRA on every projection (recipe format)."""
    torch.manual_seed(1)
    embedder = ExtensibleEmbedder.from_base(base, num_layers=2, factors=(2, 4, 8))
    embedder.attach_lora()
    with torch.no_grad():
        for name, param in embedder.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
        embedder.projection.weight.add_(torch.randn_like(embedder.projection.weight) * 0.02)
    return embedder.save_pretrained(out)


def spans() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return [torch.randint(0, 1000, (n,), generator=generator) for n in SPAN_LENGTHS]


def sharded_numel(module: torch.nn.Module) -> dict[str, int]:
    """Weight elements of each projection kind (q_proj, ...) over all layers of an embedder."""
    counts: dict[str, int] = {}
    for name, param in module.model.layers.named_parameters():
        proj, kind = name.split(".")[-2:]
        if proj in COLUMN_PARALLEL + ROW_PARALLEL and kind == "weight":
            counts[proj] = counts.get(proj, 0) + param.numel()
    return counts


def row_biases(module: torch.nn.Module) -> int:
    """How many row-parallel (o_proj, down_proj) biases this module holds."""
    return sum(
        1
        for name, _ in module.model.layers.named_parameters()
        if name.endswith(".bias") and name.split(".")[-2] in ROW_PARALLEL
    )


def _all_reduce(x: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(x)
    return x


def _rank_main(rank: int, size: int, port: int, folder: str, base: str, out: str) -> None:
    """One rank: join the gloo group, load this rank's shard, embed the spans, save."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size
    )
    try:
        shard = TensorParallelShard(rank, size, _all_reduce)
        embedder = ExtensibleEmbedder.from_pretrained(folder, base, shard=shard)
        soft = embedder.embed_spans(spans(), list(SPAN_FACTORS))
        result = {"soft": soft, "numel": sharded_numel(embedder), "biases": row_biases(embedder)}
        torch.save(result, f"{out}/rank{rank}.pt")
    finally:
        # Both ranks leave the group together: a rank that tears gloo down while its peer
        # still holds the connection aborts the peer ("terminate called without an active
        # exception", about one run in sixteen here).
        dist.barrier()
        dist.destroy_process_group()


@pytest.mark.parametrize(
    ("heads", "kv_heads", "bias"),
    [(4, 2, False), (4, 1, True)],
    ids=["kv-split", "kv-replicated-biases"],
)
def test_sharded_embedder_equals_the_whole(tmp_path: Path, heads, kv_heads, bias) -> None:
    base = build_multihead_llama(tmp_path / "base", heads=heads, kv_heads=kv_heads, bias=bias)
    folder = lora_checkpoint(base, tmp_path / "embedder")
    whole = ExtensibleEmbedder.from_pretrained(folder, base)
    expected = whole.embed_spans(spans(), list(SPAN_FACTORS))
    mp.start_processes(
        _rank_main,
        args=(2, free_port(), str(folder), str(base), str(tmp_path)),
        nprocs=2,
        start_method="spawn",
    )
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    full = sharded_numel(whole)
    replicated = {"k_proj", "v_proj"} if kv_heads < 2 else set()
    for result in results:
        for got, want in zip(result["soft"], expected, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        for proj, count in full.items():
            assert result["numel"][proj] == (count if proj in replicated else count // 2), proj
    # Row-parallel biases are added once, by rank 0 (vLLM's RowParallelLinear does the same).
    assert [r["biases"] for r in results] == [row_biases(whole), 0]
    assert row_biases(whole) == (4 if bias else 0)
    # The LoRA matters: without it the output moves far past the tolerance.
    plain = ExtensibleEmbedder.from_base(base, num_layers=2, factors=(2, 4, 8))
    moved = plain.embed_spans(spans(), list(SPAN_FACTORS))[0] - expected[0]
    assert moved.abs().max() > 1e-2


def test_heads_not_divisible_by_tp_are_refused() -> None:
    smollm2 = DecoderSpec("llama", 576, 1536, 30, 9, 3, 64, 49152, 1e-5, {"rope_type": "default"})
    with pytest.raises(ValueError, match=r"tensor-parallel-size 2: its 9 attention heads"):
        check_shardable(smollm2, 2)
    check_shardable(smollm2, 3)
    with pytest.raises(ValueError, match="needs an all_reduce"):
        TensorParallelShard(0, 2)


# ------------------------------------------------------------------ the engine at TP=1 and TP=2

QUESTION = "which year was the tower built?"
two_cores = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2,
    reason="TP=2 on vLLM's CPU build binds one core per rank (VLLM_CPU_OMP_THREADS_BIND=0|1)",
)


@pytest.fixture(scope="module")
def tp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_multihead_llama(tmp_path_factory.mktemp("llama-4-heads"), heads=4, kv_heads=2)


@pytest.fixture(scope="module")
def trained_embedder(tp_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint of the recipe: the tiny config's 6 steps (LoRA r=4 on 2 layers)."""
    from recipes.embedder.data import prepare_word_documents
    from recipes.embedder.train import Trainer, tiny_config

    data = prepare_word_documents(
        tmp_path_factory.mktemp("prepared"), tp_model, tmp_path_factory.mktemp("docs")
    )
    config = tiny_config(tp_model, data, tmp_path_factory.mktemp("run"))
    final = Trainer(config, progress=False).run()
    assert final is not None
    return final


def serve(model: Path, embedder: Path, tensor_parallel: int) -> dict:
    """Answer one document request (plan with k=4, 1, 8) and probe every rank's embedder."""
    from vllm import LLM, SamplingParams

    from vllm_landmark import LandmarkConfig, engine_kwargs

    def _probe(worker) -> dict:  # noqa: ANN001 - vLLM's worker; runs inside each rank
        """This rank's embedder: weight elements per projection, and soft tokens of fixed spans.

        Nested and self-contained: cloudpickle sends it by value to each worker process.
        """
        import torch

        embedder = worker.get_model()._embedder
        counts: dict[str, int] = {}
        for name, param in embedder.model.layers.named_parameters():
            proj, kind = name.split(".")[-2:]
            if kind == "weight" and proj.endswith("_proj"):
                counts[proj] = counts.get(proj, 0) + param.numel()
        generator = torch.Generator().manual_seed(7)
        ids = [torch.randint(0, 1000, (n,), generator=generator) for n in (37, 64, 130)]
        soft = embedder.embed_spans(ids, [2, 4, 8])
        shard = embedder.shard
        return {
            "rank": 0 if shard is None else shard.rank,
            "numel": counts,
            "soft": [s.detach().cpu() for s in soft],
        }

    llm = LLM(
        model=str(model),
        dtype="float32",
        max_model_len=512,
        enforce_eager=True,
        tensor_parallel_size=tensor_parallel,
        **engine_kwargs(LandmarkConfig(budget=128, embedder=str(embedder))),
    )
    try:
        tokenizer = llm.get_tokenizer()
        document = make_document(tokenizer, 220, seed=31)
        size = len(tokenizer.encode(document, add_special_tokens=False))
        plan = [[0, 40, 4], [40, 60, 1], [60, size, 8]]
        content = [
            {"type": "document", "document": {"text": document, "plan": plan}},
            {"type": "text", "text": QUESTION},
        ]
        params = SamplingParams(
            temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=0, prompt_logprobs=0
        )
        output = llm.chat([{"role": "user", "content": content}], params)[0]
        answer = output.outputs[0]
        return {
            "prompt": list(output.prompt_token_ids),
            "tokens": list(answer.token_ids),
            "logprobs": [
                lp[t].logprob for lp, t in zip(answer.logprobs, answer.token_ids, strict=True)
            ],
            "prompt_logprobs": [
                lp[t].logprob
                for lp, t in zip(
                    output.prompt_logprobs[1:], output.prompt_token_ids[1:], strict=True
                )
            ],
            "ranks": sorted(llm.collective_rpc(_probe), key=lambda r: r["rank"]),
        }
    finally:
        del llm
        gc.collect()


@pytest.fixture(scope="module")
def single(tp_model: Path, trained_embedder: Path) -> dict:
    return serve(tp_model, trained_embedder, 1)


@pytest.fixture(scope="module")
def sharded(tp_model: Path, trained_embedder: Path, single: dict) -> dict:
    # `single` first: it must start without the binding. One core per rank on the CPU build.
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0|1"
    try:
        return serve(tp_model, trained_embedder, 2)
    finally:
        os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)


@pytest.mark.engine
@two_cores
def test_tp2_engine_answers_as_tp1(single: dict, sharded: dict) -> None:
    assert sharded["prompt"] == single["prompt"]
    assert sharded["tokens"] == single["tokens"]
    for key in ("logprobs", "prompt_logprobs"):
        gap = (torch.tensor(sharded[key]) - torch.tensor(single[key])).abs().max()
        print(f"TP=2 vs TP=1 {key}: max difference {float(gap):.3g} nats")  # shown with -s
        torch.testing.assert_close(
            torch.tensor(sharded[key]), torch.tensor(single[key]), atol=1e-4, rtol=0
        )


@pytest.mark.engine
@two_cores
def test_each_tp2_rank_holds_half_of_the_embedder(single: dict, sharded: dict) -> None:
    (whole,) = single["ranks"]
    assert [r["rank"] for r in sharded["ranks"]] == [0, 1]
    assert set(whole["numel"]) == set(COLUMN_PARALLEL + ROW_PARALLEL)
    for rank in sharded["ranks"]:
        assert rank["numel"] == {proj: n // 2 for proj, n in whole["numel"].items()}
        for got, want in zip(rank["soft"], whole["soft"], strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            gap = float((got - want).abs().max())
            print(f"rank {rank['rank']} soft tokens vs TP=1: max difference {gap:.3g}")
