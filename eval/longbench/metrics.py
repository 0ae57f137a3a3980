"""LongBench v1 per-item metrics, reimplemented to score exactly like the published evaluation.

Every metric takes ``(prediction, ground_truth, *, all_classes=None)`` and returns a score in
[0, 1]. The behaviour (including a few quirks, noted where they matter) follows the definitions
of THUDM/LongBench ``LongBench/metrics.py``, so numbers are comparable with published tables:

* ``qa_f1_score``: token F1 after SQuAD-style normalisation (lowercase, drop ASCII punctuation,
  drop the articles a/an/the, collapse whitespace).
* ``qa_f1_zh_score``: token F1 over jieba tokens, each stripped of ASCII and Chinese punctuation
  and of whitespace; tokens that become empty are dropped. No lowercasing before jieba.
* ``rouge_score``: ROUGE-L F of the ``rouge`` package (sentences split on "."); any error in
  that package (empty text, recursion depth on very long sentences) scores 0.
* ``rouge_zh_score``: the same on jieba tokens joined with spaces.
* ``classification_score``: 1/k when the gold class is among the k matched class names.
* ``retrieval_score`` / ``retrieval_zh_score``: share of the numbers in the prediction that equal
  the paragraph id in "Paragraph N" / "段落N".
* ``count_score``: share of the numbers in the prediction that equal the gold count.
* ``code_sim_score``: fuzzywuzzy ``fuzz.ratio`` / 100 between the gold line and the first
  predicted line that contains no "`", "#" or "//".

The third-party packages (jieba, rouge, fuzzywuzzy) are imported on first use only.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import cache
from typing import Any, Protocol


class Metric(Protocol):
    """Signature shared by all metrics."""

    def __call__(
        self, prediction: str, ground_truth: str, *, all_classes: Sequence[str] | None = None
    ) -> float: ...


# --------------------------------------------------------------------------- dataset tables

#: The 21 LongBench v1 data sets, grouped by the task category of the LongBench paper/README.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "single-doc QA": ("narrativeqa", "qasper", "multifieldqa_en", "multifieldqa_zh"),
    "multi-doc QA": ("hotpotqa", "2wikimqa", "musique", "dureader"),
    "summarization": ("gov_report", "qmsum", "multi_news", "vcsum"),
    "few-shot": ("trec", "triviaqa", "samsum", "lsht"),
    "synthetic": ("passage_count", "passage_retrieval_en", "passage_retrieval_zh"),
    "code": ("lcc", "repobench-p"),
}

#: The 13 data sets that have a LongBench-E version (published as ``<name>_e``).
LONGBENCH_E_DATASETS: tuple[str, ...] = (
    "qasper",
    "multifieldqa_en",
    "hotpotqa",
    "2wikimqa",
    "gov_report",
    "multi_news",
    "trec",
    "triviaqa",
    "samsum",
    "passage_count",
    "passage_retrieval_en",
    "lcc",
    "repobench-p",
)

#: Few-shot data sets whose prediction is cut to its first line before scoring.
FIRST_LINE_DATASETS: frozenset[str] = frozenset({"trec", "triviaqa", "samsum", "lsht"})

#: Chinese data sets (scored with the jieba-based metrics or "段落N" retrieval).
CHINESE_DATASETS: frozenset[str] = frozenset(
    {"multifieldqa_zh", "dureader", "vcsum", "lsht", "passage_retrieval_zh"}
)

_LB_E_SUFFIX = "_e"


def base_dataset(name: str) -> str:
    """Map a LongBench-E name (``qasper_e``) to its LongBench v1 name; other names unchanged."""
    if name.endswith(_LB_E_SUFFIX) and name[: -len(_LB_E_SUFFIX)] in LONGBENCH_E_DATASETS:
        return name[: -len(_LB_E_SUFFIX)]
    return name


# --------------------------------------------------------------------------- normalisation

_ASCII_PUNCT = frozenset(string.punctuation)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_NUMBER_RE = re.compile(r"\d+")

# Chinese punctuation removed by the Chinese normaliser, as inclusive code point ranges. This is
# the published set exactly; note it has "》" but not "《", and no fullwidth full stop "．".
_ZH_PUNCT_RANGES: tuple[tuple[int, int], ...] = (
    (0x2013, 0x2014),  # en/em dash
    (0x2018, 0x2019),  # single quotes
    (0x201B, 0x201F),  # reversed/double quotes
    (0x2026, 0x2027),  # ellipsis, hyphenation point
    (0x3001, 0x3003),  # 、。〃
    (0x300B, 0x3011),  # 》「」『』【】
    (0x3014, 0x301F),  # 〔〕〖〗〘〙〚〛〜〝〞〟
    (0x3030, 0x3030),  # 〰
    (0x303E, 0x303F),  # 〾〿
    (0xFE4F, 0xFE4F),  # ﹏
    (0xFF01, 0xFF0D),  # ！＂＃＄％＆＇（）＊＋，－
    (0xFF0F, 0xFF0F),  # ／
    (0xFF1A, 0xFF20),  # ：；＜＝＞？＠
    (0xFF3B, 0xFF40),  # ［＼］＾＿｀
    (0xFF5B, 0xFF64),  # ｛｜｝～｟｠｡｢｣､
)
_ZH_PUNCT = (
    frozenset(chr(cp) for lo, hi in _ZH_PUNCT_RANGES for cp in range(lo, hi + 1)) | _ASCII_PUNCT
)


def normalize_answer(text: str) -> str:
    """English answer normalisation: lowercase, drop punctuation, articles, extra whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _ASCII_PUNCT)
    text = _ARTICLES_RE.sub(" ", text)
    return " ".join(text.split())


def normalize_zh_answer(text: str) -> str:
    """Chinese normalisation: lowercase, drop ASCII+Chinese punctuation, remove all whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _ZH_PUNCT)
    return "".join(text.split())


# --------------------------------------------------------------------------- lazy third parties


@cache
def _jieba() -> Any:
    """Import jieba once, with its dictionary-loading chatter silenced."""
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


def _jieba_tokens(text: str) -> list[str]:
    """jieba accurate-mode tokens (``cut_all=False``), whitespace tokens included."""
    return list(_jieba().cut(text, cut_all=False))


@cache
def _rouge_l() -> Any:
    """A ``rouge.Rouge`` computing only ROUGE-L (same value as the default, less work)."""
    from rouge import Rouge

    return Rouge(metrics=["rouge-l"])


@cache
def _fuzz_ratio() -> Any:
    """fuzzywuzzy's ``fuzz.ratio`` (its slow-SequenceMatcher warning silenced)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fuzzywuzzy import fuzz
    return fuzz.ratio


# --------------------------------------------------------------------------- metrics


def token_f1(prediction_tokens: Sequence[str], ground_truth_tokens: Sequence[str]) -> float:
    """Bag-of-tokens F1 (multiset overlap); 0 when nothing overlaps."""
    overlap = sum((Counter(prediction_tokens) & Counter(ground_truth_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = 1.0 * overlap / len(prediction_tokens)
    recall = 1.0 * overlap / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def qa_f1_score(
    prediction: str, ground_truth: str, *, all_classes: Sequence[str] | None = None
) -> float:
    """English QA F1 over whitespace tokens of the normalised strings."""
    return token_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def _zh_tokens(text: str) -> list[str]:
    normalized = (normalize_zh_answer(tok) for tok in _jieba_tokens(text))
    return [tok for tok in normalized if tok]


def qa_f1_zh_score(
    prediction: str, ground_truth: str, *, all_classes: Sequence[str] | None = None
) -> float:
    """Chinese QA F1 over jieba tokens normalised one by one (empty ones dropped)."""
    return token_f1(_zh_tokens(prediction), _zh_tokens(ground_truth))


def rouge_score(
    prediction: str, ground_truth: str, *, all_classes: Sequence[str] | None = None
) -> float:
    """ROUGE-L F from the ``rouge`` package; 0 if the package raises (e.g. empty prediction)."""
    try:
        scores = _rouge_l().get_scores([prediction], [ground_truth])
    except Exception:  # the published metric scores any failure of the package as 0
        return 0.0
    return scores[0]["rouge-l"]["f"]


def rouge_zh_score(
    prediction: str, ground_truth: str, *, all_classes: Sequence[str] | None = None
) -> float:
    """ROUGE-L F on space-joined jieba tokens."""
    return rouge_score(" ".join(_jieba_tokens(prediction)), " ".join(_jieba_tokens(ground_truth)))


def classification_score(
    prediction: str, ground_truth: str, *, all_classes: Sequence[str] | None = None
) -> float:
    """1/k if the gold class is among the k class names found in the prediction, else 0.

    Class names that are substrings of the gold class (but not equal to it) are discarded from
    the matches first. Like the published metric, this discarding walks the match list while
    shrinking it, so a name right after a discarded one is not examined (and stays counted).
    """
    if all_classes is None:
        raise ValueError("classification_score needs all_classes (the list of class names)")
    matches = [name for name in all_classes if name in prediction]
    pos = 0
    while pos < len(matches):
        name = matches[pos]
        if name in ground_truth and name != ground_truth:
            matches.remove(name)
        pos += 1
    if ground_truth in matches:
        return 1.0 / len(matches)
    return 0.0


def _share_equal(prediction: str, target: str) -> float:
    """Fraction of the digit runs in ``prediction`` that equal ``target`` (0 if none)."""
    numbers = _NUMBER_RE.findall(prediction)
    if not numbers:
        return 0.0
    return float(sum(1 for number in numbers if number == target) / len(numbers))


def _paragraph_id(ground_truth: str, pattern: str) -> str:
    found = re.findall(pattern, ground_truth)
    if not found:
        raise ValueError(f"gold answer {ground_truth!r} does not match {pattern!r}")
    return found[0]


def retrieval_score(
    prediction: str, ground_truth: str, *, all_classes: Sequence[str] | None = None
) -> float:
    """Share of numbers in the prediction equal to N of the gold "Paragraph N"."""
    return _share_equal(prediction, _paragraph_id(ground_truth, r"Paragraph (\d+)"))


def retrieval_zh_score(
    prediction: str, ground_truth: str, *, all_classes: Sequence[str] | None = None
) -> float:
    """Share of numbers in the prediction equal to N of the gold "段落N"."""
    return _share_equal(prediction, _paragraph_id(ground_truth, r"段落(\d+)"))


def count_score(
    prediction: str, ground_truth: str, *, all_classes: Sequence[str] | None = None
) -> float:
    """Share of numbers in the prediction equal to the gold count."""
    return _share_equal(prediction, str(ground_truth))


def first_code_line(prediction: str) -> str:
    """First line (after leading newlines) with no "`", "#" or "//"; "" if there is none."""
    for line in prediction.lstrip("\n").split("\n"):
        if "`" not in line and "#" not in line and "//" not in line:
            return line
    return ""


def code_sim_score(
    prediction: str, ground_truth: str, *, all_classes: Sequence[str] | None = None
) -> float:
    """fuzzywuzzy ratio / 100 between the first code line of the prediction and the gold line."""
    return _fuzz_ratio()(first_code_line(prediction), ground_truth) / 100


def first_line(prediction: str) -> str:
    """The few-shot rule: drop leading newlines, keep text up to the first newline."""
    return prediction.lstrip("\n").split("\n")[0]


# --------------------------------------------------------------------------- dataset -> metric

_V1_METRICS: dict[str, Metric] = {
    "narrativeqa": qa_f1_score,
    "qasper": qa_f1_score,
    "multifieldqa_en": qa_f1_score,
    "multifieldqa_zh": qa_f1_zh_score,
    "hotpotqa": qa_f1_score,
    "2wikimqa": qa_f1_score,
    "musique": qa_f1_score,
    "dureader": rouge_zh_score,
    "gov_report": rouge_score,
    "qmsum": rouge_score,
    "multi_news": rouge_score,
    "vcsum": rouge_zh_score,
    "trec": classification_score,
    "triviaqa": qa_f1_score,
    "samsum": rouge_score,
    "lsht": classification_score,
    "passage_retrieval_en": retrieval_score,
    "passage_count": count_score,
    "passage_retrieval_zh": retrieval_zh_score,
    "lcc": code_sim_score,
    "repobench-p": code_sim_score,
}

#: Dataset name -> metric, for the 21 LongBench v1 names and the 13 LongBench-E ``_e`` names.
DATASET2METRIC: dict[str, Metric] = {
    **_V1_METRICS,
    **{f"{name}{_LB_E_SUFFIX}": _V1_METRICS[name] for name in LONGBENCH_E_DATASETS},
}

#: Dataset name (v1 or ``_e``) -> category label of ``CATEGORIES``.
DATASET2CATEGORY: dict[str, str] = {
    name: category
    for category, names in CATEGORIES.items()
    for base in names
    for name in (base, f"{base}{_LB_E_SUFFIX}")
    if name in DATASET2METRIC
}


def score_item(
    dataset: str,
    prediction: str,
    answers: Sequence[str],
    all_classes: Sequence[str] | None = None,
) -> float:
    """Score one prediction: first-line rule where it applies, then the best over all answers.

    Raises ``KeyError`` for an unknown data set name.
    """
    metric = DATASET2METRIC[dataset]
    if base_dataset(dataset) in FIRST_LINE_DATASETS:
        prediction = first_line(prediction)
    best = 0.0
    for answer in answers:
        best = max(best, metric(prediction, answer, all_classes=all_classes))
    return best
