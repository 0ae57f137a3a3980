"""eval/longtasks/generate.py on the installed manual pages: 4K items, checked by reading them."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from eval.longtasks import generate as lt
from eval.suite.qa import load_tokenizer, token_counter
from recipes.m3.build_data import package_files

if not any(re.search(r"/man\d\w*/[^/]+\.gz$", str(f)) for f in package_files("manpages")):
    pytest.skip(
        "English manual pages not installed (apt-get install manpages groff-base)",
        allow_module_level=True,
    )

LENGTH = 4096
PER_FAMILY = 2


def serialize(items: list[dict[str, Any]]) -> bytes:
    return b"".join((json.dumps(i, ensure_ascii=False) + "\n").encode("utf-8") for i in items)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer(None)


@pytest.fixture(scope="module")
def items(tokenizer: Any) -> list[dict[str, Any]]:
    pools = lt.load_pools(token_counter(tokenizer))
    return lt.generate([LENGTH], lt.FAMILIES, PER_FAMILY, 0, tokenizer, pools, progress=False)


def of(items: list[dict[str, Any]], family: str) -> list[dict[str, Any]]:
    chosen = [item for item in items if item["family"] == family]
    assert len(chosen) == PER_FAMILY
    return chosen


def test_fields_lengths_and_unique_evidence(items: list[dict[str, Any]], tokenizer: Any) -> None:
    assert [i["family"] for i in items] == [f for f in lt.FAMILIES for _ in range(PER_FAMILY)]
    assert len({i["id"] for i in items}) == len(items)
    for item in items:
        doc = item["document"]
        assert item["length"] == LENGTH
        assert 0.9 * LENGTH <= item["llm_tokens"] <= LENGTH
        assert len(tokenizer.encode(doc, add_special_tokens=False)) == item["llm_tokens"]
        assert item["answers"] and all(isinstance(a, str) and a for a in item["answers"])
        assert len(item["evidence"]) == len(item["depths"])
        for text in item["evidence"]:
            assert doc.count(text) == 1, (item["id"], text)
        for page in item["pages"]:
            assert lt.page_split(f"man:{page}") == item["split"]
    assert (items[0]["split"], items[1]["split"]) == ("dev", "test")


def test_needles_give_their_numbers(items: list[dict[str, Any]]) -> None:
    for family, n_sentences in [("needle", 1), ("multikey", 8), ("multivalue", 4)]:
        for item in of(items, family):
            doc, key = item["document"], item["key"]
            assert key in item["question"]
            found = re.findall(r"The special magic number for ([a-z]+-[a-z]+) is (\d{7})\.", doc)
            assert len(found) == n_sentences
            assert len({k for k, _ in found}) == (8 if family == "multikey" else 1)
            assert [n for k, n in found if k == key] == item["answers"]
            assert item["evidence"] == [
                lt.NEEDLE.format(key=key, number=n) for n in item["answers"]
            ]


def test_identifier_value_of_the_quoted_key(items: list[dict[str, Any]], tokenizer: Any) -> None:
    hexes = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    for item in of(items, "identifier"):
        doc = item["document"]
        lines = re.findall(rf"The value for ({hexes}) is ({hexes})\.", doc)
        assert len(lines) == item["lines"] >= 10
        key = re.search(hexes, item["question"]).group()
        assert [v for k, v in lines if k == key] == item["answers"]
        block = sum(len(tokenizer.encode(f"The value for {k} is {v}.")) for k, v in lines)
        assert block <= item["llm_tokens"] / 3


def test_chain_assignments_lead_to_the_answer(items: list[dict[str, Any]]) -> None:
    chains = of(items, "chain")
    assert [item["hops"] for item in chains] == [2, 3]
    for item in chains:
        doc = item["document"]
        number = re.search(r"value (\d{5})\?", item["question"]).group(1)
        source = dict(re.findall(r"VAR ([A-Z]{5}) = (?:VAR )?([A-Z]{5}|\d{5})\.", doc))
        assert len(source) == 3 * item["hops"]  # the gold chain and 2 distractors
        assert sorted(source.values()).count(number) == 1
        names, value = [], number
        while (nxt := [name for name, src in source.items() if src == value]) != []:
            assert len(nxt) == 1
            names.append(value := nxt[0])
        assert names == item["answers"] and len(names) == item["hops"]
        assert [doc.index(text) for text in item["evidence"]] == sorted(
            doc.index(text) for text in item["evidence"]
        )


def test_frequent_counts_and_top_three(items: list[dict[str, Any]], tokenizer: Any) -> None:
    for item in of(items, "frequent"):
        doc = item["document"]
        counts = Counter(re.findall(r"Keyword: ([a-z]+)\.", doc))
        assert counts == item["counts"] and len(counts) == 10
        ranked = counts.most_common()
        assert [w for w, _ in ranked[:3]] == item["answers"]
        assert ranked[0][1] > ranked[1][1] > ranked[2][1] > ranked[3][1]
        assert item["evidence"] == []
        for word in counts:
            assert doc.lower().count(word) == counts[word]  # not in the haystack itself
        inserted = sum(len(tokenizer.encode(f"Keyword: {w}.")) * c for w, c in counts.items())
        assert inserted <= 0.11 * item["llm_tokens"]


def test_dev_and_test_share_no_page(items: list[dict[str, Any]]) -> None:
    pages = {split: set() for split in lt.SPLITS}
    for item in items:
        pages[item["split"]].update(item["pages"])
    assert pages["dev"] and pages["test"]
    assert not pages["dev"] & pages["test"]


def test_cli_is_deterministic(items: list[dict[str, Any]], tmp_path: Path) -> None:
    out = tmp_path / "tasks.jsonl"
    args = ["--out", str(out), "--lengths", "4k", "--per-family", str(PER_FAMILY), "--seed", "0"]
    assert lt.main(args) == 0
    data = out.read_bytes()
    assert data == serialize(items)  # a second, independent run with the same seed
    manifest = json.loads((tmp_path / "tasks.manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["lengths"] == [LENGTH] and manifest["families"] == list(lt.FAMILIES)
    assert manifest["tokenizer"]["vocab_size"] > 0 and manifest["packages"]["manpages"]


def test_parse_length() -> None:
    assert [lt.parse_length(x) for x in ("4k", "128K", "5000")] == [4096, 131072, 5000]
