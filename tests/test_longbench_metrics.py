"""Unit tests for eval.longbench (LongBench v1 metrics and scorer), with hand-worked values.

The Chinese cases rely on jieba 0.42.1's default dictionary; the segmentation each case depends
on is written next to it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("jieba")
pytest.importorskip("rouge")
pytest.importorskip("fuzzywuzzy")

from eval.longbench import metrics as m  # noqa: E402
from eval.longbench import score as s  # noqa: E402

# ------------------------------------------------------------------ normalisation


def test_normalize_answer() -> None:
    # lower -> "the cat, sat!  on an mat." ; punctuation -> "the cat sat  on an mat"
    # articles -> " cat sat  on   mat" ; whitespace -> "cat sat on mat"
    assert m.normalize_answer("The Cat, sat!  on an mat.") == "cat sat on mat"
    # articles only as whole words: "theatre" and "an" inside "banana" stay
    assert m.normalize_answer("Theatre banana") == "theatre banana"


def test_normalize_zh_answer() -> None:
    # lowercase (fullwidth letters too), drop "，" "！" "》" and the space; "《" is not in the
    # published punctuation set, so it stays.
    assert m.normalize_zh_answer("Ｈｅｌｌｏ，世界！ 《书》") == "ｈｅｌｌｏ世界《书"
    # ASCII punctuation and the ASCII full stop are removed as well
    assert m.normalize_zh_answer("a.b, c!") == "abc"


# ------------------------------------------------------------------ English QA F1


def test_qa_f1_basic() -> None:
    # "the cat sat" -> [cat, sat]; "a cat sat down" -> [cat, sat, down]
    # overlap 2; P = 2/2 = 1, R = 2/3; F1 = 2 * 1 * 2/3 / (1 + 2/3) = 0.8
    assert m.qa_f1_score("the cat sat", "a cat sat down") == pytest.approx(0.8)


def test_qa_f1_multiset_and_zero() -> None:
    # [cat, cat, cat] vs [cat]: overlap min(3, 1) = 1; P = 1/3, R = 1; F1 = (2/3)/(4/3) = 0.5
    assert m.qa_f1_score("cat cat cat", "cat") == pytest.approx(0.5)
    assert m.qa_f1_score("dog", "cat") == 0.0
    # everything normalises away -> no tokens -> 0
    assert m.qa_f1_score("The.", "a") == 0.0
    # case and punctuation do not matter: "Paris!" vs "paris" -> 1
    assert m.qa_f1_score("Paris!", "paris") == 1.0


# ------------------------------------------------------------------ Chinese QA F1


def test_qa_f1_zh() -> None:
    # jieba: 我爱北京天安门 -> [我, 爱, 北京, 天安门]; 我爱北京 -> [我, 爱, 北京]
    # overlap 3; P = 3/4, R = 1; F1 = 1.5 / 1.75 = 6/7
    assert m.qa_f1_zh_score("我爱北京天安门", "我爱北京") == pytest.approx(6 / 7)
    # 北京是中国的首都。 -> [北京, 是, 中国, 的, 首都, 。]; "。" normalises to "" and is dropped;
    # same multiset as 中国的首都是北京 -> F1 = 1
    assert m.qa_f1_zh_score("北京是中国的首都。", "中国的首都是北京") == pytest.approx(1.0)
    # [她, 喜欢, 香蕉, 和, 苹果] vs [他, 喜欢, 苹果]: overlap 2; P = 2/5, R = 2/3
    # F1 = 2 * (4/15) / (16/15) = 0.5
    assert m.qa_f1_zh_score("她喜欢香蕉和苹果！", "他喜欢苹果") == pytest.approx(0.5)
    assert m.qa_f1_zh_score("！！", "北京") == 0.0


# ------------------------------------------------------------------ ROUGE-L


def test_rouge_l_single_sentence() -> None:
    # rouge package, one sentence each. Word counts are of DISTINCT words:
    # ref {the, cat, lay, on, mat} m = 5, hyp {the, cat, sat, on, mat} n = 5.
    # LCS = the cat on the mat, as a set of words {the, cat, on, mat} = 4.
    # r = p = 4/5; f = 2 * (0.64 / (1.6 + 1e-8))
    expected = 2.0 * (0.64 / (1.6 + 1e-8))
    got = m.rouge_score("the cat sat on the mat", "the cat lay on the mat")
    assert got == pytest.approx(expected, abs=1e-12)
    assert got == pytest.approx(0.8, abs=1e-8)


def test_rouge_l_sentence_split_on_full_stop() -> None:
    # hyp "a b. c d" -> sentences [a b], [c d]; ref one sentence "c d a b".
    # union LCS over hyp sentences: {a, b} | {c, d} = 4 words; m = n = 4 -> r = p = 1
    # f = 2 * (1 / (2 + 1e-8)) ~ 1. As one sentence "a b c d" the LCS would be 2 (f ~ 0.5).
    assert m.rouge_score("a b. c d", "c d a b") == pytest.approx(2.0 / (2.0 + 1e-8), abs=1e-12)
    assert m.rouge_score("a b c d", "c d a b") == pytest.approx(0.5, abs=1e-8)


def test_rouge_l_errors_score_zero() -> None:
    # empty hypothesis (or only "."s) -> the package raises -> 0
    assert m.rouge_score("", "the cat") == 0.0
    assert m.rouge_score("...", "the cat") == 0.0


def test_rouge_zh() -> None:
    # jieba: 会议讨论了预算 -> 会议 讨论 了 预算 (n = 4);
    #        会议讨论了项目预算 -> 会议 讨论 了 项目 预算 (m = 5); LCS = 4 words
    # r = 4/5, p = 1; f = 2 * (0.8 / (1.8 + 1e-8)) ~ 8/9
    expected = 2.0 * (0.8 / (1.8 + 1e-8))
    assert m.rouge_zh_score("会议讨论了预算", "会议讨论了项目预算") == pytest.approx(
        expected, abs=1e-12
    )


# ------------------------------------------------------------------ classification


def test_classification_score() -> None:
    classes = ["City", "Country", "Other location"]
    assert m.classification_score("City", "City", all_classes=classes) == 1.0
    # two classes named -> 1/2
    assert m.classification_score("City or Country", "City", all_classes=classes) == 0.5
    assert m.classification_score("Country", "City", all_classes=classes) == 0.0
    with pytest.raises(ValueError):
        m.classification_score("City", "City")


def test_classification_substring_rule_and_quirk() -> None:
    # "Animal" is a substring of the gold "Animal product" -> discarded -> [Animal product] -> 1
    classes = ["Animal", "Animal product"]
    assert m.classification_score("Animal product", "Animal product", all_classes=classes) == 1.0
    # matches [dog, do, hotdog]; "dog" (substring of gold) is removed while walking the list,
    # so "do" slides into its slot and is never examined: final [do, hotdog] -> 1/2
    classes = ["dog", "do", "hotdog"]
    assert m.classification_score("hotdog", "hotdog", all_classes=classes) == 0.5


# ------------------------------------------------------------------ retrieval / count


def test_retrieval_scores() -> None:
    assert m.retrieval_score("Paragraph 12", "Paragraph 12") == 1.0
    # numbers [3, 12], one equals 12 -> 1/2
    assert m.retrieval_score("Paragraph 3 or Paragraph 12", "Paragraph 12") == 0.5
    assert m.retrieval_score("I do not know", "Paragraph 12") == 0.0
    # whole digit runs: [5, 15] vs 5 -> 1/2
    assert m.retrieval_zh_score("答案是段落5，不是段落15", "段落5") == 0.5
    assert m.retrieval_zh_score("段落5", "段落5") == 1.0
    with pytest.raises(ValueError):
        m.retrieval_score("1", "no paragraph id")


def test_count_score() -> None:
    # numbers [7, 20] vs 7 -> 1/2
    assert m.count_score("There are 7 unique paragraphs out of 20", "7") == 0.5
    assert m.count_score("7", "7") == 1.0
    assert m.count_score("seven", "7") == 0.0


# ------------------------------------------------------------------ code similarity


def test_code_sim_first_line_rule() -> None:
    # fences and comment lines are skipped -> "x = 1" equals the gold line -> 100/100
    assert m.code_sim_score("```python\n# set x\nx = 1\n```", "x = 1") == 1.0
    assert m.first_code_line("\n\n// note\nint x = 1;") == "int x = 1;"
    # a blank line is NOT skipped: the first eligible line is "" -> ratio with "" is 0
    assert m.first_code_line("# c\n\nx = 1") == ""
    assert m.code_sim_score("# c\n\nx = 1", "x = 1") == 0.0
    # only comments -> "" -> 0
    assert m.code_sim_score("# only a comment", "x = 1") == 0.0


def test_code_sim_ratio() -> None:
    # ratio = 2 * matches / total length: "abcd" vs "abce": 2 * 3 / 8 = 0.75 -> 75 -> 0.75
    assert m.code_sim_score("abcd", "abce") == 0.75
    # "abc" vs "abd": 2 * 2 / 6 = 66.67 -> rounded to the integer 67 -> 0.67
    assert m.code_sim_score("abc", "abd") == 0.67


# ------------------------------------------------------------------ item scoring


def test_first_line_rule() -> None:
    assert m.first_line("\n\nParis\nLondon") == "Paris"
    # triviaqa: cut to "Paris" -> F1 1
    assert m.score_item("triviaqa", "\nParis\nLondon is big", ["Paris"]) == 1.0
    # hotpotqa has no first-line rule: [paris, london] vs [paris] -> P 1/2, R 1 -> 2/3
    assert m.score_item("hotpotqa", "\nParis\nLondon", ["Paris"]) == pytest.approx(2 / 3)
    # trec: "Location\nHuman" cut to "Location" -> one class matched -> 1 (uncut: 1/2)
    classes = ["Location", "Human"]
    assert m.score_item("trec", "Location\nHuman", ["Location"], classes) == 1.0
    assert m.classification_score("Location\nHuman", "Location", all_classes=classes) == 0.5
    # the LongBench-E name gets the same rule
    assert m.score_item("triviaqa_e", "Paris\nLondon", ["Paris"]) == 1.0


def test_max_over_answers() -> None:
    # "the cat sat" vs: "dog" -> 0; "cat sat down" -> 0.8; "cat" -> P 1/2, R 1 -> 2/3. max 0.8
    got = m.score_item("hotpotqa", "the cat sat", ["dog", "cat sat down", "cat"])
    assert got == pytest.approx(0.8)
    assert m.score_item("hotpotqa", "the cat sat", []) == 0.0
    with pytest.raises(KeyError):
        m.score_item("no_such_dataset", "x", ["x"])


def test_dataset_tables() -> None:
    assert len(m.DATASET2METRIC) == 21 + 13
    assert m.DATASET2METRIC["multifieldqa_zh"] is m.qa_f1_zh_score
    assert m.DATASET2METRIC["dureader"] is m.rouge_zh_score
    assert m.DATASET2METRIC["vcsum"] is m.rouge_zh_score
    assert m.DATASET2METRIC["samsum"] is m.rouge_score
    assert m.DATASET2METRIC["lsht"] is m.classification_score
    assert m.DATASET2METRIC["passage_retrieval_zh"] is m.retrieval_zh_score
    assert m.DATASET2METRIC["repobench-p_e"] is m.code_sim_score
    assert m.DATASET2METRIC["triviaqa_e"] is m.qa_f1_score
    assert "multifieldqa_zh_e" not in m.DATASET2METRIC  # no Chinese sets in LongBench-E
    assert m.DATASET2CATEGORY["passage_count_e"] == "synthetic"
    assert m.DATASET2CATEGORY["dureader"] == "multi-doc QA"
    assert sorted(m.DATASET2CATEGORY) == sorted(m.DATASET2METRIC)
    assert m.base_dataset("qasper_e") == "qasper"
    assert m.base_dataset("vcsum") == "vcsum"


# ------------------------------------------------------------------ numeric helpers


def test_score_v1_rounding() -> None:
    # total 1.5 -> 100 * 1.5 / 3 = 50.0
    assert s.score_v1([1.0, 0.5, 0.0]) == 50.0
    # 100 * 1 / 3 = 33.333... -> 33.33
    assert s.score_v1([1 / 3, 1 / 3, 1 / 3]) == 33.33
    assert s.score_v1([]) is None


def test_numpy_mean_pairwise_order() -> None:
    # numpy sums 10 values as: 8 accumulators (one value each), combined
    # ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)), then + v8 + v9 left to right.
    v = 0.1
    pairwise = (((v + v) + (v + v)) + ((v + v) + (v + v))) + v + v
    sequential = 0.0
    for _ in range(10):
        sequential += v
    assert pairwise != sequential  # 1.0 vs 0.9999999999999999
    assert s.numpy_mean([v] * 10) == pairwise / 10
    # fewer than 8 values: plain left-to-right
    assert s.numpy_mean([0.5, 0.25]) == 0.375


def test_numpy_round2_differs_from_python_round() -> None:
    # 0.015 is stored as 0.01499999999999999944...: Python's exact round -> 0.01, but
    # numpy's round computes 0.015 * 100 = 1.5 (rounded product), rint(1.5) = 2 -> 0.02
    assert round(0.015, 2) == 0.01
    assert s.numpy_round2(0.015) == 0.02
    assert s.score_e([]) is None
    # 100 * mean(1, 0, 0) = 33.333... -> 33.33
    assert s.score_e([1.0, 0.0, 0.0]) == 33.33


def test_bucket_of() -> None:
    assert s.bucket_of(0) == "0-4k"
    assert s.bucket_of(3999) == "0-4k"
    assert s.bucket_of(4000) == "4-8k"
    assert s.bucket_of(7999.5) == "4-8k"
    assert s.bucket_of(8000) == "8k+"


# ------------------------------------------------------------------ aggregation


def test_aggregate_v1() -> None:
    scores = {"qasper": 40.0, "narrativeqa": 20.0, "hotpotqa": 60.0, "trec": 90.0}
    out = s.aggregate(scores)
    # single-doc (40 + 20) / 2 = 30; multi-doc 60; few-shot 90; others absent
    assert out["categories"]["single-doc QA"] == 30.0
    assert out["categories"]["multi-doc QA"] == 60.0
    assert out["categories"]["few-shot"] == 90.0
    assert out["categories"]["code"] is None
    # mean of category means (30 + 60 + 90) / 3 = 60; flat mean (40 + 20 + 60 + 90) / 4 = 52.5
    assert out["average"] == {"category_mean": 60.0, "dataset_mean": 52.5}


def test_aggregate_e() -> None:
    scores = {
        "qasper": {"0-4k": 10.0, "4-8k": 20.0, "8k+": None},
        "lcc": {"0-4k": 50.0, "4-8k": 40.0, "8k+": 30.0},
        "hotpotqa": {"0-4k": 30.0, "4-8k": 30.0, "8k+": 30.0},
    }
    out = s.aggregate(scores, longbench_e=True)
    assert out["categories"]["single-doc QA"] == {"0-4k": 10.0, "4-8k": 20.0, "8k+": None}
    # 0-4k: categories 10, 30, 50 -> 30; datasets 10, 50, 30 -> 30
    # 4-8k: categories 20, 30, 40 -> 30
    # 8k+ : qasper empty -> categories 30 (multi-doc), 30 (code) -> 30
    assert out["average"]["category_mean"] == {"0-4k": 30.0, "4-8k": 30.0, "8k+": 30.0}
    assert out["average"]["dataset_mean"] == {"0-4k": 30.0, "4-8k": 30.0, "8k+": 30.0}


# ------------------------------------------------------------------ files and CLI


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _row(pred: str, answers: list[str], length: int = 100, classes: list[str] | None = None) -> str:
    return json.dumps(
        {"pred": pred, "answers": answers, "all_classes": classes, "length": length},
        ensure_ascii=False,
    )


def test_score_dir_v1_with_malformed_lines(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write(
        tmp_path / "hotpotqa.jsonl",
        [
            _row("the cat sat", ["a cat sat down"]),  # 0.8
            "{not json",  # line 2: bad JSON
            json.dumps({"answers": ["x"]}),  # line 3: no pred
            "",  # blank: ignored, not counted
            json.dumps({"pred": "x", "answers": "x"}),  # line 5: answers not a list
            _row("Paris", ["paris", "Lyon"]),  # 1.0
        ],
    )
    _write(tmp_path / "trec.jsonl", [_row("Location\nHuman", ["Location"], classes=["Location"])])
    _write(tmp_path / "mystery.jsonl", [_row("a", ["a"])])
    (tmp_path / "notes.txt").write_text("ignored")
    result = s.score_dir(tmp_path)
    err = capsys.readouterr().err
    assert "hotpotqa.jsonl:2: invalid JSON" in err
    assert "hotpotqa.jsonl:3:" in err and '"pred"' in err
    assert "hotpotqa.jsonl:5:" in err
    assert "unknown data set name 'mystery'" in err
    # hotpotqa: (0.8 + 1.0) / 2 -> 90.0; trec: first line "Location" -> 100.0
    assert result["datasets"] == {"hotpotqa": 90.0, "trec": 100.0}
    assert result["counts"]["hotpotqa"] == {"scored": 2, "malformed": 3}
    assert result["skipped_files"] == {"mystery.jsonl": "unknown data set name 'mystery'"}
    # categories: multi-doc 90, few-shot 100 -> 95; datasets (90 + 100) / 2 = 95
    assert result["average"] == {"category_mean": 95.0, "dataset_mean": 95.0}
    assert "qasper" in result["missing_datasets"]


def test_score_dir_longbench_e_buckets(tmp_path: Path) -> None:
    _write(
        tmp_path / "qasper_e.jsonl",
        [
            _row("cat", ["cat"], length=3999),  # 0-4k: 1.0
            _row("dog", ["cat"], length=10),  # 0-4k: 0.0
            _row("the cat sat", ["a cat sat down"], length=4000),  # 4-8k: 0.8
            _row("cat", ["cat"], length=9000),  # 8k+: 1.0
            json.dumps({"pred": "cat", "answers": ["cat"]}),  # no length: skipped in --e mode
        ],
    )
    _write(tmp_path / "passage_count.jsonl", [_row("7 or 20", ["7"], length=100)])  # 0-4k: 0.5
    result = s.score_dir(tmp_path, longbench_e=True)
    # qasper_e: 0-4k mean(1, 0) = 50; 4-8k 80; 8k+ 100
    assert result["datasets"]["qasper_e"] == {"0-4k": 50.0, "4-8k": 80.0, "8k+": 100.0}
    assert result["datasets"]["passage_count"] == {"0-4k": 50.0, "4-8k": None, "8k+": None}
    assert result["counts"]["qasper_e"]["malformed"] == 1
    assert result["counts"]["qasper_e"]["buckets"] == {"0-4k": 2, "4-8k": 1, "8k+": 1}
    # 0-4k: single-doc 50, synthetic 50 -> 50; 4-8k: only single-doc 80; 8k+: 100
    assert result["average"]["category_mean"] == {"0-4k": 50.0, "4-8k": 80.0, "8k+": 100.0}


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write(tmp_path / "passage_retrieval_en.jsonl", [_row("Paragraph 3", ["Paragraph 3"])])
    assert s.main(["--pred-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "passage_retrieval_en" in out and "100.00" in out
    saved = json.loads((tmp_path / "result.json").read_text(encoding="utf-8"))
    assert saved["datasets"] == {"passage_retrieval_en": 100.0}
    assert saved["categories"]["synthetic"] == 100.0


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert s.main(["--pred-dir", str(tmp_path / "missing")]) == 2
    assert "prediction folder not found" in capsys.readouterr().err
    assert s.main(["--pred-dir", str(tmp_path)]) == 2  # empty folder
    assert "no *.jsonl" in capsys.readouterr().err
    _write(tmp_path / "foo.jsonl", [_row("a", ["a"])])
    assert s.main(["--pred-dir", str(tmp_path)]) == 2  # only unknown names
    assert "unknown data set name 'foo'" in capsys.readouterr().err
