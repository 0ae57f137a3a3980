"""eval.longbench.prompts / pred request building: LongBench's prompt rules, hand-checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.longbench import prompts as p
from eval.longbench.pred import PredSettings, build_request

SHARED_CONFIG = Path(__file__).resolve().parents[2] / "shared" / "longbench" / "config"


@pytest.fixture(scope="module")
def word_tokenizer():
    """Whitespace word-level tokenizer that adds <s> like Llama's: easy to count by hand."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(20)] + ["Q", "A", "\n"]
    vocab = {"<s>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", unk_token="<unk>")


def test_middle_truncation_by_hand(word_tokenizer) -> None:
    prompt = " ".join(f"w{i}" for i in range(10))  # <s> w0 .. w9: 11 tokens with BOS
    # Fits: unchanged, length counted with the BOS.
    assert p.middle_truncate(prompt, word_tokenizer, 11) == (prompt, 11, False)
    # max_length 4 -> half 2: ids[:2] = <s> w0 -> "w0"; ids[-2:] = w8 w9 -> "w8 w9";
    # LongBench joins the two decodes with nothing in between.
    assert p.middle_truncate(prompt, word_tokenizer, 4) == ("w0w8 w9", 11, True)
    # Odd max_length: half = int(5 / 2) = 2, the same cut (the result is 4 tokens, not 5).
    assert p.middle_truncate(prompt, word_tokenizer, 5)[0] == "w0w8 w9"
    # max_length 7 -> half 3: "<s> w0 w1" -> "w0 w1", "w7 w8 w9".
    assert p.middle_truncate(prompt, word_tokenizer, 7)[0] == "w0 w1w7 w8 w9"


def test_chat_template_rule_and_newline_stop() -> None:
    skipped = {"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"}
    for name in skipped | {"trec_e", "lcc_e", "repobench-p_e"}:
        assert not p.uses_chat_template(name)
    for name in ("narrativeqa", "qasper", "hotpotqa", "gov_report", "passage_count", "qasper_e"):
        assert p.uses_chat_template(name)
    assert p.stops_at_newline("samsum") and p.stops_at_newline("samsum_e")
    assert not p.stops_at_newline("trec")
    # Suite names are not LongBench's six: they use the chat template.
    assert p.uses_chat_template("needle_en")


def test_default_max_length_matches_longbench_table() -> None:
    # LongBench's model2maxlen.json: 4k -> 3500, 8k -> 7500, 16k -> 15500, 32k -> 31500.
    assert [p.default_max_length(w) for w in (4096, 8192, 16384, 32768)] == [
        3500,
        7500,
        15500,
        31500,
    ]


@pytest.mark.parametrize(
    ("template", "parts"),
    [
        # "\n\n" around {context}: one newline each side is re-created by the server's join.
        ("Read.\n\n{context}\n\nQ: {input}", ["Read.\n", "DOC", "\nQ: why"]),
        # No newline before: the join adds one (documented difference); none after: kept.
        ("Story: {context} Q: {input}", ["Story: ", "DOC", " Q: why"]),
        # Context at the very start: no empty text part.
        ("{context}\n{input}", ["DOC", "why"]),
    ],
)
def test_document_content_parts(template: str, parts: list[str]) -> None:
    item = {"context": "long text", "input": "why"}
    prefix, suffix = p.split_template(template, item)
    content = p.document_content(prefix, item["context"], suffix, factor=4)
    texts = [c["text"] if c["type"] == "text" else "DOC" for c in content]
    assert texts == parts
    doc = next(c for c in content if c["type"] == "document")
    assert doc["document"] == {"text": "long text", "factor": 4}
    if template.startswith("Read"):  # the join gives back exactly the pasted prompt
        joined = "\n".join(c.get("text", item["context"]) for c in content)
        assert joined == p.format_prompt(template, item)


def test_format_prompt_names_the_missing_field() -> None:
    with pytest.raises(ValueError, match="'input'"):
        p.format_prompt("{context} {input}", {"context": "x"})


def test_config_lookup_and_messages(tmp_path: Path) -> None:
    with pytest.raises(p.ConfigError, match="--config-dir"):
        p.find_config_dir(None, tmp_path / "data")
    config = tmp_path / "config"
    config.mkdir()
    (config / "dataset2prompt.json").write_text(json.dumps({"qa": "{context}|{input}"}))
    (config / "dataset2maxlen.json").write_text(json.dumps({"qa": 8}))
    assert p.find_config_dir(None, tmp_path / "data") == config  # DATA/../config
    loaded = p.load_config(config)
    assert loaded.prompt("qa") == "{context}|{input}" and loaded.max_tokens("qa") == 8
    with pytest.raises(p.ConfigError, match="no prompt for 'other'"):
        loaded.prompt("other")


@pytest.mark.skipif(not SHARED_CONFIG.is_dir(), reason="LongBench config not checked out")
def test_published_config_reads() -> None:
    config = p.load_config(SHARED_CONFIG)
    assert config.max_tokens("samsum") == 128 and config.max_tokens("gov_report") == 512
    assert config.max_tokens("qasper_e") == 128  # LongBench-E names use the v1 settings
    assert config.prompt("lcc").endswith("Next line of code:\n")
    assert config.model_max_length["xgen-7b-8k"] == p.default_max_length(8192)


def _config() -> p.BenchmarkConfig:
    prompts = {"qasper": "Q:\n\n{context}\n\n{input}", "trec": "{context}\n{input}"}
    prompts["samsum"] = "{context}\n\n{input}"
    return p.BenchmarkConfig(prompts, {"qasper": 16, "trec": 8, "samsum": 12})


def test_build_request_per_mode(word_tokenizer) -> None:
    config = _config()
    item = {"context": " ".join(f"w{i}" for i in range(12)), "input": "Q", "answers": ["A"]}
    # full, chat data set: one user message, truncated in the middle to max_length tokens
    req, meta = build_request("qasper", item, PredSettings(max_length=6), config, word_tokenizer)
    assert req.messages is not None and req.prompt is None and req.max_tokens == 16
    assert meta["truncated"] and meta["prompt_tokens_before_truncation"] == 15
    # full, trec skips the chat template: a raw completion prompt
    req, _ = build_request("trec", item, PredSettings(max_length=100), config, word_tokenizer)
    assert req.prompt == item["context"] + "\nQ" and req.messages is None
    # samsum stops at a newline too (a tokenizer that keeps newlines as tokens)
    from tokenizers import pre_tokenizers

    keeps_newlines = word_tokenizer.__class__(tokenizer_object=word_tokenizer.backend_tokenizer)
    keeps_newlines.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", "removed")
    req, _ = build_request("samsum", item, PredSettings(max_length=100), config, keeps_newlines)
    assert req.newline_token_id == keeps_newlines.convert_tokens_to_ids("\n")
    # plugin: the budget picks the factor the server would (12 tokens, budget 5 -> k=4)
    settings = PredSettings(mode="plugin", budget=5)
    req, meta = build_request("qasper", item, settings, config, word_tokenizer)
    assert meta["factor"] == 4 and req.chat_template is None
    assert req.messages[0]["content"][1]["document"]["factor"] == 4
    # plugin on a data set that skips the chat template: pass-through template
    req, _ = build_request("trec", item, settings, config, word_tokenizer)
    assert req.chat_template == p.PASSTHROUGH_CHAT_TEMPLATE
    # retrieval-only: the context becomes the selected spans, here within 6 tokens
    from eval.longbench.retrieval import LexicalRetriever

    settings = PredSettings(mode="retrieval-only", budget=8, max_length=100)
    context = "W1 w2. W3 keeper w4. W5 w6. W7 w8. W9 w10. W11 w12."
    item2 = {**item, "context": context, "input": "keeper?"}
    req, meta = build_request("qasper", item2, settings, config, word_tokenizer, LexicalRetriever())
    # two-sentence windows containing "keeper" score; the first one that fits 8 tokens wins
    assert req.messages[0]["content"] == "Q:\n\nW1 w2. W3 keeper w4.\n\nkeeper?"
    assert meta["retrieval"]["retriever"] == "lexical" and meta["retrieval"]["spans"]


def test_build_request_equal_budget_modes(word_tokenizer) -> None:
    """truncate keeps the context's head and tail within the budget; --server-plans asks."""
    config = _config()
    item = {"context": " ".join(f"w{i}" for i in range(12)), "input": "Q", "answers": ["A"]}
    settings = PredSettings(mode="truncate", budget=4, max_length=100)
    req, meta = build_request("qasper", item, settings, config, word_tokenizer)
    context = req.messages[0]["content"].removeprefix("Q:\n\n").removesuffix("\n\nQ")
    assert context.startswith("w0") and context.endswith("w11") and "w5" not in context
    assert len(word_tokenizer.encode(context, add_special_tokens=False)) <= 4
    assert meta["context_tokens"] >= 12 and meta["context_truncated"]
    with pytest.raises(ValueError, match="--budget"):
        build_request("qasper", item, PredSettings(mode="truncate"), config, word_tokenizer)
    # plugin with the server planning: the question travels as the document's query
    settings = PredSettings(mode="plugin", budget=5, server_plans=True)
    req, meta = build_request("qasper", item, settings, config, word_tokenizer)
    assert req.messages[0]["content"][1]["document"] == {"text": item["context"], "query": "Q"}
    assert "factor" not in meta
    with pytest.raises(ValueError, match="not both"):
        p.document_content("a", "b", "c", factor=2, query="q")
