"""Real-text QA evaluation (eval/suite/qa.py, arms.py, stats.py, qa_run.py): tiny data, no LLM."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from eval.suite import arms as ar
from eval.suite import qa
from eval.suite import qa_run as qr
from eval.suite.stats import is_degenerate, mean_interval, paired_difference
from recipes.m3.build_data import Document, Section
from vllm_landmark.compression.embedder_config import EmbedderConfig


class WordTokenizer:
    """A stand-in for an LLM tokenizer: one token per whitespace-separated word."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]

    def __call__(self, text: str, **kwargs: object) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        words = {i: w for w, i in self.vocab.items()}
        return " ".join(words[i] for i in ids) + " "


# ------------------------------------------------------------------------------ statistics


def test_paired_bootstrap_covers_the_true_difference() -> None:
    covered, excluded_zero = 0, 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        base = rng.normal(-2.0, 1.0, 200)  # item difficulty, shared by both arms
        a = base + 0.3 + rng.normal(0, 0.5, 200)
        b = base + rng.normal(0, 0.5, 200)
        diff = paired_difference(a, b, resamples=1000, seed=seed)
        covered += diff.low <= 0.3 <= diff.high
        excluded_zero += diff.low > 0
    assert covered >= 34  # nominal 95% of 40
    assert excluded_zero >= 38  # a 0.3 shift with 200 items is separated


def test_identical_arms_give_an_interval_around_zero() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, 100)
    diff = paired_difference(a, a + rng.normal(0, 0.01, 100))
    assert diff.low <= 0 <= diff.high or abs(diff.mean) < 0.01
    interval = mean_interval([1.0, 2.0, 3.0, 4.0])
    assert interval.low <= 2.5 <= interval.high and interval.n == 4
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0])


def test_cluster_bootstrap_counts_a_page_once_however_many_questions_it_has() -> None:
    """Three identical copies of each item, clustered by item, give the interval of the items
    alone; the item bootstrap would call the copies independent and narrow it."""
    rng = np.random.default_rng(5)
    values = rng.normal(0.2, 1.0, size=40)
    alone = mean_interval(values)
    copies = np.repeat(values, 3)
    pages = np.repeat(np.arange(40), 3).tolist()
    clustered = mean_interval(copies, clusters=pages)
    assert clustered.mean == pytest.approx(alone.mean)
    assert (clustered.low, clustered.high) == pytest.approx((alone.low, alone.high))
    assert clustered.n == 120 and clustered.as_dict()["clusters"] == 40
    naive = mean_interval(copies)
    assert naive.high - naive.low < 0.7 * (alone.high - alone.low)
    # One item per cluster is the item bootstrap, draw for draw.
    singles = mean_interval(values, clusters=[f"p{i}" for i in range(40)])
    assert (singles.low, singles.high) == pytest.approx((alone.low, alone.high))
    assert "clusters" not in singles.as_dict()
    with pytest.raises(ValueError, match="cluster labels"):
        mean_interval(values, clusters=[0, 1])


def test_paired_bootstrap_is_narrower_than_comparing_unpaired_intervals() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(0, 3, 60)
    a, b = base + 0.5, base + rng.normal(0, 0.2, 60)
    diff = paired_difference(a, b)
    ia, ib = mean_interval(a), mean_interval(b)
    assert diff.low > 0  # pairing removes the shared item difficulty
    assert ia.low < ib.high  # while the separate intervals overlap


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("", True),
        ("   \n", True),
        ("!!!!!!!!", True),
        ("* * * * * *", True),
        ("the the the the the the", True),
        ("Answer: the the the the the the the", True),
        ("alphabetically", False),
        ("The missing word is alphabetically.", False),
        ("no no", False),
        ("1, 2, 3, 4", False),
        ("/usr/share/pgf/", False),  # a path: its separators join words
        ("/proc/sys/kernel/stack", False),
        ("/usr/usr/usr/usr", True),  # ... but a repeated word inside one is still caught
        ("a - - - - - - b", True),
        ("1. 1.1.1", True),
    ],
)
def test_degeneration_detector(answer: str, expected: bool) -> None:
    assert is_degenerate(answer) is expected


# ------------------------------------------------------------------------------ generator

FILLER = (
    "Sorting happens before printing and every entry is listed once in the output. "
    "The program reads its settings before it starts to list the current directory. "
)


def make_doc(key: str, lang: str, fact: str) -> Document:
    paragraphs = [FILLER * 2, fact, FILLER]
    return Document(
        doc_id=f"man-{lang}:{key}",
        key=key,
        lang=lang,
        source="manpages",
        title=key,
        sections=[Section("DESCRIPTION", 1, paragraphs)],
    )


def corpus() -> list[Document]:
    docs = []
    for i in range(40):
        fact = (
            f"The cache of tool{i} is stored in the hidden folder named quarterdeck{i} "
            "under the home directory of the user."
        )
        docs.append(make_doc(f"man:tool{i}", "en", fact))
        if i % 4 == 0:  # a translation shares the key
            docs.append(make_doc(f"man:tool{i}", "de", fact))
    return docs


def test_generator_split_is_by_document_and_answers_are_stated_once() -> None:
    items = qa.generate(corpus(), WordTokenizer(), length=200, min_fraction=0.2)
    assert len(items) >= 40
    dev = {item["key"] for item in items if item["split"] == "dev"}
    test = {item["key"] for item in items if item["split"] == "test"}
    assert dev and test and not dev & test
    for item in items:
        context, word = item["context"], item["answer_word"]
        assert qa.word_count(context, word) == 1
        assert qa.word_count(item["question"], word) == 0
        low, high = item["evidence"]
        assert low <= item["answer_start"] < high
        assert context[item["answer_start"] :].startswith(item["answer"])
        assert item["answer"].startswith(word) and len(item["answer"].split()) <= qa.ANSWER_WORDS
        prefix = context[low : item["answer_start"]].strip()
        assert f'"{prefix} ..."' in item["question"]
    again = qa.generate(corpus(), WordTokenizer(), length=200, min_fraction=0.2)
    assert again == items  # deterministic


def test_select_interleaves_languages_within_one_split() -> None:
    items = [
        {"split": "dev", "lang": lang, "key": f"{lang}{i}"}
        for lang in ("de", "en")
        for i in range(3)
    ] + [{"split": "test", "lang": "en", "key": "t"}]
    picked = qa.select(items, "dev", 4)
    assert [item["lang"] for item in picked] == ["de", "en", "de", "en"]
    assert all(item["split"] == "dev" for item in picked)


# ------------------------------------------------------------------------------ arms


def item_with_passage() -> dict:
    sentences = [
        f"Filler sentence number {i} talks about nothing in particular." for i in range(60)
    ]
    sentences[41] = "The backup daemon writes its journal to the folder quarterdeck every night."
    context = " ".join(sentences)
    start = context.index("The backup daemon")
    answer_start = context.index("quarterdeck")
    return {
        "id": "x",
        "context": context,
        "question": 'How does this continue: "The backup daemon writes its journal to ..."?',
        "answer": "quarterdeck every night.",
        "answer_word": "quarterdeck",
        "answer_start": answer_start,
        "evidence": [start, start + len(sentences[41])],
    }


def test_bm25_arm_picks_the_passage_with_the_query_words() -> None:
    item = item_with_passage()
    ranked = ar.Bm25Retriever().rank(item["context"], item["question"])
    best = max(ranked, key=lambda s: s.score)
    assert "backup daemon" in item["context"][best.start : best.end]
    given = ar.arm_input("bm25", item, WordTokenizer(), budget=40)
    assert "quarterdeck" in given.text
    assert given.info["answer_in_context"]
    truncated = ar.arm_input("truncate", item, WordTokenizer(), budget=40)
    assert not truncated.info["answer_in_context"]  # the middle is cut


def synthetic_view(n_spans: int = 50, best: int = 30) -> ar.DocumentView:
    spans = [(i * 20, i * 20 + 20) for i in range(n_spans)]
    rng = random.Random(0)
    scores = [rng.random() * 0.5 for _ in spans]
    scores[best] = 1.0
    paragraphs = [(i * 100, i * 100 + 100) for i in range(n_spans // 5)]
    return ar.DocumentView(
        token_ids=list(range(n_spans * 20)),
        paragraphs=paragraphs,
        spans=spans,
        scores=scores,
        evidence=(best * 20, best * 20 + 20),
        answer=(best * 20 + 5, best * 20 + 6),
    )


@pytest.mark.parametrize(
    "arm", ["oracle", "fragments", "win-t64", "win-p100", "win-t128-drop", "win-p64-drop"]
)
def test_plan_arms_fit_the_budget_and_keep_the_best_span_raw(arm: str) -> None:
    view = synthetic_view()
    plan = ar.plan_arm(arm, view, budget=256, raw_share=0.75)
    soft = sum(-(-(e - s) // k) for s, e, k in plan)
    assert soft <= 256
    assert [s for s, _, _ in plan] == sorted(s for s, _, _ in plan)
    a_low, a_high = view.answer
    assert any(s <= a_low and a_high <= e and k == 1 for s, e, k in plan)
    raw = sum(e - s for s, e, k in plan if k == 1)
    if arm.startswith("win") and not arm.endswith("drop"):
        assert raw <= 192 and any(k > 1 for _, _, k in plan)
    if arm == "win-p100":  # the best span's paragraph (600-700) is kept whole
        assert any(s <= 600 and e >= 700 and k == 1 for s, e, k in plan)


def test_unknown_arm_is_refused() -> None:
    with pytest.raises(ValueError):
        ar.check_arm("win-x12")
    with pytest.raises(ValueError, match="K must be one of"):
        ar.check_arm("win-t64-k3")


def test_factor_arms_share_the_windows_and_differ_only_in_the_rest() -> None:
    view = synthetic_view()
    only = ar.plan_arm("win-t64-only", view, budget=256, raw_share=0.75)
    assert {k for _, _, k in only} == {1} and sum(e - s for s, e, _ in only) <= 192
    for k in (2, 8, 32):
        plan = ar.plan_arm(f"win-t64-k{k}", view, budget=256, raw_share=0.75)
        assert [t for t in plan if t[2] == 1] == only  # the same k=1 tokens
        assert {f for _, _, f in plan} == {1, k}
        assert sum(-(-(e - s) // f) for s, e, f in plan) <= 256
    # win-tN at the factors a checkpoint keeps: only those appear.
    kept = ar.plan_arm("win-t64", view, budget=256, raw_share=0.75, factors=(4, 32))
    assert {f for _, _, f in kept} <= {1, 4, 32}
    # No factor helps: the windows take the whole budget, as win-tN-drop.
    none = ar.plan_arm("win-t64", view, budget=256, raw_share=0.75, factors=())
    assert none == ar.plan_arm("win-t64-drop", view, budget=256, raw_share=0.75)
    assert {k for _, _, k in none} == {1} and sum(e - s for s, e, _ in none) > 192


# ------------------------------------------------------------------------------ runner pieces


def test_answer_logprob_reads_the_answer_tail() -> None:
    entry = {7: SimpleNamespace(logprob=-1.0), 8: SimpleNamespace(logprob=-3.0)}
    output = SimpleNamespace(
        prompt_token_ids=[1, 2, 7, 8], prompt_logprobs=[None, {}, entry, entry]
    )
    assert qr.answer_logprob(output, [7, 8]) == pytest.approx(-2.0)
    with pytest.raises(ValueError):
        qr.answer_logprob(output, [8, 7])


def test_summary_and_table_show_intervals_and_paired_differences() -> None:
    rng = np.random.default_rng(3)
    records = {}
    for arm, shift in (("truncate", 0.0), ("oracle", 1.0)):
        records[arm] = [
            {
                "id": str(i),
                "key": f"page-{i // 2}",  # two questions per page
                "lang": "de" if i % 3 else "en",
                "logprob": -3.0 + shift + rng.normal(0, 0.3),
                "hit": float(shift > 0),
                "degenerate": 0.0,
                "answer_in_context": 1.0,
                "prompt_tokens": 1000,
            }
            for i in range(30)
        ]
    summary = qr.summarize(records, ["truncate"])
    diff = summary["differences"]["oracle - truncate"]["logprob"]
    assert diff["low"] > 0.7 and diff["high"] < 1.3
    table = qr.markdown({"summary": summary, "split": "test", "budget": 1024})
    assert "| oracle |" in table and "oracle - truncate" in table and "30 items" in table
    assert "resampling pages (15 pages)" in table and diff["clusters"] == 15
    assert summary["arms"]["oracle"]["by_language"]["en"]["n"] == 10
    assert "| arm | de (20) | en (10) |" in table  # per language, with the item counts


def test_reuse_takes_only_missing_arms_of_a_run_on_the_same_items(tmp_path) -> None:
    items = [{"id": "a"}, {"id": "b"}]

    def rows(*logprobs: float) -> list[dict]:
        return [
            {"id": i, "logprob": v, "lang": "en", "prompt_tokens": 9}
            for i, v in zip("ab", logprobs, strict=True)
        ]

    earlier = {"records": {"truncate": rows(-3.0, -2.0), "plan": rows(-9.0, -9.0)}}
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps(earlier))
    reused = qr.reuse_records(path, items, ["plan"])
    assert list(reused) == ["truncate"]  # this run's arm is not taken from the earlier run
    assert reused["truncate"] == earlier["records"]["truncate"]
    with pytest.raises(SystemExit, match="other items"):
        qr.reuse_records(path, [{"id": "b"}, {"id": "a"}], [])
    # With a tag, this run's arms keep their earlier records under a new name.
    tagged = qr.reuse_records(path, items, ["plan"], earlier_tag="before")
    assert sorted(tagged) == ["plan@before", "truncate"]
    assert tagged["plan@before"] == earlier["records"]["plan"]
    summary = qr.summarize({"plan": earlier["records"]["truncate"], **tagged}, ["plan@before"])
    assert summary["differences"]["plan - plan@before"]["logprob"]["mean"] == pytest.approx(6.5)


def test_qa_plot_has_one_point_per_length(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from eval.plots import plot_qa_budgets, plot_qa_lengths, qa_length

    reports = []
    for length, shift in ((4, 0.0), (8, -0.5), (16, -1.0)):
        stats = {"mean": -3.0 + shift, "low": -3.4 + shift, "high": -2.6 + shift, "n": 32}
        degenerate = {"mean": 0.1, "low": 0.0, "high": 0.2, "n": 32}
        arms = {arm: {"logprob": stats, "degenerate": degenerate} for arm in ("truncate", "m3")}
        reports.append(
            {"items_file": f"/x/qa-{length}k.jsonl", "budget": 1024, "summary": {"arms": arms}}
        )
    assert [qa_length(r) for r in reports] == [4096, 8192, 16384]
    assert qa_length({"items_file": "/x/qa-cross-8k.jsonl"}) == 8192
    path = plot_qa_lengths(reports, tmp_path / "qa.png")
    assert 5_000 < path.stat().st_size < 150_000
    for report, budget in zip(reports, (512, 1024, 2048), strict=True):
        report.update(items_file="/x/qa-8k.jsonl", budget=budget)
    path = plot_qa_budgets(reports, tmp_path / "qa_budget.png")
    assert 5_000 < path.stat().st_size < 150_000


def test_stored_answers_are_flagged_again_by_the_current_detector() -> None:
    records = {
        "plan": [
            {"id": "a", "pred": "/usr/share/pgf/", "degenerate": 1.0},  # an older detector's flag
            {"id": "b", "pred": "* * * *", "degenerate": 0.0},
            {"id": "c", "logprob": -1.0},  # scored only: no answer to flag
        ]
    }
    qr.redetect_degeneration(records)
    assert [r.get("degenerate") for r in records["plan"]] == [0.0, 1.0, None]


def test_checkpoint_factors_follow_the_embedder_the_engine_serves(tmp_path) -> None:
    """`--embedder FOLDER`: the plan arm's factors are that checkpoint's helpful ones, not the
    shipped checkpoint's (a candidate is measured as the server would plan with it)."""
    shipped = Path(qr.__file__).parents[2] / "plugin/data/embedders/smollm2-135m"
    config = json.loads((shipped / "embedder_config.json").read_text())
    recorded = EmbedderConfig.from_dict(config).planning_factors()
    assert qr.compression_factors("checkpoint", "unused", str(shipped)) == recorded
    candidate = tmp_path / "candidate"
    candidate.mkdir()
    for effect in config["factor_help"]["splits"]["dev"].values():
        effect["low"] = min(effect["low"], -0.01)
    (candidate / "embedder_config.json").write_text(json.dumps(config))
    assert qr.compression_factors("checkpoint", "unused", str(candidate)) == ()
    config["factor_help"]["splits"]["dev"]["8"] = {"mean": 0.2, "low": 0.01, "high": 0.4, "n": 20}
    (candidate / "embedder_config.json").write_text(json.dumps(config))
    assert qr.compression_factors("checkpoint", "unused", str(candidate)) == (8,)
    del config["factor_help"]
    (candidate / "embedder_config.json").write_text(json.dumps(config))
    assert qr.compression_factors("checkpoint", "unused", str(candidate)) == (2, 4, 8, 16, 32)


def test_runs_from_before_page_keys_get_them_from_their_items_file(tmp_path) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text(
        "".join(json.dumps({"id": i, "key": f"p{int(i) // 2}"}) + "\n" for i in "0123")
    )
    records = {"plan": [{"id": i, "logprob": -1.0 - int(i)} for i in "0123"]}
    qr.attach_pages(records, qr.read_items(items))
    assert [row["key"] for row in records["plan"]] == ["p0", "p0", "p1", "p1"]
    missing = {"plan": [{"id": "0", "logprob": -1.0}]}
    qr.attach_pages(missing, qr.read_items(tmp_path / "gone.jsonl"))  # no file: left per item
    assert "key" not in missing["plan"][0]
