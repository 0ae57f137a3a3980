"""Record in an embedder checkpoint which factors help, from the QA runner's factor arms.

    python -m eval.suite.factor_help --dev eval/results/qa_dev_factor_help_16k.json \\
        --test eval/results/qa_test_factor_help_16k.json \\
        --embedder plugin/data/embedders/smollm2-135m

For each factor K the runs hold a paired difference of the answer's log-probability per token
between a window arm that compresses the rest of the budget at K (``ARM-kK``, e.g.
``win-s64-k16-rrf``: the server's window rule at one factor) and a reference that does not:

* ``--against drop`` (default): ``ARM-drop``, the same rule with the windows filling the whole
  budget at k=1. That is what the planner does when no factor helps, so this asks the
  planner's question: is the room better spent on soft tokens at K or on more raw windows?
* ``--against only``: ``ARM-only``, the same windows in ``raw_share`` of the budget with the rest
  dropped: what K's soft tokens add on their own, room aside.

This writes them into the checkpoint's ``embedder_config.json`` as its ``factor_help`` record
(:class:`~vllm_landmark.compression.embedder_config.FactorHelp`), decided on the dev run and
reported on the test run; the planner then uses only the factors whose dev interval is above 0
(:meth:`EmbedderConfig.planning_factors`).
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

_DIFFERENCE = re.compile(
    r"^(?P<arm>(?:win|txt)-[tps]\d+)-k(?P<k>\d+)(?P<rrf>(?:-rrf)?) - "
    r"(?P=arm)-(?P<reference>only|drop)(?P=rrf)$"
)
REFERENCES = {
    "drop": "the same rule's windows filling the whole budget at k=1",
    "only": "the same windows alone (the rest dropped)",
}
METRIC = (
    "answer log-prob per token (teacher-forced, real-text QA, budget {budget}): k=1 windows "
    "({arm}, {share:.0%} of the budget) + the rest compressed at k, minus {reference}"
)


def _differences(report: dict[str, Any], against: str) -> list[tuple[re.Match[str], dict]]:
    """The report's ``ARM-kK - ARM-<against>`` differences: (name's match, difference)."""
    found = []
    for name, diff in report["summary"]["differences"].items():
        match = _DIFFERENCE.match(name)
        if match and match["reference"] == against:
            found.append((match, diff))
    return found


def factor_effects(report: dict[str, Any], against: str = "drop") -> dict[int, FactorEffect]:
    """``{K: paired difference}`` of every ``ARM-kK - ARM-<against>`` in a qa_run report."""
    effects: dict[int, FactorEffect] = {}
    for match, diff in _differences(report, against):
        if "logprob" in diff:
            d = diff["logprob"]
            effects[int(match["k"])] = FactorEffect(d["mean"], d["low"], d["high"], int(d["n"]))
    if not effects:
        raise ValueError(
            f"the report has no 'ARM-kK - ARM-{against}' differences (e.g. 'win-s64-k16-rrf - "
            f"win-s64-{against}-rrf'): run qa_run with those arms and --compare-to ARM-{against}"
        )
    return effects


def record(
    dev: dict[str, Any], test: dict[str, Any] | None, sources: str, against: str = "drop"
) -> FactorHelp:
    """The factor_help record: decided on ``dev``, with ``test`` as the held-out report."""
    if dev["split"] != "dev" or (test is not None and test["split"] != "test"):
        raise ValueError("--dev must be a dev-split run and --test a test-split run")
    arms = {match["arm"] + match["rrf"] for match, _ in _differences(dev, against)}
    if len(arms) > 1:
        raise ValueError(f"the dev run compares factors on {sorted(arms)}: need one window arm")
    splits = {"dev": factor_effects(dev, against)}
    if test is not None:
        splits["test"] = factor_effects(test, against)
    metric = METRIC.format(
        budget=dev["budget"], arm=arms.pop(), share=dev["raw_share"], reference=REFERENCES[against]
    )
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
    parser.add_argument(
        "--against",
        choices=sorted(REFERENCES),
        default="drop",
        help="reference of each factor: drop = the windows fill the budget (the planner's "
        "alternative), only = the same windows with the rest dropped",
    )
    args = parser.parse_args(argv)
    dev = json.loads(args.dev.read_text(encoding="utf-8"))
    test = json.loads(args.test.read_text(encoding="utf-8")) if args.test else None
    sources = ", ".join(str(p) for p in (args.dev, args.test) if p is not None)
    config = write_record(args.embedder, record(dev, test, sources, args.against))
    help_record = config.factor_help
    assert help_record is not None
    for name, effects in help_record.splits.items():
        for k, e in sorted(effects.items()):
            print(f"{name} k={k}: {e.mean:+.3f} [{e.low:+.3f}, {e.high:+.3f}] (n={e.n})")
    print(f"planning factors: {list(config.planning_factors())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
