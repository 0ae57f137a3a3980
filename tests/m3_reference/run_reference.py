"""Write FlagEmbedding's BGE-M3 outputs for given inputs to a JSON file (parity reference).

Runs INSIDE the reference environment made by ``eval/m3_reference_env.sh`` (flagembedding
1.4.2, transformers<5), never in the project's one. Usage::

    REF_PY INPUT.json OUTPUT.json

INPUT.json: ``{"model": folder, "texts": [...], "pairs": [[query, passage], ...],
"max_length": int, "max_query_length": int, "max_passage_length": int,
"weights": [dense, sparse, colbert], "batch_size": int (encode, default 4),
"batched_pairs": [[query, passage], ...] (default: pairs)}``.

OUTPUT.json: versions; ``encode`` (input ids, dense vectors, lexical weights, colbert vectors of
every text, from ``BGEM3FlagModel.encode``); ``score_each`` (``compute_score`` of each pair on
its own, batch size 1); ``score_batched`` (``compute_score`` of ``batched_pairs`` in one batch).
"""

from __future__ import annotations

import json
import os
import sys
import time
from importlib import metadata


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)

    import numpy as np
    import torch
    import transformers
    from FlagEmbedding import BGEM3FlagModel

    start = time.perf_counter()
    model = BGEM3FlagModel(spec["model"], use_fp16=False, devices="cpu")
    texts = spec["texts"]
    max_length = int(spec["max_length"])
    enc = model.encode(
        texts,
        batch_size=int(spec.get("batch_size", 4)),
        max_length=max_length,
        return_dense=True,
        return_sparse=True,
        return_colbert_vecs=True,
    )
    ids = model.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]

    pairs = [tuple(p) for p in spec["pairs"]]
    score_kwargs = {
        "max_query_length": int(spec["max_query_length"]),
        "max_passage_length": int(spec["max_passage_length"]),
        "weights_for_different_modes": [float(x) for x in spec["weights"]],
    }
    each = model.compute_score(pairs, batch_size=1, **score_kwargs)
    batched_pairs = [tuple(p) for p in spec.get("batched_pairs", pairs)]
    batched = model.compute_score(batched_pairs, batch_size=len(batched_pairs), **score_kwargs)

    out = {
        "versions": {
            "FlagEmbedding": metadata.version("FlagEmbedding"),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "encode": {
            "input_ids": ids,
            "dense_vecs": np.asarray(enc["dense_vecs"], dtype=np.float32).tolist(),
            "lexical_weights": [
                {str(k): float(v) for k, v in lw.items()} for lw in enc["lexical_weights"]
            ],
            "colbert_vecs": [np.asarray(c, dtype=np.float32).tolist() for c in enc["colbert_vecs"]],
        },
        "score_each": {k: [float(x) for x in v] for k, v in each.items()},
        "score_batched": {k: [float(x) for x in v] for k, v in batched.items()},
        "seconds": time.perf_counter() - start,
    }
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
