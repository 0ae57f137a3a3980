"""Record in an embedder checkpoint which factors help, from the QA runner's factor arms.

    python -m eval.suite.factor_help --dev eval/results/qa_dev_factor_help.json \\
        --test eval/results/qa_test_factor_help.json \\
        --embedder plugin/data/embedders/smollm2-135m

For each factor K the runs hold the paired difference ``win-tN-kK - win-tN-only`` of the
answer's log-probability per token (the same k=1 windows; the rest of the budget compressed
at K, or dropped). This writes them into the checkpoint's ``embedder_config.json`` as its
``factor_help`` record (:class:`~vllm_landmark.compression.embedder_config.FactorHelp`),
decided on the dev run and reported on the test run; the planner then uses only the factors
whose dev interval is above 0 (:meth:`EmbedderConfig.planning_factors`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vllm_landmark.compression.embedder_config import (
    EMBEDDER_CONFIG_NAME,
    EmbedderConfig,
    FactorEffect,
    FactorHelp,
)

_DIFFERENCE = re.compile(r"^(?P<arm>win-[tp]\d+)-k(?P<k>\d+) - (?P=arm)-only$")
METRIC = (
    "answer log-prob per token (teacher-forced, real-text QA, budget {budget}): k=1 windows "
    "({arm}, {share:.0%} of the budget) + the rest compressed at k, minus the same windows alone"
)


def factor_effects(report: dict[str, Any]) -> dict[int, FactorEffect]:
    """``{K: paired difference}`` of every ``win-tN-kK - win-tN-only`` in a qa_run report."""
    effects: dict[int, FactorEffect] = {}
    for name, diff in report["summary"]["differences"].items():
        match = _DIFFERENCE.match(name)
        if match and "logprob" in diff:
            d = diff["logprob"]
            effects[int(match["k"])] = FactorEffect(d["mean"], d["low"], d["high"], int(d["n"]))
    if not effects:
        raise ValueError(
            "the report has no 'win-tN-kK - win-tN-only' differences: run qa_run with those "
            "arms and --compare-to win-tN-only"
        )
    return effects


def record(dev: dict[str, Any], test: dict[str, Any] | None, sources: str) -> FactorHelp:
    """The factor_help record: decided on ``dev``, with ``test`` as the held-out report."""
    if dev["split"] != "dev" or (test is not None and test["split"] != "test"):
        raise ValueError("--dev must be a dev-split run and --test a test-split run")
    arms = {m["arm"] for n in dev["summary"]["differences"] if (m := _DIFFERENCE.match(n))}
    if len(arms) != 1:
        raise ValueError(f"the dev run compares factors on {sorted(arms)}: need one window arm")
    arm = arms.pop()
    splits = {"dev": factor_effects(dev)}
    if test is not None:
        splits["test"] = factor_effects(test)
    metric = METRIC.format(budget=dev["budget"], arm=arm, share=dev["raw_share"])
    return FactorHelp(metric=metric, decided_on="dev", splits=splits, source=sources)


def write_record(folder: Path, help_record: FactorHelp) -> EmbedderConfig:
    """Rewrite the folder's config with the record (read and written by the one reader)."""
    config = dataclasses.replace(EmbedderConfig.from_folder(folder), factor_help=help_record)
    text = json.dumps(config.to_dict(), indent=2, ensure_ascii=False) + "\n"
    (folder / EMBEDDER_CONFIG_NAME).write_text(text, encoding="utf-8")
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m eval.suite.factor_help", description=__doc__)
    parser.add_argument("--dev", type=Path, required=True, help="qa_run report, dev split")
    parser.add_argument("--test", type=Path, help="qa_run report, test split (the report)")
    parser.add_argument("--embedder", type=Path, required=True, help="checkpoint folder")
    args = parser.parse_args(argv)
    dev = json.loads(args.dev.read_text(encoding="utf-8"))
    test = json.loads(args.test.read_text(encoding="utf-8")) if args.test else None
    sources = ", ".join(str(p) for p in (args.dev, args.test) if p is not None)
    config = write_record(args.embedder, record(dev, test, sources))
    help_record = config.factor_help
    assert help_record is not None
    for name, effects in help_record.splits.items():
        for k, e in sorted(effects.items()):
            print(f"{name} k={k}: {e.mean:+.3f} [{e.low:+.3f}, {e.high:+.3f}] (n={e.n})")
    print(f"planning factors: {list(config.planning_factors())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
