"""A checkpoint's factor_help record: read with the format check, obeyed by the real planner."""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path

import pytest

from vllm_landmark.compression.choice import EmbedderChoice, resolve_embedder
from vllm_landmark.compression.embedder_config import (
    EMBEDDER_CONFIG_NAME,
    EmbedderConfig,
    FactorHelp,
)
from vllm_landmark.config import LandmarkConfig
from vllm_landmark.document.marker import DOCUMENT_MARKER
from vllm_landmark.document.reader import DocumentReader, ParsedDocument
from vllm_landmark.planning import ScoredSpans

SHIPPED = resources.files("vllm_landmark.data") / "embedders" / "smollm2-135m"

#: k=8 and k=16 do not help (their intervals reach below 0); 2, 4 and 32 do.
EIGHT_AND_SIXTEEN_DO_NOT_HELP = {
    "metric": "answer log-prob / token: windows + rest at k minus windows alone",
    "decided_on": "dev",
    "source": "test",
    "splits": {
        "dev": {
            "2": {"mean": 0.30, "low": 0.10, "high": 0.50, "n": 32},
            "4": {"mean": 0.20, "low": 0.05, "high": 0.40, "n": 32},
            "8": {"mean": -0.10, "low": -0.30, "high": 0.10, "n": 32},
            "16": {"mean": 0.05, "low": -0.10, "high": 0.20, "n": 32},
            "32": {"mean": 0.20, "low": 0.01, "high": 0.40, "n": 32},
        },
        "test": {"8": {"mean": 0.5, "low": 0.2, "high": 0.8, "n": 32}},
    },
}


def shipped_config() -> dict:
    data = json.loads((SHIPPED / EMBEDDER_CONFIG_NAME).read_text())
    data.pop("factor_help", None)
    return data


def checkpoint(folder: Path, record: dict | None) -> EmbedderChoice:
    """A checkpoint folder whose config is the shipped one with ``record`` (or none)."""
    data = shipped_config()
    if record is not None:
        data["factor_help"] = record
    folder.mkdir()
    (folder / EMBEDDER_CONFIG_NAME).write_text(json.dumps(data))
    return resolve_embedder(str(folder), "unused-model")  # the server's path to a checkpoint


def factors_chosen(embedder: EmbedderChoice, tokenizer, scored: bool) -> set[int]:
    """Every factor the planner picks over documents of 600-12,000 tokens, budgets 64-1,000."""
    planner = DocumentReader(LandmarkConfig(), tokenizer, 2048, embedder)
    rng = random.Random(0)
    chosen: set[int] = set()
    for n in (600, 1500, 3000, 6000, 12000):
        for budget in (64, 150, 300, 500, 1000):
            doc = ParsedDocument(token_ids=tuple([7] * n), marker=DOCUMENT_MARKER)
            scores = None
            if scored:
                bounds = tuple((a, min(n, a + 40)) for a in range(0, n, 40))
                scores = ScoredSpans(bounds, tuple(rng.random() for _ in bounds))
            # The window leaves `budget` tokens of room: 2048 - text - the request's max_tokens.
            planned = planner.plan([doc], [0], 48, 2048 - 48 - budget, [scores])[0]
            assert planned.plan.soft_tokens <= budget
            chosen |= {s.factor for s in planned.plan.spans}
    return chosen


@pytest.mark.parametrize("scored", [False, True], ids=["uniform", "retriever-scores"])
def test_planner_never_chooses_factors_recorded_as_not_helping(
    tiny_model, tmp_path: Path, scored: bool
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    plain = checkpoint(tmp_path / "plain", None)
    recorded = checkpoint(tmp_path / "recorded", EIGHT_AND_SIXTEEN_DO_NOT_HELP)
    # Without the record the same documents do get k=8 and k=16 (so the check below can fail).
    assert {8, 16} <= factors_chosen(plain, tokenizer, scored)
    with_record = factors_chosen(recorded, tokenizer, scored)
    assert not {8, 16} & with_record
    assert with_record & {2, 4, 32}  # compression is still used where it helps
    # A request's explicit plan may still use any factor the checkpoint was trained for.
    planner = DocumentReader(LandmarkConfig(), tokenizer, 2048, recorded)
    item = {"token_ids": [7] * 100, "plan": [[0, 40, 1], [40, 100, 8]]}
    assert planner.parse(item, DOCUMENT_MARKER).plan == ((0, 40, 1), (40, 100, 8))


def test_no_helpful_factor_drops_text_instead_of_compressing(tiny_model, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    record = json.loads(json.dumps(EIGHT_AND_SIXTEEN_DO_NOT_HELP))
    for effect in record["splits"]["dev"].values():
        effect.update(mean=-0.2, low=-0.4, high=0.0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert factors_chosen(checkpoint(tmp_path / "none", record), tokenizer, True) == {1}


def test_record_is_read_through_the_config_reader(tmp_path: Path) -> None:
    plain = EmbedderConfig.from_dict(shipped_config())
    assert plain.factor_help is None and plain.planning_factors() == plain.factors
    assert "factor_help" not in plain.to_dict()  # configs without a record are written as before
    data = {**shipped_config(), "factor_help": EIGHT_AND_SIXTEEN_DO_NOT_HELP}
    config = EmbedderConfig.from_dict(data)
    assert config.planning_factors() == (2, 4, 32)  # the "dev" split decides, not "test"
    assert EmbedderConfig.from_dict(config.to_dict()) == config
    assert isinstance(config.factor_help, FactorHelp) and config.factor_help.helps(2)
    with pytest.raises(ValueError, match="format_version=2"):
        EmbedderConfig.from_dict({**data, "format_version": 2})
    with pytest.raises(ValueError, match="decides on split 'held-out'"):
        EmbedderConfig.from_dict(
            {**data, "factor_help": {**EIGHT_AND_SIXTEEN_DO_NOT_HELP, "decided_on": "held-out"}}
        )
    broken = {**EIGHT_AND_SIXTEEN_DO_NOT_HELP, "splits": {"dev": {"2": {"mean": 1.0}}}}
    with pytest.raises(ValueError, match="malformed factor_help"):
        EmbedderConfig.from_dict({**data, "factor_help": broken})
    inverted = {"dev": {"2": {"mean": 1.0, "low": 2.0, "high": 3.0, "n": 5}}}
    with pytest.raises(ValueError, match="low <= mean <= high"):
        EmbedderConfig.from_dict(
            {**data, "factor_help": {**EIGHT_AND_SIXTEEN_DO_NOT_HELP, "splits": inverted}}
        )


@pytest.mark.parametrize("record", [None, "none-help"], ids=["all-factors", "no-factor-helps"])
def test_retriever_plan_is_the_measured_window_arm(tiny_model, tmp_path: Path, record) -> None:
    """The server plans a scored document exactly as the held-out QA arm that was measured,
    ``plan``: windows in 3/4 of the room and the gaps compressed at the helpful factors, or
    windows filling the room when no factor helps."""
    from transformers import AutoTokenizer

    from eval.suite.arms import COMPRESSION_FACTORS, DocumentView, plan_arm

    none_help = {
        "metric": "answer log-prob / token",
        "decided_on": "dev",
        "splits": {
            "dev": {
                str(k): {"mean": -0.1, "low": -0.3, "high": 0.1, "n": 20} for k in (2, 4, 8, 16, 32)
            }
        },
    }
    embedder = checkpoint(tmp_path / "ckpt", none_help if record else None)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    planner = DocumentReader(LandmarkConfig(), tokenizer, 4096, embedder)
    factors = () if record else COMPRESSION_FACTORS
    rng = random.Random(1)
    for n in (1500, 3000, 6000):
        for budget in (200, 700, 1000):
            bounds = tuple((a, min(n, a + rng.randint(8, 60))) for a in range(0, n, 60))
            values = tuple(rng.random() for _ in bounds)
            doc = ParsedDocument(token_ids=tuple([7] * n), marker=DOCUMENT_MARKER)
            scores = ScoredSpans(bounds, values)
            planned = planner.plan([doc], [0], 48, 4096 - 48 - budget, [scores])[0]
            view = DocumentView(
                [7] * n, [], list(bounds), list(values), (0, 1), (0, 1), list(values)
            )
            expected = plan_arm("plan", view, budget, 0.75, factors)
            assert [list(t) for t in planned.plan.as_triples()] == expected, (n, budget)
            assert planned.selection == "retriever"
            assert planned.plan.soft_tokens <= budget


def _qa_report(split: str, differences: dict[str, tuple[float, float, float]]) -> dict:
    """A qa_run report reduced to what eval.suite.factor_help reads."""
    return {
        "split": split,
        "budget": 1024,
        "raw_share": 0.75,
        "summary": {
            "differences": {
                name: {"logprob": {"mean": m, "low": lo, "high": hi, "n": 64}}
                for name, (m, lo, hi) in differences.items()
            }
        },
    }


def test_factor_help_decides_against_the_planners_alternative(tmp_path: Path) -> None:
    """`--against drop` (default) reads `ARM-kK - ARM-drop` (the room spent on more windows),
    `--against only` reads `ARM-kK - ARM-only`; the record written decides on dev."""
    from eval.suite import factor_help as fh

    # Soft tokens beat dropping the text at k=16, but not more windows in the same room.
    dev = _qa_report(
        "dev",
        {
            "win-s64-k16-rrf - win-s64-only-rrf": (0.20, 0.05, 0.35),
            "win-s64-k16-rrf - win-s64-drop-rrf": (-0.10, -0.30, 0.08),
            "win-s64-k32-rrf - win-s64-only-rrf": (0.10, -0.05, 0.25),
            "win-s64-k32-rrf - win-s64-drop-rrf": (0.15, 0.02, 0.30),
            "win-s64-k16-rrf - bm25": (1.0, 0.5, 1.5),
        },
    )
    test = _qa_report("test", {"win-s64-k16-rrf - win-s64-drop-rrf": (0.0, -0.2, 0.2)})
    against_drop = fh.record(dev, test, "runs")
    assert sorted(against_drop.splits["dev"]) == [16, 32]
    assert [k for k in (16, 32) if against_drop.helps(k)] == [32]
    assert "filling the whole budget" in against_drop.metric
    assert "win-s64-rrf" in against_drop.metric
    only = fh.record(dev, None, "runs", against="only")
    assert [k for k in (16, 32) if only.helps(k)] == [16]
    with pytest.raises(ValueError, match="ARM-kK - ARM-drop"):
        fh.record(_qa_report("dev", {"win-s64-k16-rrf - win-s64-only-rrf": (0, -1, 1)}), None, "")
    with pytest.raises(ValueError, match="dev-split"):
        fh.record(test, None, "")
    mixed = _qa_report(
        "dev",
        {
            "win-s64-k16-rrf - win-s64-drop-rrf": (0.1, 0.0, 0.2),
            "win-t512-k16 - win-t512-drop": (0.1, 0.0, 0.2),
        },
    )
    with pytest.raises(ValueError, match="need one window arm"):
        fh.record(mixed, None, "")
    # The CLI writes the record where the planner reads it.
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / EMBEDDER_CONFIG_NAME).write_text(json.dumps(shipped_config()))
    (tmp_path / "dev.json").write_text(json.dumps(dev))
    assert fh.main(["--dev", str(tmp_path / "dev.json"), "--embedder", str(folder)]) == 0
    assert EmbedderConfig.from_folder(folder).planning_factors() == (32,)
