"""Ship a finished run: copy `final/` into the package, with its loss curve, if it earned it.

    python -m recipes.embedder.export --run ~/.cache/vllm-landmark/embedder-runs/smollm2-135m-cpu \
        --perplexity eval/results/perplexity.json --to plugin/data/embedders/smollm2-135m

Refuses (exit status 1, saying why) when the folder would exceed `--max-mb`, or when the
perplexity report does not show the embedder beating both the mean baseline and no context at
every factor it was trained for. Writes `loss_curve.csv` (one row per step, held-out loss per
factor where it was measured) next to the adapter; TRAINING.md is written by hand from it.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from vllm_landmark.compression.embedder_config import EMBEDDER_CONFIG_NAME, EmbedderConfig

SHIPPED_FILES = (
    EMBEDDER_CONFIG_NAME,
    "adapter_config.json",
    "adapter_model.safetensors",
    "projection.safetensors",
)


def check_perplexity(report: dict[str, Any], factors: list[int]) -> list[str]:
    """Problems that forbid shipping as trained (empty list: fine)."""
    ppl = {name: value["ppl"] for name, value in report["perplexity"].items()}
    problems = []
    for k in factors:
        own = ppl.get(f"embedder@{k}")
        if own is None:
            problems.append(f"k={k}: not measured")
            continue
        for other in (f"mean@{k}", "none"):
            if other in ppl and not own < ppl[other]:
                problems.append(f"k={k}: embedder {own:.2f} does not beat {other} {ppl[other]:.2f}")
    return problems


def write_loss_curve(metrics_path: Path, out: Path, factors: list[int]) -> int:
    """metrics.jsonl -> CSV; returns the number of training steps written."""
    rows: dict[int, dict[str, Any]] = {}
    for line in metrics_path.read_text().splitlines():
        record = json.loads(line)
        row = rows.setdefault(record["step"], {"step": record["step"]})
        if record["type"] == "train":
            row.update(
                stage=record["stage"],
                loss=record["loss"],
                lr=f"{record['lr']:.6g}",
                samples_seen=record["samples_seen"],
                elapsed_s=record["elapsed_s"],
                batch=";".join(f"{k}={v}" for k, v in sorted(record["by_kind_factor"].items())),
            )
        else:
            for k, value in record["heldout_loss"].items():
                row[f"heldout_loss_k{k}"] = round(value, 4)
    fields = ["step", "stage", "loss", "lr", "samples_seen", "elapsed_s", "batch"]
    fields += [f"heldout_loss_k{k}" for k in factors]
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for step in sorted(rows):
            writer.writerow(rows[step])
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--run", type=Path, required=True, help="run folder (with final/)")
    parser.add_argument("--to", type=Path, required=True, help="destination folder")
    parser.add_argument("--perplexity", type=Path, required=True, help="eval/perplexity.py JSON")
    parser.add_argument("--max-mb", type=float, default=20.0)
    args = parser.parse_args(argv)
    final = args.run / "final"
    factors = list(EmbedderConfig.from_folder(final).factors)
    report = json.loads(args.perplexity.read_text())
    problems = check_perplexity(report, factors)
    size_mb = sum((final / name).stat().st_size for name in SHIPPED_FILES) / 2**20
    if size_mb > args.max_mb:
        problems.append(f"{size_mb:.1f} MB is over the {args.max_mb} MB limit")
    if problems:
        print("not shipped as trained:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    args.to.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED_FILES:
        shutil.copy2(final / name, args.to / name)
    steps = write_loss_curve(args.run / "metrics.jsonl", args.to / "loss_curve.csv", factors)
    print(f"shipped {size_mb:.1f} MB to {args.to} ({steps} steps in loss_curve.csv)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
