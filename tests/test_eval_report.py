"""eval.report / eval.plots / eval.benchmarks.bench_serving helpers on small synthetic results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from eval import report
from eval.benchmarks.bench_serving import RssSampler, content_for
from eval.provenance import KEYS, missing_keys, provenance, with_provenance, write_result

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "eval" / "results"

MACHINE = {"arch": "x86_64", "cpu": "test cpu", "cpus": 2, "memory_gib": 24.0, "os": "Linux",
           "python": "3.11", "gpu": None}  # fmt: skip


def suite_result(label: str, budget: int | None, scores: dict[str, float]) -> dict:
    mode = "full" if label == "full" else "plugin"
    return {
        "label": label,
        "seconds": 12.0,
        "result": {
            "datasets": {"needle_en": 50.0},
            "lengths": scores,
            "tasks": {"needle": 50.0},
            "languages": {"en": 50.0},
            "average": sum(scores.values()) / len(scores),
            "counts": {"needle_en": {"scored": 2, "malformed": 0, "errors": 0}},
            "stats": {"needle_en": {"prompt_tokens": 900.0, "latency_s": 1.5}},
            "run": {"settings": {"mode": mode, "budget": budget, "max_length": 7500}},
        },
    }


def write_results(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    suite = {
        "kind": "suite",
        "machine": MACHINE,
        "model": "Tiny",
        "dtype": "float32",
        "window": 8192,
        "subset": {"languages": ["en"], "tasks": ["needle"], "lengths": [2048, 4096],
                   "per_length": 1, "full_mode_lengths": [2048], "limit": None, "seed": 0,
                   "regenerate": "python -m eval.suite.generate ...", "packages": {"p": "1"}},
        "servers": {},
        "command": "python -m eval.suite.run --suite S",
        "total_seconds": 60.0,
        "runs": [
            suite_result("full", None, {"2048": 80.0}),
            suite_result("plugin-b512", 512, {"2048": 40.0, "4096": 20.0}),
            suite_result("plugin-b1024", 1024, {"2048": 60.0, "4096": 30.0}),
        ],
    }  # fmt: skip
    points = []
    for server in ("vllm", "landmark"):
        for tokens in (1024, 2048, 16384):
            point = {"server": server, "length": tokens, "document_tokens": tokens,
                     "concurrency": 1}  # fmt: skip
            if server == "vllm" and tokens > 8192:
                point["skipped"] = "document does not fit the 8192-token window"
            else:
                slow = tokens / 400 if server == "vllm" else 1.0
                point.update(ttft_s=slow, e2e_s=slow + 1, decode_tok_s=30.0, output_tok_s=20.0,
                             prompt_tokens=tokens, peak_rss_gib=2.0, requests=2)  # fmt: skip
            points.append(point)
    serving = {"kind": "serving", "machine": MACHINE, "model": "Tiny", "dtype": "float32",
               "window": 8192, "budget": 1024, "max_tokens": 32, "repeats": 2,
               "embedder": "mean-baseline", "startup_s": {"vllm": 30.0, "landmark": 31.0},
               "command": "python -m eval.benchmarks.bench_serving", "points": points}  # fmt: skip
    (folder / "suite_test.json").write_text(json.dumps(suite))
    (folder / "serving_test.json").write_text(json.dumps(serving))


def test_report_and_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results = tmp_path / "results"
    write_results(results)
    out = tmp_path / "RESULTS.md"
    assert report.main(["--results", str(results), "--out", str(out), "--no-readme"]) == 0
    text = out.read_text()
    assert "2 vCPU x86_64 (test cpu)" in text
    assert (
        "| plugin-b512 | plugin, whole document at one factor, budget 512 soft tokens | 40.00 | 20.00 |"
        in text
    )
    assert "document does not fit the 8192-token window" in text
    assert "| 2048 | 1 | 5.12 | 3.06 |" in text  # plain/plugin TTFT and e2e ratios
    for png in ("quality_vs_budget.png", "latency_vs_length.png"):
        size = (results / png).stat().st_size
        assert 5_000 < size < 150_000


def test_content_for_each_server() -> None:
    assert content_for("vllm", "doc") == "doc\nIn one sentence, what is the document above about?"
    parts = content_for("landmark", "doc")
    assert parts[0] == {"type": "document", "document": {"text": "doc"}}


def test_rss_sampler_sees_this_process() -> None:
    pytest.importorskip("psutil")
    with RssSampler(os.getpid(), interval=0.01) as sampler:
        block = bytearray(64 << 20)  # 64 MiB, touched
        block[::4096] = b"x" * len(block[::4096])
        import time

        time.sleep(0.1)
    assert sampler.peak >= 64 << 20


def test_readme_and_results_match_the_result_files() -> None:
    """The drift check: README.md's generated sections and eval/RESULTS.md are exactly what
    `python -m eval.report` makes from the current files in eval/results/ (run it to fix)."""
    problems = report.drift(RESULTS, REPO / "eval" / "RESULTS.md", REPO / "README.md")
    assert not problems, "\n\n".join(problems)


def test_drift_is_caught(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    start = readme.index("<!-- report:measured -->")
    edited = tmp_path / "README.md"
    # a hand-edited number inside a generated section
    edited.write_text(readme[:start] + readme[start:].replace("x", "y", 1))
    out = tmp_path / "RESULTS.md"
    out.write_text((REPO / "eval" / "RESULTS.md").read_text())
    problems = report.drift(RESULTS, out, edited)
    assert len(problems) == 1 and str(edited) in problems[0]
    assert report.main(["--check", "--results", str(RESULTS), "--out", str(out),
                        "--readme", str(edited)]) == 1  # fmt: skip
    with pytest.raises(ValueError, match="no such section"):
        report.render_readme("<!-- report:nothing -->\n<!-- /report -->", {})
    with pytest.raises(ValueError, match="no section for"):
        report.render_readme("no sections", {"measured": "| a |"})


def test_current_results_carry_the_provenance_header() -> None:
    results = sorted(RESULTS.glob("*.json"))
    assert results
    for path in results:
        assert missing_keys(json.loads(path.read_text())) == [], path.name
    assert not list(RESULTS.glob("*.notes.md")) or all(
        (RESULTS / (p.name.removesuffix(".notes.md") + ".json")).is_file()
        for p in RESULTS.glob("*.notes.md")
    ), "a notes file without its current result (move it to archive/ with its JSON)"


def test_provenance_header() -> None:
    header = provenance("eval.benchmarks.bench_ttft", ["--budget", "1024", "--note", "two words"],
                        config={"out": Path("x.json"), "factors": (1, 2)})  # fmt: skip
    assert tuple(header) == KEYS
    assert (
        header["command"] == "python -m eval.benchmarks.bench_ttft --budget 1024 --note 'two words'"
    )
    assert header["config"] == {"out": "x.json", "factors": [1, 2]}
    assert header["embedder"] is None
    assert header["machine"]["cpus"] >= 1
    result = with_provenance({"a": 1, "provenance": "old"}, header)
    assert list(result) == ["provenance", "a"] and missing_keys(result) == []


def test_write_result_puts_the_header_first(tmp_path: Path) -> None:
    header = provenance("eval.identifier_ranking", [], config={}, embedder=None)
    out = tmp_path / "new" / "result.json"
    write_result(out, {"rows": [1, 2], "name": "é"}, header, indent=1, ensure_ascii=False)
    text = out.read_text(encoding="utf-8")
    assert text.endswith("}\n") and "é" in text
    assert json.loads(text) == {"provenance": header, "rows": [1, 2], "name": "é"}
