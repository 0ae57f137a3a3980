"""Encoding throughput of the M3 retriever vs FlagEmbedding's BGEM3FlagModel, on the same weights.

    nice -n 10 python -m eval.benchmarks.bench_m3 [--lengths 512 2048 8192] [--ref-python PY]
        [--out FILE]

* Weights: a random model of the REAL BGE-M3 shape (XLM-R large: 24 layers, hidden 1024,
  16 heads, 8,194 positions, vocabulary 250,002; heads ``sparse_linear.pt`` 1024->1 and
  ``colbert_linear.pt`` 1024->1024), built once under ``$VLLM_LANDMARK_CACHE/bench`` (default
  ``~/.cache/vllm-landmark/bench``), 2.3 GB. The tokenizer is the tiny test tokenizer (only the
  token count matters for speed). Nothing is downloaded.
* Documents of exactly 512, 2,048 and 8,192 tokens (special tokens included; 8,192 is the
  encoder limit), multilingual generated text.
* Ours: ``M3Encoder.encode`` (dense + lexical + multi-vector from one forward, float32, sdpa,
  inference mode, no padding), and the span ranker's document path (``encode_document``).
* Reference: FlagEmbedding 1.4.2 ``BGEM3FlagModel(use_fp16=False, devices="cpu").encode`` with
  all three outputs, ``max_length=8192``, one text per call, in its own environment
  (``eval/m3_reference_env.sh``; this same file runs there with ``--flag-reference``). Its
  ``encode`` runs the first batch twice (a batch-size probe): that is part of what a user of
  it pays, so both end-to-end times are compared.
* Scores: for one query per document, dense / lexical / multi-vector scores from both
  implementations' outputs must agree (max abs difference reported).
* Peak memory: ``ru_maxrss`` of the process right after encoding one 8,192-token document
  (the first document either implementation encodes), beside its RSS with the model loaded.
* Cache: a first question about the 8,192-token document (document + query encoding) vs a
  second, different question (query encoding + scoring only).

Writes ``eval/results/bench_m3.json``. Takes about 10-15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "eval" / "results" / "bench_m3.json"
QUERIES = [
    "Where does the river flow through the city?",
    "Welche Geschichte hat die Stadt am Berg?",
]


def _rss_mb() -> float:
    """Current resident set size in MB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------------------
# Reference side (runs in the FlagEmbedding environment: stdlib + FlagEmbedding only)
# ----------------------------------------------------------------------------------------------


class RssSampler:
    """Highest RSS seen by a background thread sampling every ``interval`` s inside a block."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, _rss_mb())
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak_mb = _rss_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _rss_mb())


def flag_reference(spec_path: str) -> None:
    """Serve timing requests on stdin/stdout: load BGEM3FlagModel, then for each line
    ``{"doc": i}`` encode that document and answer one JSON line (seconds, scores, RSS)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    answer, sys.stdout = sys.stdout, sys.stderr  # anything the libraries print goes to stderr
    spec = json.loads(Path(spec_path).read_text())
    import numpy as np
    import torch
    from FlagEmbedding import BGEM3FlagModel

    rss0 = _rss_mb()
    t = time.perf_counter()
    model = BGEM3FlagModel(spec["model"], use_fp16=False, devices="cpu")
    load_s = time.perf_counter() - t
    kw = {"return_dense": True, "return_sparse": True, "return_colbert_vecs": True}
    q = model.encode(spec["queries"], batch_size=len(spec["queries"]), max_length=8192, **kw)
    ready = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "load_s": load_s,
        "rss_start_mb": rss0,
        "rss_loaded_mb": _rss_mb(),
    }
    print(json.dumps(ready), file=answer, flush=True)
    for line in sys.stdin:
        doc = spec["documents"][json.loads(line)["doc"]]
        with RssSampler() as rss:
            t = time.perf_counter()
            out = model.encode([doc], batch_size=1, max_length=8192, **kw)
            seconds = time.perf_counter() - t
        scores = []
        for i in range(len(spec["queries"])):
            scores.append(
                {
                    "dense": float(q["dense_vecs"][i] @ out["dense_vecs"][0]),
                    "sparse": float(
                        model.compute_lexical_matching_score(
                            q["lexical_weights"][i], out["lexical_weights"][0]
                        )
                    ),
                    "colbert": float(
                        model.colbert_score(q["colbert_vecs"][i], out["colbert_vecs"][0])
                    ),
                }
            )
        result = {
            "tokens": len(model.tokenizer(doc)["input_ids"]),
            "seconds": seconds,
            "dense_head": [float(x) for x in out["dense_vecs"][0][:8]],
            "scores": scores,
            "rss_before_mb": rss0,
            "peak_rss_mb": rss.peak_mb,
        }
        print(json.dumps(result), file=answer, flush=True)


# ----------------------------------------------------------------------------------------------
# Project side
# ----------------------------------------------------------------------------------------------


def build_bge_m3_shape(folder: Path) -> Path:
    """A random model of BGE-M3's real shape in its folder layout (built once)."""
    if (folder / "colbert_linear.pt").is_file():
        return folder
    from vllm_landmark.testing.tiny_m3 import build_tiny_m3

    tmp = folder.with_name(folder.name + ".partial")
    build_tiny_m3(
        tmp,
        hidden_size=1024,
        num_layers=24,
        num_heads=16,
        intermediate_size=4096,
        model_vocab_size=250002,
        colbert_dim=1024,
    )
    tmp.rename(folder)
    return folder


def make_document(tokenizer, n_tokens: int, seed: int) -> str:
    """Generated multilingual text of exactly ``n_tokens`` tokens (special tokens included)."""
    import random

    from vllm_landmark.testing.tiny_m3 import generate_text

    rng = random.Random(seed)
    text = ""
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < n_tokens:
        text += " " + generate_text(rng, 40)
    text = text.strip()
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    cut = n_tokens - 2
    while True:
        doc = text[: enc["offset_mapping"][cut - 1][1]].rstrip()
        n = len(tokenizer(doc)["input_ids"])
        if n == n_tokens:
            return doc
        cut += 1 if n < n_tokens else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument(
        "--ref-python",
        default=os.environ.get("LANDMARK_M3_REF_PYTHON", "/tmp/m3ref-venv/bin/python"),
        help="python of the FlagEmbedding environment (eval/m3_reference_env.sh)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--flag-reference", nargs=1, metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flag_reference:
        flag_reference(*args.flag_reference)
        return
    # Imported here: the reference process runs this file by path, in FlagEmbedding's venv.
    from eval.provenance import provenance, write_result

    header = provenance(  # before the work: its load average is the run's start
        "eval.benchmarks.bench_m3", None, config=vars(args), embedder=None
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np
    import torch
    import transformers

    from vllm_landmark.retrieval.m3 import (
        M3Encoder,
        colbert_score,
        dense_score,
        lexical_matching_score,
    )
    from vllm_landmark.retrieval.spans import SpanRanker

    cache_root = Path(os.environ.get("VLLM_LANDMARK_CACHE", "~/.cache/vllm-landmark"))
    folder = build_bge_m3_shape(cache_root.expanduser() / "bench" / "bge-m3-shape-random")
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_m3_{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
        },
        "model": "random weights, BGE-M3 shape (XLM-R large, 24 layers, hidden 1024, 8194 "
        "positions, vocab 250002; heads 1024->1, 1024->1024), float32",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "threads": torch.get_num_threads(),
    }

    t = time.perf_counter()
    encoder = M3Encoder(folder)
    results["load_s"] = time.perf_counter() - t
    docs = {n: make_document(encoder.tokenizer, n, seed=n) for n in args.lengths}
    for n, doc in docs.items():
        assert len(encoder.tokenize([doc])[0]) == n

    # Reference: FlagEmbedding in its own environment, a process that stays up, so that each
    # measurement of ours is followed by the same measurement of the reference (the machine is
    # shared: alternating keeps both under the same load).
    ref_proc = None
    if not args.skip_reference and Path(args.ref_python).is_file():
        spec = {"model": str(folder), "documents": list(docs.values()), "queries": QUERIES}
        (work / "spec.json").write_text(json.dumps(spec))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["TQDM_DISABLE"] = "1"
        ref_proc = subprocess.Popen(
            [args.ref_python, __file__, "--flag-reference", "spec.json"],
            cwd=work,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = json.loads(ref_proc.stdout.readline())
        results["reference"] = {"implementation": "FlagEmbedding 1.4.2 BGEM3FlagModel", **ready}
    else:
        print(f"no FlagEmbedding environment at {args.ref_python}: reference skipped")

    def reference_run(index: int) -> dict:
        assert ref_proc is not None and ref_proc.stdin is not None
        ref_proc.stdin.write(json.dumps({"doc": index}) + "\n")
        ref_proc.stdin.flush()
        return json.loads(ref_proc.stdout.readline())

    encoder.encode(["warm up"])
    q_out = encoder.encode(QUERIES)
    longest = max(args.lengths)
    rows = []
    order = sorted(docs, reverse=True)  # longest first: peak RSS of one such document
    for n in order:
        index = list(docs).index(n)
        repeats = 3 if n <= 512 else 2 if n <= 2048 else 1
        mine_s, ref_s, ref_run = [], [], None
        for _ in range(repeats):
            print(f"ours: {n} tokens", flush=True)
            with RssSampler() as rss:
                before = _rss_mb()
                t = time.perf_counter()
                out = encoder.encode([docs[n]])
                mine_s.append(time.perf_counter() - t)
            if n == longest and "peak_memory_ours" not in results:
                results["peak_memory_ours"] = {
                    "tokens": n,
                    "rss_loaded_mb": before,
                    "peak_rss_mb": rss.peak_mb,
                    "increase_mb": rss.peak_mb - before,
                }
            if ref_proc is not None:
                print(f"FlagEmbedding: {n} tokens", flush=True)
                ref_run = reference_run(index)
                assert ref_run["tokens"] == n, (ref_run["tokens"], n)
                ref_s.append(ref_run["seconds"])
                if n == longest and "peak_memory_flagembedding" not in results:
                    loaded = results["reference"]["rss_loaded_mb"]
                    results["peak_memory_flagembedding"] = {
                        "tokens": n,
                        "rss_loaded_mb": loaded,
                        "peak_rss_mb": ref_run["peak_rss_mb"],
                        "increase_mb": ref_run["peak_rss_mb"] - loaded,
                    }
        mine = float(np.median(mine_s))
        scores = [
            {
                "dense": float(dense_score(q_out.dense_vecs[i], out.dense_vecs[0])),
                "sparse": lexical_matching_score(q_out.lexical_weights[i], out.lexical_weights[0]),
                "colbert": colbert_score(q_out.colbert_vecs[i], out.colbert_vecs[0]),
            }
            for i in range(len(QUERIES))
        ]
        row = {
            "tokens": n,
            "ours_s": mine,
            "ours_runs_s": mine_s,
            "ours_tokens_per_s": n / mine,
        }
        if ref_run is not None:
            ref = float(np.median(ref_s))
            diffs = [
                abs(a[key] - b[key])
                for a, b in zip(scores, ref_run["scores"], strict=True)
                for key in ("dense", "sparse", "colbert")
            ]
            row.update(
                {
                    "flagembedding_s": ref,
                    "flagembedding_runs_s": ref_s,
                    "flagembedding_tokens_per_s": n / ref,
                    "speedup": ref / mine,
                    "max_abs_score_diff": max(diffs),
                    "max_abs_dense_diff": float(
                        np.abs(np.subtract(out.dense_vecs[0][:8], ref_run["dense_head"])).max()
                    ),
                    "scores_ours": scores,
                    "scores_flagembedding": ref_run["scores"],
                }
            )
        rows.append(row)
    if ref_proc is not None:
        ref_proc.stdin.close()
        ref_proc.wait(timeout=60)
    rows.sort(key=lambda r: r["tokens"])

    # Span ranker: first question (document + query) vs a cached second question.
    ranker = SpanRanker(encoder)
    doc = docs[longest]
    print(f"span ranker: {longest} tokens", flush=True)
    t = time.perf_counter()
    first = ranker.rank(doc, QUERIES[0], top_k=5)
    first_s = time.perf_counter() - t
    seconds_second = []
    for _ in range(3):
        t = time.perf_counter()
        second = ranker.rank(doc, QUERIES[1], top_k=5)
        seconds_second.append(time.perf_counter() - t)
    assert not first.cached and second.cached
    cached_s = float(np.median(seconds_second))
    results["span_ranker"] = {
        "tokens": longest,
        "encode_document_tokens_per_s": longest / first.timings["document_encode_s"],
        "windows": first.windows,
        "first_question_s": first_s,
        "first_question_timings": first.timings,
        "cached_second_question_s": cached_s,
        "cached_second_question_runs_s": seconds_second,
        "cached_second_question_timings": second.timings,
        "first_over_cached": first_s / cached_s,
        "num_sentences": first.num_sentences,
        "cache_entry_mb": ranker.cache.nbytes / 2**20,
    }
    results["throughput"] = rows
    write_result(args.out, results, header)
    for row in rows:
        line = f"{row['tokens']:>5} tokens: ours {row['ours_tokens_per_s']:7.1f} tok/s"
        if "speedup" in row:
            line += (
                f", FlagEmbedding {row['flagembedding_tokens_per_s']:7.1f} tok/s, "
                f"x{row['speedup']:.2f}, max |score diff| {row['max_abs_score_diff']:.2e}"
            )
        print(line)
    sr = results["span_ranker"]
    print(
        f"span ranker {longest} tokens: first question {sr['first_question_s']:.1f} s, cached "
        f"second {sr['cached_second_question_s'] * 1000:.0f} ms (x{sr['first_over_cached']:.0f})"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
