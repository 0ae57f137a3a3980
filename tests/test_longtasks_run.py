"""The long-task runner's scores (eval/longtasks/run.py): evidence kept whole, keyword ranks
read from the kept text, and the summary's paired differences."""

from __future__ import annotations

import pytest

from eval.longtasks.run import evidence_score, frequent_score, merged, summarize


def test_touching_ranges_merge_and_evidence_must_lie_inside_one() -> None:
    assert merged([(10, 20), (0, 5), (5, 8), (19, 30)]) == [(0, 8), (10, 30)]
    document = "aaa. The code is 12345. bbb. VAR X = 1. ccc."
    evidence = ["The code is 12345.", "VAR X = 1."]
    code = document.index(evidence[0])
    var = document.index(evidence[1])
    assert evidence_score(document, evidence, [(0, len(document))]) == 1.0
    assert evidence_score(document, evidence, [(code, code + 18)]) == 0.5
    # Cut in two but the halves touch: kept whole.
    halves = [(code, code + 9), (code + 9, code + 18), (var, var + 10)]
    assert evidence_score(document, evidence, halves) == 1.0
    # One character short: not kept.
    assert evidence_score(document, evidence, [(code, code + 17)]) == 0.0


def test_keyword_ranks_are_counted_in_what_was_kept() -> None:
    lines = ["Keyword: alpha."] * 5 + ["Keyword: beta."] * 3 + ["Keyword: gamma."] * 2
    document = " ".join(lines)
    answers = ["alpha", "beta", "gamma"]
    assert frequent_score(document, answers, [(0, len(document))]) == 1.0
    # Keep only the beta and gamma lines: beta now ranks first, gamma second; none in place.
    start = document.index("Keyword: beta.")
    assert frequent_score(document, answers, [(start, len(document))]) == 0.0
    # Keep the last two alphas, every beta and gamma: beta 3, alpha 2, gamma 2 (ties by name),
    # so only gamma is in its place.
    cut = document.index("Keyword: alpha.", 3 * 16)
    assert frequent_score(document, answers, [(cut, len(document))]) == pytest.approx(1 / 3)


def test_summary_pairs_plan_with_every_arm_on_the_same_items() -> None:
    def record(family: str, hops: int | None, plan: float, one: float) -> dict:
        scores = {arm: 0.0 for arm in ("truncate", "spread", "bm25", "m3")}
        scores.update({"plan-1": one, "plan": plan, "whole": None})
        return {"family": family, "length": 4096, "hops": hops, "scores": scores}

    records = [record("chain", 2, 1.0, 1.0), record("chain", 4, 1.0, 0.5)]
    records += [record("chain", 5, 0.8, 0.4)]
    table = {(e["family"], e["length"]): e for e in summarize(records)["table"]}
    assert table[("chain", 4096)]["items"] == 3
    assert table[("chain-3plus", 4096)]["items"] == 2  # hops >= 3 only
    gain = table[("chain-3plus", 4096)]["plan-plan-1"]
    assert gain["mean"] == pytest.approx(0.45)
    assert "whole" not in table[("chain", 4096)]  # the arm did not apply


def test_an_answer_holding_another_keys_value_counts_as_a_look_alike() -> None:
    from eval.longtasks.answer import score_answer

    document = (
        "Intro. The value for aa-11 is 0f-1a. The value for bb-22 is 9c-2b. "
        "The value for cc-33 is 77-3c. Outro."
    )
    item = {"family": "identifier", "document": document, "answers": ["9c-2b"]}
    assert score_answer(item, "It is 9C-2B.") == {"correct": 1.0, "look_alike": 0.0}
    assert score_answer(item, "The value is 77-3c") == {"correct": 0.0, "look_alike": 1.0}
    chain = {"family": "chain", "document": "VAR AB = 1.", "answers": ["AB", "CD"]}
    assert score_answer(chain, "AB and XY") == {"correct": 0.5}
