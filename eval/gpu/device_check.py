"""Device call 2, before training: base model from the GGUF, its fingerprint, a CUDA smoke check.

    python3 eval/gpu/device_check.py --expected .gpu/c2/expected.json --out $OUT [--device cuda]

1. Prints torch / CUDA facts. 2. Converts the GGUF named by VLLM_LANDMARK_SMOLLM2_GGUF into
the float32 folder with the project's own `prepare_default_llm` (into $VLLM_LANDMARK_CACHE) and
prints its base-model fingerprint next to the one of the folder the shipped embedder was trained
on (from expected.json); writes base_model.json. 3. Smoke check (about 20 s): the recipe's tiny
config on a tiny random Llama on the device (train, save, reload, same soft tokens), and the
real 4-layer embedder's packed forward (SDPA per span) against one forward per span, and against
the CPU. Writes device_check.json. Exit status 2 when the base model cannot be made (training
cannot run); a failed smoke check is reported (exit status 0, "smoke_ok": false) so that the
training still runs in this one call.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def cuda_facts(device: str) -> dict:
    facts = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device": device,
    }
    import transformers

    facts["transformers"] = transformers.__version__
    try:
        import peft

        facts["peft"] = peft.__version__
    except ImportError:
        facts["peft"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            torch_cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            sdpa_flash=torch.backends.cuda.flash_sdp_enabled(),
            sdpa_mem_efficient=torch.backends.cuda.mem_efficient_sdp_enabled(),
        )
    return facts


def make_base(expected: dict) -> tuple[Path, dict]:
    from vllm_landmark.compression.embedder import base_model_identity
    from vllm_landmark.default_models import find_gguf_file, prepare_default_llm

    gguf = find_gguf_file()
    started = time.monotonic()
    folder = prepare_default_llm()
    seconds = time.monotonic() - started
    identity = base_model_identity(folder)
    info = {
        "gguf": str(gguf),
        "folder": str(folder),
        "convert_s": round(seconds, 1),
        "name": identity.name,
        "fingerprint": identity.fingerprint,
        "expected_fingerprint": expected.get("base_model_fingerprint"),
        "match": identity.fingerprint == expected.get("base_model_fingerprint"),
        "config": json.loads((folder / "config.json").read_text()),
    }
    return folder, info


def tiny_recipe(device: str, scratch: Path) -> dict:
    """tiny.json on a tiny random Llama on `device`: run, reload, same soft tokens."""
    from recipes.embedder.data import prepare_word_documents
    from recipes.embedder.train import Trainer, tiny_config
    from vllm_landmark.compression.embedder import ExtensibleEmbedder
    from vllm_landmark.testing.tiny_llm import build_tiny_llama

    started = time.monotonic()
    model = build_tiny_llama(scratch / "tiny-llama")
    data = prepare_word_documents(scratch / "data", model, scratch / "docs")
    config = tiny_config(model, data, scratch / "run", device=device)
    trainer = Trainer(config, progress=False)
    final = trainer.run()
    losses = [
        json.loads(line)["loss"]
        for line in (scratch / "run" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["type"] == "train"
    ]
    loaded = ExtensibleEmbedder.from_pretrained(final, model, device=device)
    trainer.embedder.eval()
    spans = [s.context for s in trainer.batch_for(2)]
    factors = [2, 4, 8, 4]
    diff = max(
        float((a - b).abs().max())
        for a, b in zip(
            loaded.embed_spans(spans, factors),
            trainer.embedder.embed_spans(spans, factors),
            strict=True,
        )
    )
    return {
        "steps": len(losses),
        "losses": losses,
        "reload_max_abs_diff": diff,
        "reload_ok": diff < 1e-3,
        "seconds": round(time.monotonic() - started, 1),
    }


def packed_vs_spans(base: Path, device: str) -> dict:
    """The real 4-layer embedder: packed forward vs one forward per span, and vs the CPU."""
    from vllm_landmark.compression.embedder import ExtensibleEmbedder

    started = time.monotonic()
    torch.manual_seed(0)
    embedder = ExtensibleEmbedder.from_base(
        base, num_layers=4, factors=(2, 4, 8, 16, 32), device=device, dtype=torch.float32
    ).eval()
    lengths, factors = [512, 300, 77, 1, 130, 512], [2, 4, 8, 16, 32, 32]
    spans = [torch.randint(0, 49152, (n,)) for n in lengths]

    def max_diff(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> float:
        return max(float((a.cpu() - b.cpu()).abs().max()) for a, b in zip(xs, ys, strict=True))

    result: dict = {"span_lengths": lengths, "factors": factors}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        with torch.no_grad():
            # Exact float32 first (the correctness check), then with TF32 as training runs.
            for mode in ("fp32", "tf32"):
                torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
                packed = embedder(spans, factors)
                single = [embedder([s], [k])[0] for s, k in zip(spans, factors, strict=True)]
                result[f"packed_vs_per_span_max_abs_diff_{mode}"] = max_diff(packed, single)
                if mode == "fp32":
                    exact = packed
            if device != "cpu":
                cpu = embedder.to("cpu")(spans, factors)
                embedder.to(device)
                result["device_fp32_vs_cpu_max_abs_diff"] = max_diff(exact, cpu)
                result["device_tf32_vs_cpu_max_abs_diff"] = max_diff(packed, cpu)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    scale = max(float(p.abs().max()) for p in exact)
    result["max_abs_soft_token"] = scale
    result["shapes_ok"] = [tuple(p.shape) for p in exact] == [
        (-(-n // k), 576) for n, k in zip(lengths, factors, strict=True)
    ]
    # One training-shaped forward + backward through the embedder alone (32 spans of 128-512).
    embedder.attach_lora()
    embedder.train()
    batch = [torch.randint(0, 49152, (random.Random(i).randint(128, 512),)) for i in range(32)]
    ks = [(2, 4, 8, 16, 32)[i % 5] for i in range(32)]
    times = []
    for _ in range(3):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = embedder(batch, ks)
        torch.stack([o.float().pow(2).mean() for o in out]).sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    result["embedder_fwd_bwd_batch32_s"] = [round(t, 4) for t in times]
    result["seconds"] = round(time.monotonic() - started, 1)
    # Soft tokens reach magnitudes of several hundred (SmolLM2's outlier channels): relative.
    relative = result["packed_vs_per_span_max_abs_diff_fp32"] / max(scale, 1.0)
    result["packed_vs_per_span_relative_fp32"] = relative
    result["ok"] = result["shapes_ok"] and relative < 1e-5
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--expected", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--skip-smoke", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))  # run by path on the device: eval/ is not installed there
    from eval.provenance import provenance

    header = provenance(
        "",
        command="python3 eval/gpu/device_check.py " + " ".join(sys.argv[1:]),
        config=vars(args),
        embedder="ExtensibleEmbedder.from_base, untrained (packed_vs_spans)",
    )
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as the recipe does on CUDA
        torch.backends.cudnn.allow_tf32 = True
    facts = cuda_facts(args.device)
    print("torch/cuda:", json.dumps(facts), flush=True)
    expected = json.loads(args.expected.read_text())
    try:
        base, info = make_base(expected)
    except Exception:
        traceback.print_exc()
        print("FATAL: could not make the base model folder from the GGUF", flush=True)
        return 2
    (args.out / "base_model.json").write_text(json.dumps(info, indent=2) + "\n")
    verdict = "MATCH" if info["match"] else "MISMATCH (the adapter will not load here as is)"
    print(
        f"base model {info['folder']} converted in {info['convert_s']} s\n"
        f"  fingerprint here     {info['fingerprint']}\n"
        f"  fingerprint expected {info['expected_fingerprint']}\n"
        f"  -> {verdict}",
        flush=True,
    )
    report = {
        "provenance": header,
        "facts": facts,
        "base_model": {k: v for k, v in info.items() if k != "config"},
    }
    smoke_ok = None
    if not args.skip_smoke:
        smoke_ok = True
        for name in ("tiny_recipe", "packed_vs_spans"):
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    if name == "tiny_recipe":
                        report[name] = tiny_recipe(args.device, Path(tmp))
                    else:
                        report[name] = packed_vs_spans(base, args.device)
                    ok = report[name].get("ok", report[name].get("reload_ok"))
                except Exception:
                    report[name] = {"error": traceback.format_exc()}
                    ok = False
            smoke_ok = smoke_ok and bool(ok)
            status = "ok" if ok else "FAILED"
            print(f"smoke {name}: {status} {json.dumps(report[name])}", flush=True)
    report["smoke_ok"] = smoke_ok
    if args.device == "cuda":
        report["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    (args.out / "device_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"device check done: smoke_ok={smoke_ok}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
