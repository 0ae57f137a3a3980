"""Time-to-first-token proxy at 32K tokens: plain prefill vs embedder + compressed prefill.

No 32K model can be carried to the device, so this builds a RANDOM-weight Llama of
SmolLM2-135M's exact shape (hidden 576, 30 layers, 9 / 3 heads, head_dim 64, intermediate 1536,
vocab 49152, tied embeddings) with a window that holds the document and the question
(rope_theta 1e6). Timings do not depend on the weight values. In each dtype (bfloat16, then
float32 on CUDA; float32 only on CPU), with transformers' `attn_implementation="sdpa"`:

1. plain: one forward over the document's token ids (random, default 32,768) + a 64-token
   question, `use_cache=True, logits_to_keep=1` (the KV cache is written, the LM head runs on
   the last position only), as a prefill would.
2. landmark at k (32 -> 1,024 soft tokens = a 1K budget; 16 and 8 as extra rows): the
   project's `ExtensibleEmbedder` (untrained `from_base`, the shipped shape: 4 layers, factors
   2..32; LoRA r 16 is merged into the weights at load time when serving, so an untrained stack
   costs the same), sharing the LLM's token embedding as the server does, on the document cut
   into EMBEDDER_WINDOW = 512-token pieces (as `LandmarkForCausalLM._embed_spans`), then the
   LLM's prefill over inputs_embeds = soft tokens + the question's token embeddings.
3. a 1,024-token plain prefill, for the LLM's cost per 1K tokens at a short length.

Each timing: CUDA-synchronized wall time, one warm-up then the median of --runs. Peak memory:
`torch.cuda.max_memory_allocated` after a reset, per part. A row that fails (OOM or anything)
records its error and the next row runs. --max-seconds stops adding rows (and timed runs)
before the time is spent. The JSON is rewritten after every row.

    python eval/gpu/bench_32k.py --out $OUT/bench_32k.json               # the GPU run
    python eval/gpu/bench_32k.py --device cpu --tokens 2048 --runs 1     # a dry run here

Imports only torch, transformers, safetensors and vllm_landmark.compression (no vllm, no
flash-attn: without flash-attn the embedder's packed attention is one SDPA call per piece).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

#: vllm_landmark.modeling.EMBEDDER_WINDOW (not imported: that module needs vllm).
EMBEDDER_WINDOW = 512
#: The shipped SmolLM2-135M embedder's shape (plugin/data/embedders/*/embedder_config.json).
EMBEDDER_LAYERS = 4
EMBEDDER_FACTORS = (2, 4, 8, 16, 32)
LORA_R, LORA_ALPHA = 16, 32
#: SmolLM2-135M's decoder shape.
SMOLLM2_135M = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
}

STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[bench_32k +{time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


def elapsed() -> float:
    return time.monotonic() - STARTED


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_mib(device: torch.device, before: int | None) -> dict[str, float] | None:
    """Peak allocated during a part, absolute and above what was allocated before it."""
    if device.type != "cuda" or before is None:
        return None
    sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {
        "peak_allocated_mib": round(peak / 2**20, 1),
        "peak_above_resident_mib": round((peak - before) / 2**20, 1),
    }


def build_base(folder: Path, window: int, rope_theta: float, seed: int) -> dict:
    """A random-weight Llama of SmolLM2-135M's shape, saved (float32 safetensors) in `folder`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **SMOLLM2_135M,
        max_position_embeddings=window,
        rope_theta=rope_theta,
        attention_bias=False,
        mlp_bias=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, safe_serialization=True)
    data = json.loads((folder / "config.json").read_text())
    data.setdefault("rope_theta", rope_theta)  # DecoderSpec reads it from here or rope_parameters
    (folder / "config.json").write_text(json.dumps(data, indent=2))
    del model
    gc.collect()
    return {"parameters": params, "config": data}


def load_llm(folder: Path, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")
    return model.to(device).eval()


def build_embedder(folder: Path, device: torch.device, dtype: torch.dtype, llm):
    from vllm_landmark.compression.embedder import ExtensibleEmbedder, LoraSettings

    return ExtensibleEmbedder.from_base(
        folder,
        num_layers=EMBEDDER_LAYERS,
        factors=EMBEDDER_FACTORS,
        lora=LoraSettings(r=LORA_R, alpha=LORA_ALPHA),
        device=device,
        dtype=dtype,
        token_embedding=llm.get_input_embeddings(),
    ).eval()


def timed(fn, device: torch.device, runs: int, deadline: float) -> tuple[list[float], object]:
    """One warm-up, then up to `runs` timed calls (fewer when the deadline would pass)."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    warmup = time.perf_counter() - start
    times: list[float] = []
    for _ in range(runs):
        if times and elapsed() + warmup > deadline:  # at least one timed run, always
            break
        del result
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return [warmup, *times], result


def stats(times: list[float]) -> dict:
    """times[0] is the warm-up; the median is over the timed runs (warm-up if none)."""
    timed_runs = times[1:] or times[:1]
    return {
        "median_s": round(statistics.median(timed_runs), 5),
        "min_s": round(min(timed_runs), 5),
        "runs_s": [round(t, 5) for t in timed_runs],
        "warmup_s": round(times[0], 5),
    }


@torch.inference_mode()
def prefill_ids(llm, ids: torch.Tensor) -> torch.Tensor:
    out = llm(input_ids=ids[None], use_cache=True, logits_to_keep=1)
    return out.logits


@torch.inference_mode()
def prefill_embeds(llm, embeds: torch.Tensor) -> torch.Tensor:
    out = llm(inputs_embeds=embeds[None], use_cache=True, logits_to_keep=1)
    return out.logits


@torch.inference_mode()
def embed_document(embedder, doc_ids: torch.Tensor, factor: int) -> torch.Tensor:
    """The server's cut: EMBEDDER_WINDOW-token pieces, one packed call, soft tokens joined."""
    pieces = list(torch.split(doc_ids, EMBEDDER_WINDOW))
    soft = embedder.embed_spans(pieces, [factor] * len(pieces))
    return torch.cat(soft)


def per_1k_ms(seconds: float, tokens: int) -> float:
    return round(1000.0 * seconds / (tokens / 1000.0), 3)


class Bench:
    def __init__(self, args: argparse.Namespace, result: dict, out: Path) -> None:
        self.args = args
        self.result = result
        self.out = out
        self.deadline = float(args.max_seconds)
        self.row_costs: dict[str, float] = {}

    def save(self) -> None:
        self.result["elapsed_s"] = round(elapsed(), 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.result, indent=2) + "\n")
        tmp.replace(self.out)

    def fits(self, key: str, name: str) -> bool:
        estimate = self.row_costs.get(key)
        if estimate is None:  # not run in this dtype yet: 4x the same row in another dtype
            kind = key.rsplit("-", 1)[0]
            others = [cost for k, cost in self.row_costs.items() if k.rsplit("-", 1)[0] == kind]
            estimate = 4.0 * max(others) if others else 0.0
        if elapsed() + estimate > self.deadline:
            log(f"skip {name}: {elapsed():.0f}s spent + ~{estimate:.0f}s > {self.deadline:.0f}s")
            self.result["skipped"].append(name)
            self.save()
            return False
        return True

    def row(self, key: str, name: str, fn) -> dict | None:
        """Run one row, catching any failure; remember its cost to estimate the next like it."""
        if not self.fits(key, name):
            return None
        log(f"row {name} ...")
        start = elapsed()
        record: dict = {"name": name}
        try:
            record.update(fn())
            record["ok"] = True
        except Exception as error:  # noqa: BLE001 - OOM or anything: record it, go on
            record["ok"] = False
            record["error"] = f"{type(error).__name__}: {error}"[:2000]
            record["traceback_tail"] = traceback.format_exc()[-3000:]
            log(f"row {name} FAILED: {record['error'][:300]}")
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        record["row_s"] = round(elapsed() - start, 2)
        self.row_costs[key] = max(self.row_costs.get(key, 0.0), elapsed() - start)
        self.result["rows"].append(record)
        self.save()
        if record["ok"]:
            log(f"row {name} done: {summary_line(record)}")
        return record


def summary_line(record: dict) -> str:
    if "prefill" in record and "embedder" not in record:
        return f"prefill {record['prefill']['median_s']:.4f}s over {record['tokens']} tokens"
    if "embedder" in record:
        return (
            f"embedder {record['embedder']['median_s']:.4f}s + prefill "
            f"{record['prefill']['median_s']:.4f}s = {record['total_s']:.4f}s "
            f"({record['soft_tokens']} soft tokens)"
        )
    return ""


def run_dtype(bench: Bench, folder: Path, device: torch.device, dtype: torch.dtype) -> None:
    args = bench.args
    label = str(dtype).removeprefix("torch.")
    generator = torch.Generator().manual_seed(args.seed)
    vocab = SMOLLM2_135M["vocab_size"]
    doc = torch.randint(3, vocab, (args.tokens,), generator=generator).to(device)
    question = torch.randint(3, vocab, (args.question,), generator=generator).to(device)
    short = torch.randint(3, vocab, (args.short_tokens,), generator=generator).to(device)

    if not bench.fits(f"load-{label}", f"{label} load"):
        return
    log(f"{label}: loading the LLM and the embedder on {device}")
    load_start = elapsed()
    try:
        llm = load_llm(folder, device, dtype)
        embedder = build_embedder(folder, device, dtype, llm)
    except Exception as error:  # noqa: BLE001
        bench.result["rows"].append(
            {
                "name": f"{label} load",
                "ok": False,
                "error": f"{type(error).__name__}: {error}"[:2000],
                "traceback_tail": traceback.format_exc()[-3000:],
            }
        )
        bench.save()
        log(f"{label}: load FAILED: {error}")
        return
    bench.row_costs[f"load-{label}"] = elapsed() - load_start
    resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    bench.result["resident_mib"][label] = None if resident is None else round(resident / 2**20, 1)
    log(f"{label}: loaded in {elapsed() - load_start:.1f}s")
    plain_tokens = args.tokens + args.question
    plain_ids = torch.cat([doc, question])
    deadline = bench.deadline

    def plain(ids: torch.Tensor):
        def fn() -> dict:
            before = reset_peak(device)
            times, _ = timed(lambda: prefill_ids(llm, ids), device, args.runs, deadline)
            prefill = stats(times)
            return {
                "dtype": label,
                "path": "plain",
                "tokens": int(ids.numel()),
                "prefill": prefill,
                "memory": peak_mib(device, before),
                "prefill_ms_per_1k_tokens": per_1k_ms(prefill["median_s"], int(ids.numel())),
            }

        return fn

    def landmark(factor: int):
        def fn() -> dict:
            before = reset_peak(device)
            times, soft = timed(
                lambda: embed_document(embedder, doc, factor), device, args.runs, deadline
            )
            embed_stats = stats(times)
            embed_memory = peak_mib(device, before)
            with torch.inference_mode():
                prompt = torch.cat([soft.to(dtype), llm.get_input_embeddings()(question)])
            before = reset_peak(device)
            times, _ = timed(lambda: prefill_embeds(llm, prompt), device, args.runs, deadline)
            prefill = stats(times)
            prefill_memory = peak_mib(device, before)
            total = embed_stats["median_s"] + prefill["median_s"]
            return {
                "dtype": label,
                "path": "landmark",
                "factor": factor,
                "document_tokens": args.tokens,
                "pieces": math.ceil(args.tokens / EMBEDDER_WINDOW),
                "soft_tokens": int(soft.shape[0]),
                "prompt_tokens": int(prompt.shape[0]),
                "finite": bool(torch.isfinite(soft.float()).all()),
                "embedder": embed_stats,
                "prefill": prefill,
                "total_s": round(total, 5),
                "memory": {"embedder": embed_memory, "prefill": prefill_memory},
                "embedder_ms_per_1k_document_tokens": per_1k_ms(
                    embed_stats["median_s"], args.tokens
                ),
            }

        return fn

    plain_row = bench.row(f"plain-{label}", f"{label} plain {plain_tokens}", plain(plain_ids))
    landmark_rows = {}
    for factor in args.factors:
        record = bench.row(f"landmark-{label}", f"{label} landmark k={factor}", landmark(factor))
        if record is not None:
            landmark_rows[factor] = record
    short_row = bench.row(f"short-{label}", f"{label} plain {args.short_tokens}", plain(short))

    # Ratios of this dtype.
    summary: dict = {"dtype": label}
    if plain_row and plain_row.get("ok"):
        plain_s = plain_row["prefill"]["median_s"]
        summary["plain_prefill_s"] = plain_s
        summary["plain_prefill_ms_per_1k_tokens"] = plain_row["prefill_ms_per_1k_tokens"]
        summary["plain_peak_above_resident_mib"] = (plain_row["memory"] or {}).get(
            "peak_above_resident_mib"
        )
    if short_row and short_row.get("ok"):
        summary["short_prefill_ms_per_1k_tokens"] = short_row["prefill_ms_per_1k_tokens"]
    per_factor = {}
    for factor, record in landmark_rows.items():
        if not record.get("ok"):
            per_factor[str(factor)] = {"error": record.get("error")}
            continue
        entry = {
            "soft_tokens": record["soft_tokens"],
            "embedder_s": record["embedder"]["median_s"],
            "compressed_prefill_s": record["prefill"]["median_s"],
            "total_s": record["total_s"],
            "embedder_ms_per_1k_document_tokens": record["embedder_ms_per_1k_document_tokens"],
        }
        memory = record["memory"]
        if memory["embedder"] is not None:
            entry["embedder_peak_above_resident_mib"] = memory["embedder"][
                "peak_above_resident_mib"
            ]
            entry["prefill_peak_above_resident_mib"] = memory["prefill"]["peak_above_resident_mib"]
        if "plain_prefill_s" in summary and record["total_s"] > 0:
            entry["ttft_x_lower"] = round(summary["plain_prefill_s"] / record["total_s"], 2)
        if "plain_prefill_ms_per_1k_tokens" in summary:
            entry["embedder_vs_plain_prefill_per_1k"] = round(
                record["embedder_ms_per_1k_document_tokens"]
                / summary["plain_prefill_ms_per_1k_tokens"],
                4,
            )
        per_factor[str(factor)] = entry
    summary["landmark"] = per_factor
    bench.result["summary"].append(summary)
    bench.save()
    llm = embedder = None  # free the weights before the next dtype
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def print_table(result: dict) -> None:
    print(flush=True)
    print(
        f"== bench_32k on {result['facts'].get('gpu') or result['facts']['device']} "
        f"({result['document_tokens']} document + {result['question_tokens']} question tokens, "
        f"random-weight SmolLM2-135M shape, window {result['window']})",
        flush=True,
    )
    header = (
        f"{'dtype':<9}{'path':<14}{'tokens':>8}{'embed s':>10}{'prefill s':>11}{'total s':>10}"
        f"{'x lower':>9}{'emb ms/1K':>11}{'LLM ms/1K':>11}{'peak MiB':>10}"
    )
    print(header, flush=True)
    print("-" * len(header), flush=True)
    for summary in result["summary"]:
        dtype = summary["dtype"]
        plain_s = summary.get("plain_prefill_s")
        llm_1k = summary.get("plain_prefill_ms_per_1k_tokens")
        if plain_s is not None:
            print(
                f"{dtype:<9}{'plain':<14}{result['document_tokens'] + result['question_tokens']:>8}"
                f"{'':>10}{plain_s:>11.4f}{plain_s:>10.4f}{'1.00':>9}{'':>11}{llm_1k:>11.3f}"
                f"{_fmt(summary.get('plain_peak_above_resident_mib')):>10}",
                flush=True,
            )
        for factor, entry in summary["landmark"].items():
            if "error" in entry:
                print(f"{dtype:<9}{'k=' + factor:<14} ERROR {entry['error'][:80]}", flush=True)
                continue
            peaks = [
                entry.get("embedder_peak_above_resident_mib"),
                entry.get("prefill_peak_above_resident_mib"),
            ]
            peak = max(peaks) if None not in peaks else None
            print(
                f"{dtype:<9}{'landmark k=' + factor:<14}{entry['soft_tokens']:>8}"
                f"{entry['embedder_s']:>10.4f}{entry['compressed_prefill_s']:>11.4f}"
                f"{entry['total_s']:>10.4f}{_fmt(entry.get('ttft_x_lower')):>9}"
                f"{entry['embedder_ms_per_1k_document_tokens']:>11.3f}{'':>11}"
                f"{_fmt(peak):>10}",
                flush=True,
            )
        if summary.get("short_prefill_ms_per_1k_tokens") is not None:
            print(
                f"{dtype:<9}{'plain short':<14}{result['short_tokens']:>8}{'':>10}{'':>11}{'':>10}"
                f"{'':>9}{'':>11}{summary['short_prefill_ms_per_1k_tokens']:>11.3f}",
                flush=True,
            )
    failed = [row["name"] for row in result["rows"] if not row.get("ok")]
    if failed:
        print(f"failed rows: {failed}", flush=True)
    if result["skipped"]:
        print(f"skipped (time guard): {result['skipped']}", flush=True)
    print(
        "peak MiB = torch.cuda.max_memory_allocated above the resident weights (landmark: the "
        "larger of embedder / prefill)",
        flush=True,
    )


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def sdpa_gqa_probe(device: torch.device) -> dict[str, list[str]]:
    """Which SDPA backends take transformers' call here (causal, no mask, enable_gqa=True).

    Per dtype; a dtype none of flash / efficient / cudnn takes falls back to the math kernel
    (full score matrices: slow and memory-hungry at 32K).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }
    found: dict[str, list[str]] = {}
    for dtype in (torch.bfloat16, torch.float32):
        q = torch.randn(1, 9, 128, 64, device=device, dtype=dtype)
        kv = torch.randn(1, 3, 128, 64, device=device, dtype=dtype)
        ok = []
        for name, backend in backends.items():
            try:
                with sdpa_kernel([backend]):
                    torch.nn.functional.scaled_dot_product_attention(
                        q, kv, kv, is_causal=True, enable_gqa=True
                    )
                ok.append(name)
            except Exception:  # noqa: BLE001, S112 - unsupported here: that is the answer
                continue
        found[str(dtype).removeprefix("torch.")] = ok
    return found


def facts(device: torch.device) -> dict:
    import transformers

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
    }
    try:
        import safetensors

        info["safetensors"] = safetensors.__version__
    except Exception:  # noqa: BLE001
        pass
    from vllm_landmark.compression.attention import flash_attn_available

    info["flash_attn_available"] = flash_attn_available()
    info["embedder_attention"] = (
        "flash_attn_varlen" if flash_attn_available() else "sdpa per piece (no flash-attn)"
    )
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            torch_cuda=torch.version.cuda,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
            sdpa_flash=torch.backends.cuda.flash_sdp_enabled(),
            sdpa_mem_efficient=torch.backends.cuda.mem_efficient_sdp_enabled(),
        )
        try:
            info["sdpa_gqa_backends"] = sdpa_gqa_probe(device)
        except Exception as error:  # noqa: BLE001
            info["sdpa_gqa_backends"] = f"probe failed: {type(error).__name__}: {error}"
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tokens", type=int, default=32768, help="document tokens")
    parser.add_argument("--question", type=int, default=64, help="question tokens")
    parser.add_argument("--short-tokens", type=int, default=1024, help="the short plain prefill")
    parser.add_argument(
        "--window",
        type=int,
        default=None,
        help="max_position_embeddings (default: max(32768, document + question))",
    )
    parser.add_argument("--rope-theta", type=float, default=1e6)
    parser.add_argument(
        "--factors", type=int, nargs="+", default=[32, 16, 8], help="landmark rows, in order"
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=None,
        help="default: bfloat16 float32 on cuda, float32 on cpu",
    )
    parser.add_argument("--runs", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=200.0,
        help="stop adding rows (and timed runs) once this much time is spent",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_32k.json")
    parser.add_argument("--workdir", default=None, help="where the random base model goes")
    args = parser.parse_args(argv)
    for factor in args.factors:
        if factor not in EMBEDDER_FACTORS:
            parser.error(f"factor {factor} is not one of the embedder's {EMBEDDER_FACTORS}")
    if args.window is None:
        args.window = max(32768, args.tokens + args.question)
    if args.dtypes is None:
        args.dtypes = ["bfloat16", "float32"] if args.device.startswith("cuda") else ["float32"]
    return args


def run_provenance(argv: list[str] | None, config: dict, embedder: str | None) -> dict:
    """The result's provenance header (eval/provenance.py; this script runs by path, on a
    machine where the project is not installed, so the repository goes on sys.path)."""
    import shlex

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from eval.provenance import provenance

    args = sys.argv[1:] if argv is None else argv
    command = " ".join(["python " + "eval/gpu/" + Path(__file__).name, *map(shlex.quote, args)])
    return provenance("", argv, config=config, embedder=embedder, command=command)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        log("CUDA is not available here; use --device cpu for a dry run")
        return 2
    out = Path(args.out)
    result: dict = {
        "provenance": run_provenance(argv, vars(args), "ExtensibleEmbedder, untrained from_base"),
        "benchmark": "bench_32k: TTFT proxy, plain prefill vs embedder + compressed prefill",
        "model": "random-weight Llama, SmolLM2-135M shape (timings do not depend on weights)",
        "document_tokens": args.tokens,
        "question_tokens": args.question,
        "short_tokens": args.short_tokens,
        "window": args.window,
        "rope_theta": args.rope_theta,
        "embedder": {
            "class": "vllm_landmark.compression.embedder.ExtensibleEmbedder (untrained from_base)",
            "num_layers": EMBEDDER_LAYERS,
            "factors": list(EMBEDDER_FACTORS),
            "lora_r": LORA_R,
            "lora_note": "serving merges the LoRA into the weights: same cost as untrained",
            "piece_tokens": EMBEDDER_WINDOW,
            "token_embedding": "shared with the LLM (as the server does)",
        },
        "llm": {
            "class": "transformers LlamaForCausalLM",
            "attn_implementation": "sdpa",
            "call": "model(..., use_cache=True, logits_to_keep=1)",
        },
        "timing": f"synchronized wall time; 1 warm-up + median of {args.runs}",
        "args": vars(args),
        "facts": facts(device),
        "resident_mib": {},
        "rows": [],
        "summary": [],
        "skipped": [],
    }
    bench = Bench(args, result, out)
    bench.save()
    log(f"facts: {json.dumps(result['facts'])}")

    with tempfile.TemporaryDirectory(prefix="bench32k-", dir=args.workdir) as tmp:
        folder = Path(tmp) / "smollm2-135m-shape-random"
        log(f"building the random base model (window {args.window}) in {folder}")
        try:
            result["base_model"] = build_base(folder, args.window, args.rope_theta, args.seed)
            result["base_model"].pop("config", None)
            log(f"base model: {result['base_model']['parameters']:,} parameters")
        except Exception as error:  # noqa: BLE001
            result["base_model_error"] = f"{type(error).__name__}: {error}"
            result["traceback_tail"] = traceback.format_exc()[-3000:]
            bench.save()
            log(f"FATAL: cannot build the base model: {error}")
            return 3
        bench.save()
        for name in args.dtypes:
            dtype = getattr(torch, name)
            run_dtype(bench, folder, device, dtype)

    result["finished"] = True
    bench.save()
    print_table(result)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
