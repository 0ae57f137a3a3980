"""Retrieval quality of the default retriever: nDCG@10 and recall@10 per language and mode.

Held-out set: ``test.jsonl`` + the test passages of ``recipes/m3/build_data`` (documents never
seen in training). Every query has one relevant passage. Two candidate sets:

* ``corpus``: all held-out passages of the query's language (hundreds to thousands);
* ``document``: the passages of the query's own document (what span ranking faces).

Modes: ``dense``, ``sparse`` (lexical matching), ``colbert`` (multi-vector), ``dense+sparse``
and ``hybrid`` (dense + sparse + colbert), with :data:`~vllm_landmark.retrieval.m3.
DEFAULT_WEIGHTS` (0.4, 0.2, 0.4), all computed from :class:`~vllm_landmark.retrieval.m3.
M3Encoder` outputs exactly as served. Models compared:

* ``before``: the default encoder with the recipe's initial heads (``nn.Linear``'s default
  init, seed 0: the start of the training run; dense is the same in both);
* ``after``: the default retriever as shipped (trained heads from ``plugin/data``).

    python -m eval.retrieval_quality [--data ~/.cache/vllm-landmark/m3-data]

writes ``eval/results/retrieval_quality.json`` and prints a table. Ties (e.g. many passages
with a lexical score of 0) are broken by a fixed random order, not in the positive's favour.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.provenance import provenance, write_result
from vllm_landmark.retrieval.m3 import DEFAULT_WEIGHTS, M3Encoder, M3Output

RESULTS = Path(__file__).resolve().parent / "results" / "retrieval_quality.json"
MODES = ("dense", "sparse", "colbert", "dense+sparse", "hybrid")
SETTINGS = ("corpus", "document")
K = 10


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def lexical_matrix(queries: list[dict[str, float]], passages: list[dict[str, float]]) -> np.ndarray:
    """Lexical matching scores ``(n_queries, n_passages)`` through an inverted index."""
    postings: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for j, weights in enumerate(passages):
        for token, w in weights.items():
            postings[token].append((j, w))
    out = np.zeros((len(queries), len(passages)), dtype=np.float64)
    for i, weights in enumerate(queries):
        for token, w in weights.items():
            for j, pw in postings.get(token, ()):
                out[i, j] += w * pw
    return out


def colbert_matrix(queries: list[np.ndarray], passages: list[np.ndarray]) -> np.ndarray:
    """Multi-vector scores ``(n_queries, n_passages)``: mean over query vectors of the max."""
    flat = torch.from_numpy(np.concatenate(passages)).float()
    segment = torch.repeat_interleave(
        torch.arange(len(passages)), torch.tensor([len(p) for p in passages])
    )
    out = np.zeros((len(queries), len(passages)), dtype=np.float64)
    for i, q in enumerate(queries):
        sim = torch.from_numpy(q).float() @ flat.T  # (Lq, total passage vectors)
        best = torch.full((sim.shape[0], len(passages)), -math.inf)
        best.scatter_reduce_(1, segment.expand(sim.shape[0], -1), sim, "amax", include_self=True)
        out[i] = best.mean(dim=0).double().numpy()
    return out


def all_scores(q: M3Output, p: M3Output) -> dict[str, np.ndarray]:
    """Every mode's score matrix."""
    assert q.lexical_weights is not None and p.lexical_weights is not None
    assert q.colbert_vecs is not None and p.colbert_vecs is not None
    dense = q.dense_vecs.astype(np.float64) @ p.dense_vecs.astype(np.float64).T
    sparse = lexical_matrix(q.lexical_weights, p.lexical_weights)
    colbert = colbert_matrix(q.colbert_vecs, p.colbert_vecs)
    wd, ws, wc = DEFAULT_WEIGHTS
    return {
        "dense": dense,
        "sparse": sparse,
        "colbert": colbert,
        "dense+sparse": (wd * dense + ws * sparse) / (wd + ws),
        "hybrid": (wd * dense + ws * sparse + wc * colbert) / (wd + ws + wc),
    }


def rank_of(scores: np.ndarray, positive: int, tiebreak: np.ndarray) -> int:
    """1-based rank of ``positive``; equal scores ordered by ``tiebreak`` (a fixed random order)."""
    s = scores[positive]
    better = np.count_nonzero(scores > s)
    ties = np.count_nonzero((scores == s) & (tiebreak < tiebreak[positive]))
    return int(better + ties + 1)


def metrics(ranks: list[int]) -> dict[str, float]:
    """nDCG@10, recall@10 and MRR@10 with one relevant passage per query."""
    r = np.asarray(ranks)
    hit = r <= K
    return {
        "ndcg@10": float(np.mean(np.where(hit, 1.0 / np.log2(r + 1), 0.0))),
        "recall@10": float(np.mean(hit)),
        "mrr@10": float(np.mean(np.where(hit, 1.0 / r, 0.0))),
        "queries": len(ranks),
    }


class SharedForward(torch.nn.Module):
    """The encoder's forward, remembered per batch of token ids.

    Folders that share the encoder weights and differ only in their heads then pay for one
    forward: the second :class:`M3Encoder` gets the first one's hidden states for the same
    batches (``encode`` batches deterministically). :meth:`clear` between languages.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.cache: dict[tuple[bytes, tuple[int, ...]], Any] = {}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Any:
        mask = b"" if attention_mask is None else attention_mask.cpu().numpy().tobytes()
        key = (input_ids.cpu().numpy().tobytes() + mask, tuple(input_ids.shape))
        if key not in self.cache:
            self.cache[key] = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return self.cache[key]

    def clear(self) -> None:
        self.cache.clear()


def evaluate(
    folders: dict[str, Path],
    data: Path,
    langs: list[str],
    max_queries: int | None,
    batch_size: int,
    quantize: str | None = None,
    max_passages: int | None = None,
    backend: str = "torch",
) -> dict[str, dict[str, Any]]:
    """Metrics per model, language, setting and mode; the folders must share one encoder.

    ``backend="onnx"`` runs the shared forward on ONNX Runtime (exported from the first folder).
    """
    encoders = {
        name: M3Encoder(folder, batch_size=batch_size, quantize=quantize)
        for name, folder in folders.items()
    }
    first = next(iter(encoders.values()))
    if backend == "onnx":
        from vllm_landmark.retrieval.onnx_encoder import onnx_model

        first.model = onnx_model(first.path)  # type: ignore[assignment]
    shared = SharedForward(first.model)
    for enc in encoders.values():
        enc.model = shared  # type: ignore[assignment]
    passages = [p for p in read_jsonl(data / "passages.jsonl") if p.get("split") == "test"]
    queries = read_jsonl(data / "test.jsonl")
    results: dict[str, dict[str, Any]] = {name: {} for name in folders}
    for lang in langs:
        lang_passages = [p for p in passages if p["lang"] == lang]
        lang_queries = [q for q in queries if q["lang"] == lang][:max_queries]
        if max_passages is not None:  # the queries' own documents, then others up to the cap
            own = {q["doc"] for q in lang_queries}
            mine = [p for p in lang_passages if p["doc"] in own]
            others = [p for p in lang_passages if p["doc"] not in own]
            lang_passages = mine + others[: max(0, max_passages - len(mine))]
        if not lang_queries:
            continue
        for name, enc in encoders.items():
            result = evaluate_language(enc, lang_passages, lang_queries)
            results[name][lang] = result
            done = f"{len(lang_queries)} queries, {len(lang_passages)} passages"
            print(f"  {name} {lang}: {done}, {result['seconds']} s", file=sys.stderr)
        shared.clear()
    return results


def evaluate_language(
    enc: M3Encoder, passages: list[dict[str, Any]], queries: list[dict[str, Any]]
) -> dict[str, Any]:
    """One model on one language's held-out queries and passages."""
    start = time.monotonic()
    index = {p["pid"]: j for j, p in enumerate(passages)}
    p_out = enc.encode([p["text"] for p in passages], truncation=True, prompt_name="passage")
    q_out = enc.encode([q["query"] for q in queries], truncation=True, prompt_name="query")
    scores = all_scores(q_out, p_out)
    tiebreak = np.random.default_rng(0).permutation(len(passages))
    by_doc: dict[str, list[int]] = defaultdict(list)
    for j, p in enumerate(passages):
        by_doc[p["doc"]].append(j)
    ranks: dict[tuple[str, str], list[int]] = defaultdict(list)
    candidates: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(queries):
        pos = index[q["pos"]]
        doc = np.asarray(by_doc[q["doc"]])
        local = int(np.flatnonzero(doc == pos)[0])
        candidates["corpus"].append(len(passages))
        candidates["document"].append(len(doc))
        for mode in MODES:
            row = scores[mode][i]
            ranks[("corpus", mode)].append(rank_of(row, pos, tiebreak))
            ranks[("document", mode)].append(rank_of(row[doc], local, tiebreak[doc]))
    result: dict[str, Any] = {
        setting: {
            mode: {
                **metrics(ranks[(setting, mode)]),
                "mean_candidates": float(np.mean(candidates[setting])),
            }
            for mode in MODES
        }
        for setting in SETTINGS
    }
    result["passages"] = len(passages)
    result["seconds"] = round(time.monotonic() - start, 1)
    return result


def _encoder_only(default: Path, out: Path) -> Path:
    """A folder that links to ``default``'s files except its heads."""
    out.mkdir()
    for item in default.iterdir():
        if item.name not in ("sparse_linear.pt", "colbert_linear.pt", "landmark_prepared.json"):
            os.symlink(item.resolve(), out / item.name)
    return out


def before_folder(default: Path, tmp: Path, seed: int) -> Path:
    """The default folder's encoder with the recipe's initial (untrained) heads."""
    from recipes.m3.model import M3Heads

    out = _encoder_only(default, tmp / "before")
    enc_config = json.loads((default / "config.json").read_text())
    colbert = torch.load(default / "colbert_linear.pt", weights_only=True)["weight"].shape[0]
    M3Heads.random(enc_config["hidden_size"], colbert, seed).save_bge_m3(out)
    return out


def variant_folder(default: Path, heads: Path, tmp: Path, name: str) -> Path:
    """The default folder's encoder with the heads in ``heads`` (e.g. another training run)."""
    out = _encoder_only(default, tmp / f"variant-{name}")
    for head in ("sparse_linear.pt", "colbert_linear.pt"):
        os.symlink((heads / head).resolve(), out / head)
    return out


def macro(result: dict[str, Any], langs: list[str]) -> dict[str, Any]:
    """Mean over languages of each metric."""
    present = [lang for lang in langs if lang in result]
    return {
        setting: {
            mode: {
                m: float(np.mean([result[lang][setting][mode][m] for lang in present]))
                for m in ("ndcg@10", "recall@10", "mrr@10")
            }
            for mode in MODES
        }
        for setting in SETTINGS
    }


def table(report: dict[str, Any], langs: list[str]) -> str:
    """Plain-text table: nDCG@10 / recall@10 before -> after, per setting, language and mode."""
    lines = []
    for setting in SETTINGS:
        lines.append(f"\n[{setting}] nDCG@10 and recall@10 (before -> after training the heads)")
        header = f"{'lang':<6}{'cands':>7}  " + "".join(f"{m:>24}" for m in MODES)
        lines.append(header)
        for lang in [*langs, "mean"]:
            if lang == "mean":
                before, after = report["before"]["mean"], report["after"]["mean"]
                cands = ""
            elif lang in report["after"]["languages"]:
                before = report["before"]["languages"][lang]
                after = report["after"]["languages"][lang]
                cands = f"{after[setting]['dense']['mean_candidates']:.0f}"
            else:
                continue
            cells = []
            for mode in MODES:
                b, a = before[setting][mode], after[setting][mode]
                cells.append(
                    f"{b['ndcg@10']:.3f}->{a['ndcg@10']:.3f} {a['recall@10']:.2f}".rjust(24)
                )
            lines.append(f"{lang:<6}{cands:>7}  " + "".join(cells))
        lines.append("  (cells: nDCG@10 before->after, then recall@10 after)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from vllm_landmark.default_models import default_cache_dir, prepare_default_retriever

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_cache_dir() / "m3-data")
    parser.add_argument("--model", type=Path, help="'after' folder (default: default retriever)")
    parser.add_argument("--langs", default="en,de,zh,fr,es,ru,ja,it")
    parser.add_argument("--max-queries", type=int, help="per language (default: all)")
    parser.add_argument(
        "--max-passages",
        type=int,
        help="per language: the queries' own documents, then others up to this many (a quicker "
        "corpus; default: all)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--quantize", choices=("int8",), help="evaluate the encoder in this faster mode"
    )
    parser.add_argument(
        "--backend",
        choices=("torch", "onnx"),
        default="torch",
        help="the encoder forward's runtime (onnx: ONNX Runtime, float32)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=HEADS_DIR",
        help="also evaluate other heads on the same encoder (repeatable)",
    )
    args = parser.parse_args(argv)
    header = provenance(  # before the work: its load average is the run's start
        "eval.retrieval_quality", argv, config=vars(args), embedder=None
    )
    torch.set_num_threads(args.threads)
    langs = [x for x in args.langs.split(",") if x]
    data = args.data.expanduser()
    after = args.model or prepare_default_retriever()
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        before = before_folder(after, Path(tmp), seed=0)
        folders = {"after": after, "before": before}
        for spec in args.variant:
            name, _, heads = spec.partition("=")
            folders[name] = variant_folder(after, Path(heads).expanduser(), Path(tmp), name)
        results = evaluate(
            folders,
            data,
            langs,
            args.max_queries,
            args.batch_size,
            quantize=args.quantize,
            max_passages=args.max_passages,
            backend=args.backend,
        )
        report: dict[str, Any] = {
            name: {"languages": results[name], "mean": macro(results[name], langs)}
            for name in ("before", "after")
        }
        if args.variant:
            report["variants"] = {
                name: {
                    "heads": heads,
                    "mean": macro(results[name], langs),
                    "languages": results[name],
                }  # fmt: skip
                for name, _, heads in (v.partition("=") for v in args.variant)
            }
    manifest = data / "manifest.json"
    heads_record = after / "training.json"
    if not heads_record.is_file():
        from vllm_landmark.default_models import RETRIEVER_HEADS_DIR

        heads_record = RETRIEVER_HEADS_DIR / "training.json"
    out = {
        "command": " ".join(["python -m eval.retrieval_quality", *(argv or sys.argv[1:])]),
        "model": str(after),
        "quantize": args.quantize,
        "backend": args.backend,
        "models": {
            "before": "the default encoder + recipes.m3's initial heads (nn.Linear init, seed 0)",
            "after": "the default retriever as shipped (heads from plugin/data/retriever_heads)",
        },
        "settings": {
            "corpus": "candidates: every held-out passage of the query's language",
            "document": "candidates: the passages of the query's own document",
        },
        "weights (dense, sparse, colbert)": list(DEFAULT_WEIGHTS),
        "data": {
            "path": str(data),
            "manifest": json.loads(manifest.read_text()) if manifest.is_file() else None,
        },
        "heads_training": (
            {k: v for k, v in json.loads(heads_record.read_text()).items() if k != "loss_curve"}
            if heads_record.is_file()
            else None
        ),
        "seconds": round(time.monotonic() - start, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch threads {args.threads}",
        **report,
    }
    write_result(args.out, out, header, indent=2, ensure_ascii=False)
    print(table(out, langs))
    for name, variant in out.get("variants", {}).items():
        means = " ".join(
            f"{m} {variant['mean'][s][m]['ndcg@10']:.3f}" for s in SETTINGS for m in MODES
        )
        print(f"variant {name} (nDCG@10, corpus then document): {means}")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
