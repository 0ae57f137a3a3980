"""Unit tests of the pieces that need no engine: config, factors, pooling, parts, flags."""

from __future__ import annotations

import argparse
import base64
import json
import pickle

import pytest
import torch

from vllm_landmark.compression.baseline import mean_pool_groups
from vllm_landmark.config import (
    ALLOWED_FACTORS,
    AUTO_EMBEDDER,
    DEFAULT_RETRIEVER,
    MEAN_BASELINE,
    LandmarkConfig,
    LandmarkConfigError,
)
from vllm_landmark.document.items import DocumentError, normalize_document
from vllm_landmark.engine import LandmarkHfOverrides
from vllm_landmark.planning import DocumentTooLongError, choose_factor, num_soft_tokens
from vllm_landmark.server.file_parts import decode_file_part


def data_url(payload: bytes, media_type: str = "text/plain") -> dict:
    return {"file_data": f"data:{media_type};base64," + base64.b64encode(payload).decode()}


@pytest.mark.parametrize("num_tokens", [1, 5, 8, 9, 33])
@pytest.mark.parametrize("factor", ALLOWED_FACTORS)
def test_mean_pool_matches_a_naive_loop(num_tokens: int, factor: int) -> None:
    torch.manual_seed(num_tokens * factor)
    embeds = torch.randn(num_tokens, 6)
    expected = torch.stack(
        [embeds[i : i + factor].mean(dim=0) for i in range(0, num_tokens, factor)]
    )
    pooled = mean_pool_groups(embeds, factor)
    assert pooled.shape == (num_soft_tokens(num_tokens, factor), 6)
    torch.testing.assert_close(pooled, expected)


def test_k1_pooling_is_the_identity() -> None:
    embeds = torch.randn(7, 3)
    assert mean_pool_groups(embeds, 1) is embeds


def test_choose_factor_takes_the_smallest_that_fits() -> None:
    config = LandmarkConfig()
    assert choose_factor(100, 100, config) == 1
    assert choose_factor(101, 100, config) == 2
    assert choose_factor(3200, 100, config) == 32
    assert choose_factor(1000, 100, LandmarkConfig(factors=(1, 16))) == 16
    assert choose_factor(10, 100, LandmarkConfig(factor=4)) == 4
    with pytest.raises(
        DocumentTooLongError, match="3201 tokens needs 101 soft tokens at factor 32, 1 over"
    ):
        choose_factor(3201, 100, config)


def test_config_validates_every_setting(tmp_path) -> None:
    with pytest.raises(LandmarkConfigError, match="factor=3"):
        LandmarkConfig(factor=3)
    with pytest.raises(LandmarkConfigError, match=r"factors \[64\]"):
        LandmarkConfig(factors=(1, 64))
    with pytest.raises(LandmarkConfigError, match="budget=0"):
        LandmarkConfig(budget=0)
    with pytest.raises(LandmarkConfigError, match="nor an existing folder"):
        LandmarkConfig(retriever=str(tmp_path / "missing"))
    with pytest.raises(LandmarkConfigError, match="neither"):
        LandmarkConfig(embedder=str(tmp_path / "missing"))
    with pytest.raises(LandmarkConfigError, match="unknown landmark settings"):
        LandmarkConfig.from_dict({"bugdet": 3})
    config = LandmarkConfig(budget=64, factors=(8, 2), retriever=str(tmp_path))
    assert config.factors == (2, 8)
    assert LandmarkConfig.from_dict(config.to_dict()) == config
    with pytest.raises(LandmarkConfigError, match="output_reserve=-1"):
        LandmarkConfig(output_reserve=-1)


def test_embedder_and_retriever_choices_are_typed(tmp_path) -> None:
    """The flag words and folders given as text become names or Paths, and back to the same
    JSON that travels in the Hugging Face config (what older configs hold still reads)."""
    defaults = LandmarkConfig()
    assert (defaults.embedder, defaults.retriever) == (AUTO_EMBEDDER, DEFAULT_RETRIEVER)
    named = LandmarkConfig(embedder="mean-baseline", retriever=" default ")
    assert (named.embedder, named.retriever) == (MEAN_BASELINE, DEFAULT_RETRIEVER)
    folders = LandmarkConfig(embedder=str(tmp_path), retriever=tmp_path)
    assert folders.embedder == folders.retriever == tmp_path
    assert folders.retriever_folder() == tmp_path
    assert LandmarkConfig(retriever="none").retriever is None
    assert LandmarkConfig(retriever="none").retriever_folder() is None
    with pytest.raises(LandmarkConfigError, match="embedder=''"):
        LandmarkConfig(embedder="")
    with pytest.raises(LandmarkConfigError, match="retriever=3"):
        LandmarkConfig(retriever=3)
    assert named.to_dict()["embedder"] == "mean-baseline"
    assert named.to_dict()["retriever"] == "default"
    assert folders.to_dict()["embedder"] == folders.to_dict()["retriever"] == str(tmp_path)
    assert LandmarkConfig().to_dict()["retriever"] == "default"
    assert LandmarkConfig(retriever=None).to_dict()["retriever"] is None
    for config in (named, folders, LandmarkConfig(), LandmarkConfig(retriever=None)):
        data = json.loads(json.dumps(config.to_dict()))
        assert LandmarkConfig.from_dict(data) == config


def test_hf_overrides_wrap_the_architecture_and_survive_pickling() -> None:
    from transformers import LlamaConfig

    overrides = pickle.loads(pickle.dumps(LandmarkHfOverrides(LandmarkConfig(budget=9), {"x": 1})))
    hf_config = overrides(LlamaConfig(architectures=["LlamaForCausalLM"]))
    assert hf_config.architectures == ["LandmarkForCausalLM"]
    assert hf_config.landmark_base_architectures == ["LlamaForCausalLM"]
    assert hf_config.landmark_config["budget"] == 9 and hf_config.x == 1
    again = overrides(hf_config)  # applying twice must not lose the base architecture
    assert again.landmark_base_architectures == ["LlamaForCausalLM"]


def test_document_items_are_validated() -> None:
    config = LandmarkConfig(max_document_chars=10, max_document_tokens=3)
    assert normalize_document("abc", config) == {"text": "abc"}
    assert normalize_document({"token_ids": [1, 2], "factor": 2}, config) == {
        "token_ids": [1, 2],
        "factor": 2,
    }
    for bad, message in [
        ("", "empty"),
        (" \t\n", "empty"),
        ("x" * 11, "11 characters, over the limit of 10"),
        ({"token_ids": [1, 2, 3, 4]}, "4 tokens, over the limit of 3"),
        ({"token_ids": [1, -2]}, "non-negative"),
        ({"token_ids": []}, "empty"),
        ({"text": "a", "token_ids": [1]}, "exactly one"),
        ({"text": "a", "colour": 1}, "unknown document fields"),
        ({"text": "a", "factor": 64}, "factor=64"),
        (42, "got int"),
    ]:
        with pytest.raises(DocumentError, match=message):
            normalize_document(bad, config)


def test_file_parts_decode_text_and_refuse_everything_else() -> None:
    config = LandmarkConfig()
    assert decode_file_part(data_url("héllo".encode()), config) == "héllo"
    assert decode_file_part(data_url(b"# t", "text/markdown"), config) == "# t"
    charset = {
        "file_data": "data:text/plain;charset=utf-8;base64," + base64.b64encode(b"ok").decode()
    }
    assert decode_file_part(charset, config) == "ok"
    plain = {"file_data": base64.b64encode(b"notes").decode(), "filename": "a.md"}
    assert decode_file_part(plain, config) == "notes"
    for file, message in [
        (data_url(b"x", "application/pdf"), "unsupported media type 'application/pdf'"),
        (data_url(b"\xff\xfe"), "not UTF-8"),
        (data_url(b"a\x00b"), "NUL"),
        (data_url(b"  "), "empty"),
        ({"file_data": "data:text/plain;base64,%%%"}, "not valid base64"),
        ({"file_data": "data:text/plain,hello"}, "base64-encoded"),
        ({"file_data": "data:text/plain;charset=latin-1;base64,YQ=="}, "charset"),
        ({"file_data": base64.b64encode(b"x").decode(), "filename": "a.pdf"}, "data URL"),
        ({"file_id": "file-1"}, "file_id is not supported"),
        ({}, "needs 'file_data'"),
        ("text", "needs a 'file' object"),
    ]:
        with pytest.raises(DocumentError, match=message):
            decode_file_part(file, config)
    with pytest.raises(DocumentError, match="larger than the document limit"):
        decode_file_part(data_url(b"x" * 500), LandmarkConfig(max_document_chars=100))


def test_flags_are_validated_at_parse_time(tmp_path) -> None:
    from vllm_landmark.patches.cli_flags import add_landmark_arguments, landmark_config_from_args

    parser = add_landmark_arguments(argparse.ArgumentParser(exit_on_error=False))
    assert add_landmark_arguments(parser) is parser  # idempotent
    args = parser.parse_args(["--landmark", "--landmark-budget", "64", "--landmark-factors", "1,4"])
    assert landmark_config_from_args(args) == LandmarkConfig(budget=64, factors=(1, 4))
    for argv in (
        ["--landmark-budget", "0"],
        ["--landmark-budget", "many"],
        ["--landmark-factor", "3"],
        ["--landmark-factors", "1,2,5"],
        ["--landmark-retriever", str(tmp_path / "nope")],
        ["--landmark-embedder", str(tmp_path / "nope")],
        ["--landmark-embedder", ""],
    ):
        with pytest.raises(argparse.ArgumentError):
            parser.parse_args(["--landmark", *argv])
    with pytest.raises(ValueError, match="without --landmark"):
        landmark_config_from_args(parser.parse_args(["--landmark-budget", "5"]))
    assert landmark_config_from_args(parser.parse_args([])) is None
    args = parser.parse_args(
        [
            "--landmark",
            "--landmark-embedder",
            "mean-baseline",
            "--landmark-retriever",
            str(tmp_path),
        ]
    )
    # The parsed arguments hold text (vLLM logs them and hands them to spawned processes).
    assert (args.landmark_embedder, args.landmark_retriever) == ("mean-baseline", str(tmp_path))
    assert landmark_config_from_args(args) == LandmarkConfig(
        embedder=MEAN_BASELINE, retriever=tmp_path
    )
