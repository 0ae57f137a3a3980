"""eval.suite: source parsing, deterministic generation from a fake Debian tree, scoring."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from eval.suite import generate as g
from eval.suite import score as sc
from eval.suite.sources import SourceMissingError, SystemRoot, parse_man, parse_rst

MAN_EN = r""".\" comment
.TH LS 1 "2022" "coreutils" "User Commands"
.SH NAME
ls \- list directory contents
.SH DESCRIPTION
List information about the FILEs (the current directory by default).
Sort entries alphabetically if none of \fB\-cftuvSUX\fP is specified.
.TP
\fB\-a\fR, \fB\-\-all\fR
do not ignore entries starting with .
.SH "SEE ALSO"
.BR dir (1)
"""

MAN_DE = r""".TH LS 1 "2022" "coreutils" "Dienstprogramme"
.SH BEZEICHNUNG
ls \- Verzeichnisinhalte auflisten
.SH BESCHREIBUNG
Auflistung von Informationen über die DATEIen. Die Einträge werden alphabetisch sortiert,
falls keine Sortierung angegeben wurde. Die obligatorischen Argumente für Optionen sind für
deren Kurz- und Langform gleich.
.SH AUTOR
Geschrieben von Richard M. Stallman und David MacKenzie.
"""

MAN_ZH = r""".TH LS 1 2022 "GNU coreutils" 用户命令
.SH 名称
ls \- 列出目录内容
.SH 描述
列出指定文件的信息。如果既没有指定排序选项，则按字母排序项目。
必选参数对长短选项同时适用。这是一个很长的句子，用来测试引用的句子是否足够长。
"""

RST_EN = """.. SPDX-License-Identifier: GPL-2.0

.. _howto:

==============
Kernel HOWTO
==============

This is the ultimate document on the topic of how to become a kernel developer. It will
guide you through the process, and help you learn how to work with the community.

Introduction
------------

So, you want to learn how to become a Linux kernel developer? Read :ref:`the guide <guide>`
and ``make menuconfig`` first. The kernel is written mostly in C, with some parts of it
written in assembly language for the different architectures.

.. toctree::
   :maxdepth: 2

   other-file
"""

RST_ZH = """如何参与Linux内核开发
=====================

这是一篇将如何参与Linux内核开发的相关问题一网打尽的终极秘笈。它将指导你成为一名内核开发者。

入门
----

你想了解如何成为一名Linux内核开发者？这篇文章的目的就是教会你达成这些目标的全部诀窍。
它还将试图解释内核社区为何这样运作，以及如何同内核社区合作的一些提示。
"""


def test_parse_man_page() -> None:
    doc = parse_man(MAN_EN, "ls.1", "en")
    assert doc is not None and doc.name == "ls(1)"
    assert doc.description == "ls - list directory contents"  # NAME becomes the reference
    titles = [s.title for s in doc.sections]
    assert titles == ["DESCRIPTION", "SEE ALSO"]
    text = doc.sections[0].text
    assert "if none of -cftuvSUX is specified" in text  # fonts and \- resolved
    assert "-a, --all" in text and "comment" not in text
    assert doc.sections[1].text == "dir(1)"  # alternating fonts joined without spaces
    assert parse_man(".so man1/other.1\n", "x", "en") is None  # redirects are skipped
    zh = parse_man(MAN_ZH, "ls.1", "zh")
    assert zh is not None and "默认" not in zh.sections[0].text
    assert "项目。必选参数" in zh.sections[0].text  # CJK lines joined without a space


def test_parse_rst() -> None:
    doc = parse_rst(RST_EN, "process/howto", "en")
    assert doc is not None
    assert [s.title for s in doc.sections] == ["Kernel HOWTO", "Introduction"]
    intro = doc.sections[1].text
    assert "Read the guide\nand make menuconfig first." in intro  # roles and literals
    assert "toctree" not in intro and "other-file" not in intro and "SPDX" not in intro


def fake_debian(root: Path) -> SystemRoot:
    """A tiny tree with the four packages' layouts and dpkg file lists."""
    info = root / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    files: dict[str, dict[str, str]] = {
        "linux-doc-6.1": {},
        "manpages": {},
        "manpages-de": {},
        "manpages-zh": {},
    }
    kdoc = "/usr/share/doc/linux-doc-6.1/Documentation/"
    for i in range(6):
        files["linux-doc-6.1"][f"{kdoc}area{i}/howto.rst.gz"] = RST_EN.replace(
            "kernel developer", f"kernel developer number {i}"
        )
        files["linux-doc-6.1"][f"{kdoc}translations/zh_CN/area{i}.rst.gz"] = RST_ZH.replace(
            "秘笈", f"秘笈{i}"
        )
    for i in range(8):
        name = f"tool{i}"

        def page(text: str, name: str = name, i: int = i) -> str:
            text = text.replace(".TH LS", f".TH {name.upper()}").replace("ls \\-", f"{name} \\-")
            return text.replace("DATEIen.", f"DATEIen von {name}.").replace("项目。", f"项目{i}。")

        files["manpages"][f"/usr/share/man/man1/{name}.1.gz"] = page(MAN_EN)
        files["manpages-de"][f"/usr/share/man/de/man1/{name}.1.gz"] = page(MAN_DE)
        files["manpages-zh"][f"/usr/share/man/zh_CN/man1/{name}.1.gz"] = page(MAN_ZH)
    for package, entries in files.items():
        for listed, text in entries.items():
            path = root / listed.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(gzip.compress(text.encode(), mtime=0))
        (info / f"{package}.list").write_text("\n".join(sorted(entries)) + "\n")
    return SystemRoot(root=root, dpkg_info=info)


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_generation_is_deterministic_and_well_formed(tmp_path: Path, tokenizer) -> None:
    system = fake_debian(tmp_path / "root")
    kwargs = {"lengths": [300, 600], "per_length": 2, "system": system, "progress": False}
    first = g.generate(tmp_path / "a", tokenizer, seed=7, **kwargs)
    second = g.generate(tmp_path / "b", tokenizer, seed=7, **kwargs)
    other = g.generate(tmp_path / "c", tokenizer, seed=8, **kwargs)
    assert first == second  # manifest, with the sha256 of every file
    for name in first["files"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert first["files"] != other["files"]
    assert len(first["files"]) == 15 + 2  # 5 tasks x 3 languages, plus two config files

    for path in sorted((tmp_path / "a" / "data").glob("*.jsonl")):
        items = [json.loads(line) for line in path.read_text().splitlines()]
        assert [i["target_length"] for i in items] == [300, 300, 600, 600]
        for item in items:
            task, lang = item["task"], item["language"]
            assert item["dataset"] == path.stem == f"{task}_{lang}"
            assert item["length"] == len(
                tokenizer(item["context"], add_special_tokens=False)["input_ids"]
            )
            assert item["length"] <= item["target_length"]
            assert item["length"] >= 0.5 * item["target_length"], item["_id"]
            answer = item["answers"][0]
            if task in ("needle", "passkey"):
                assert answer in item["context"]
            if task == "multi_needle":
                assert all(
                    w.strip() in item["context"] for w in answer.replace("、", ",").split(",")
                )
            if task == "section":
                assert answer in item["context"]  # the numbered heading exists
            if task == "summary":
                assert answer.splitlines()[0].split(" - ")[0] in item["context"]
    config = json.loads((tmp_path / "a" / "config" / "dataset2prompt.json").read_text())
    assert all("{context}" in t and "{input}" in t for t in config.values())


def test_missing_package_names_the_apt_command(tmp_path: Path, tokenizer) -> None:
    empty = SystemRoot(root=tmp_path, dpkg_info=tmp_path / "info")
    with pytest.raises(SourceMissingError, match="apt-get install linux-doc-6.1"):
        g.generate(tmp_path / "out", tokenizer, lengths=[300], system=empty, progress=False)


def test_suite_metrics_by_hand() -> None:
    assert sc.needle_recall("Ahorn and then Nelke", "Ahorn, Fenchel, Nelke") == pytest.approx(2 / 3)
    assert sc.needle_recall("琥珀、灯塔", "琥珀、船锚") == 0.5
    assert sc.section_score("Section 12", "Section 12") == 1.0
    assert sc.section_score("第7节，不是第3节", "第7节") == 0.5
    assert sc.section_score("no number", "Abschnitt 4") == 0.0
    # passkey uses LongBench's count rule: share of numbers equal to the key
    assert sc.score_item("passkey_en", "The pass key is 12345, not 999.", ["12345"]) == 0.5
    # needle uses LongBench QA F1: "nutmeg" vs "code word is nutmeg" -> P 1/4, R 1 -> 0.4
    assert sc.score_item("needle_en", "code word is nutmeg", ["nutmeg"]) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="not a suite data set"):
        sc.metric_for("qasper")


def test_score_dir(tmp_path: Path) -> None:
    rows = {
        "passkey_en": [("12345", "12345", 2048), ("nothing", "55555", 4096)],
        "section_de": [("Abschnitt 3", "Abschnitt 3", 2048)],
    }
    for name, items in rows.items():
        lines = [
            json.dumps({"pred": p, "answers": [a], "target_length": n, "_id": f"{name}{i}"})
            for i, (p, a, n) in enumerate(items)
        ]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n{bad\n")
    (tmp_path / "qasper.jsonl").write_text("")  # not a suite name: ignored
    result = sc.score_dir(tmp_path, "t")
    assert result["datasets"] == {"passkey_en": 50.0, "section_de": 100.0}
    assert result["by_length"]["passkey_en"] == {"2048": 100.0, "4096": 0.0}
    assert result["lengths"] == {"2048": 100.0, "4096": 0.0}
    assert result["tasks"] == {"passkey": 50.0, "section": 100.0}
    assert result["average"] == 75.0
    assert result["counts"]["passkey_en"]["malformed"] == 1
