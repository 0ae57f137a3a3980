"""Retriever pass over one long document: tokens/s of each encoder mode, and whether rankings move.

    nice -n 10 python -m eval.benchmarks.bench_retriever [--document-tokens 7600] [--runs 3]

The document is ``eval.benchmarks.bench_ttft``'s (the bundled demo document repeated to about 7,600
SmolLM2 tokens); the retriever is the default one (multilingual-e5-small + trained heads).
Modes, timed alternately (so a load change on a shared machine hits all alike); the fastest
of ``--runs`` counts (the run least slowed by other work; the median is kept too):

* ``float32``: the torch forward, the FlagEmbedding-parity path, windows overlapping by a
  quarter (the server's CPU default before ONNX Runtime);
* ``onnx``: the same float32 forward on ONNX Runtime (:mod:`vllm_landmark.retrieval.
  onnx_encoder`, the server's CPU default when onnxruntime is installed);
* ``onnx, overlap 1/8``: ONNX Runtime with half the window overlap (fewer windows);
* ``int8``: :mod:`vllm_landmark.retrieval.quantize` (opt-in, ``LANDMARK_RETRIEVER_QUANTIZE``);
* ``int8, every linear layer`` (``--all-modes`` only): feed-forward outputs quantized too.

Each mode is timed on :func:`~vllm_landmark.retrieval.encoding.encode_document` (the pass
over the document) and on a whole first question (``score_all_spans``, no cache). Rankings:
for a few questions, the overlap of the 10 best sentences with float32's and whether the best
sentence is the same (compared by text: the document repeats itself). Writes
``eval/results/bench_retriever.json`` (``--out`` to keep an earlier run).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from eval.provenance import provenance, write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUESTIONS = (
    "Who designed the rotary snow plough known as the Badger?",
    "When did the railway open?",
    "What powered the locomotives?",
    "Why was the line closed?",
)


def ranked_texts(scores: Any, document: str) -> list[str]:
    """Distinct sentence texts, best first (ties: document order)."""
    order = np.lexsort((np.arange(len(scores.score)), -scores.score))
    texts: list[str] = []
    for i in order:
        a, b = scores.char_offsets[i]
        text = " ".join(document[a:b].split())
        if text and text not in texts:
            texts.append(text)
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--document-tokens", type=int, default=7600)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("eval/results/bench_retriever.json"))
    parser.add_argument("--all-modes", action="store_true", help="also int8 on every layer")
    parser.add_argument(
        "--no-int8", action="store_true", help="skip the int8 modes (less memory and time)"
    )
    args = parser.parse_args()
    header = provenance(  # before the work: its load average is the run's start
        "eval.benchmarks.bench_retriever", None, config=vars(args), embedder=None
    )

    import torch
    from transformers import AutoTokenizer

    from eval.benchmarks.bench_ttft import window_document
    from vllm_landmark.default_models import prepare_default_llm, prepare_default_retriever
    from vllm_landmark.retrieval.encoding import encode_document
    from vllm_landmark.retrieval.m3 import M3Encoder
    from vllm_landmark.retrieval.quantize import quantize_int8
    from vllm_landmark.retrieval.spans import SpanRanker

    document = window_document(
        AutoTokenizer.from_pretrained(str(prepare_default_llm())), args.document_tokens
    )
    folder = str(prepare_default_retriever())
    fp32 = M3Encoder(folder)
    onnx = M3Encoder(folder, backend="onnx")
    eighth = (fp32.max_length - 3) // 8
    modes: dict[str, tuple[M3Encoder, int | None]] = {
        "float32": (fp32, None),
        "onnx": (onnx, None),
        "onnx, overlap 1/8": (onnx, eighth),
    }
    if not args.no_int8:
        modes["int8"] = (M3Encoder(folder, quantize="int8"), None)
    if args.all_modes and not args.no_int8:
        every = copy.copy(fp32)  # for comparison: the feed-forward outputs quantized too
        every.model = quantize_int8(copy.deepcopy(fp32.model), keep=lambda name: False)
        every.quantize = "int8-every-linear"
        modes["int8, every linear layer"] = (every, None)
    encode_s: dict[str, list[float]] = {m: [] for m in modes}
    question_s: dict[str, list[float]] = {m: [] for m in modes}
    num_tokens = 0
    windows: dict[str, int] = {}
    multi_vectors: dict[str, np.ndarray | None] = {}
    for _ in range(args.runs):
        for name, (encoder, overlap) in modes.items():
            started = time.perf_counter()
            encoding = encode_document(encoder, document, overlap=overlap)
            encode_s[name].append(time.perf_counter() - started)
            num_tokens = encoding.num_tokens
            windows[name] = len(encoding.windows)
            multi_vectors[name] = encoding.colbert
            ranker = SpanRanker(encoder, overlap=overlap)
            started = time.perf_counter()
            ranker.score_all_spans(document, QUESTIONS[0])
            question_s[name].append(time.perf_counter() - started)

    # Rankings compared by sentence text: the document repeats itself, so a sentence and its
    # copy in the next part score alike and either may come first.
    best: dict[str, list[list[str]]] = {}
    for name, (encoder, overlap) in modes.items():
        ranker = SpanRanker(encoder, overlap=overlap)
        best[name] = [
            ranked_texts(ranker.score_all_spans(document, q), document) for q in QUESTIONS
        ]
    rankings: dict[str, Any] = {}
    for name in modes:
        top10, same_best = [], []
        for mine, ref in zip(best[name], best["float32"], strict=True):
            top10.append(len(set(mine[:10]) & set(ref[:10])))
            same_best.append(mine[0] == ref[0])
        rankings[name] = {"top10_overlap": top10, "same_best_sentence": same_best}

    # The fastest run: on a shared machine, the one least slowed by other work.
    base = min(encode_s["float32"])
    results = {
        name: {
            "document_encode_s": round(min(encode_s[name]), 3),
            "document_encode_median_s": round(statistics.median(encode_s[name]), 3),
            "document_encode_runs_s": [round(s, 3) for s in encode_s[name]],
            "tokens_per_s": round(num_tokens / min(encode_s[name]), 1),
            "speedup": round(base / min(encode_s[name]), 2),
            "first_question_s": round(statistics.median(question_s[name]), 3),
            "windows": windows[name],
            **rankings[name],
            # Same windows as float32: how far its multi-vectors are from float32's.
            "colbert_max_abs_diff": (
                float(np.abs(multi_vectors[name] - multi_vectors["float32"]).max())
                if windows[name] == windows["float32"] and multi_vectors[name] is not None
                else None
            ),
        }
        for name in modes
    }
    load = os.getloadavg()
    out = {
        "command": "python -m eval.benchmarks.bench_retriever",
        "document_retriever_tokens": num_tokens,
        "questions": list(QUESTIONS),
        "runs": args.runs,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch threads "
        f"{torch.get_num_threads()}",
        "load_average_after": [round(x, 2) for x in load],
        "modes": results,
    }
    write_result(args.out, out, header)
    for name, row in results.items():
        print(
            f"{name:>18}: {row['document_encode_s']:6.2f} s  {row['tokens_per_s']:7.1f} tok/s  "
            f"x{row['speedup']:.2f}  first question {row['first_question_s']:.2f} s  "
            f"top-10 overlap {row['top10_overlap']}  same best {row['same_best_sentence']}"
        )
    print(f"load average {load}; wrote {args.out}")


if __name__ == "__main__":
    main()
