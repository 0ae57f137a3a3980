"""Chunking-free span ranking on a tiny random BGE-M3: whole-document and windowed encoding,
span scores against brute force, offsets (characters, encoder and LLM tokens), bad input."""

from __future__ import annotations

import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vllm_landmark.document.tokens import encode_document as llm_encode_document
from vllm_landmark.retrieval.encoding import special_affixes, window_owners
from vllm_landmark.retrieval.lexical import bm25_span_scores, reciprocal_rank_fusion
from vllm_landmark.retrieval.m3 import M3Encoder, colbert_score, lexical_matching_score
from vllm_landmark.retrieval.segment import segment
from vllm_landmark.retrieval.spans import (
    SpanRanker,
    encode_document,
    encode_query,
    plan_windows,
)
from vllm_landmark.testing.tiny_m3 import WORDS, build_tiny_m3, generate_text

QUERY = "Where does the river flow through the city?"


@pytest.fixture(scope="module")
def m3_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_m3(tmp_path_factory.mktemp("spans") / "tiny_m3")


@pytest.fixture(scope="module")
def encoder(m3_folder: Path) -> M3Encoder:
    return M3Encoder(m3_folder)


@pytest.fixture(scope="module")
def document() -> str:
    rng = random.Random(7)
    return "\n\n".join(generate_text(rng, rng.randint(2, 6)) for _ in range(12))


@pytest.fixture(scope="module")
def llm_tokenizer(tiny_model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


# ----------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------


def test_query_encoding_matches_the_encoder(encoder: M3Encoder) -> None:
    q = encode_query(encoder, QUERY)
    ref = encoder.encode([QUERY])
    np.testing.assert_allclose(q.dense, ref.dense_vecs[0], atol=1e-6)
    np.testing.assert_allclose(q.colbert, ref.colbert_vecs[0], atol=1e-6)
    assert {str(k): v for k, v in q.lexical.items()} == pytest.approx(ref.lexical_weights[0])
    assert abs(np.linalg.norm(q.mean) - 1) < 1e-5


def test_a_document_that_fits_is_encoded_whole(encoder: M3Encoder, document: str) -> None:
    doc = encode_document(encoder, document)
    ref = encoder.encode([document])
    assert doc.windows == [(0, doc.num_tokens)]
    assert doc.num_tokens == len(ref.input_ids[0]) - 2
    # Same vectors as FlagEmbedding's definition: all tokens after <s>, here without </s>.
    np.testing.assert_allclose(doc.colbert, ref.colbert_vecs[0][:-1], atol=1e-6)
    # The whole document as one span scores exactly like the encoder's own scores.
    ranker = SpanRanker(encoder)
    n_units = len(segment(document))
    whole = ranker.rank(document, QUERY, span_sentences=(n_units,), top_k=1).spans[0]
    q = encoder.encode([QUERY])
    assert (whole.start_token, whole.end_token) == (0, doc.num_tokens)
    assert whole.colbert == pytest.approx(
        colbert_score(q.colbert_vecs[0], ref.colbert_vecs[0][:-1]), abs=1e-6
    )
    assert whole.sparse == pytest.approx(
        lexical_matching_score(q.lexical_weights[0], ref.lexical_weights[0]), abs=1e-6
    )


def test_plan_windows_cover_overlap_and_spread_evenly() -> None:
    assert plan_windows(100, 128, 32) == [(0, 100)]
    for n, window, overlap in [(1000, 128, 32), (129, 128, 32), (8190 * 3 + 7, 8190, 2047)]:
        windows = plan_windows(n, window, overlap)
        assert windows[0][0] == 0 and windows[-1][1] == n
        assert all(b - a == window for a, b in windows)
        shared = [windows[i][1] - windows[i + 1][0] for i in range(len(windows) - 1)]
        assert min(shared) >= overlap
        assert max(shared) - min(shared) <= 1  # evenly spread


def test_owner_is_the_window_where_a_token_is_farthest_from_an_edge() -> None:
    n, windows = 500, plan_windows(500, 128, 32)
    owner = window_owners(n, windows)

    def context(t: int, w: int) -> float:
        a, b = windows[w]
        left = t - a if a > 0 else np.inf
        right = b - 1 - t if b < n else np.inf
        return min(left, right)

    for t in range(n):
        containing = [w for w, (a, b) in enumerate(windows) if a <= t < b]
        assert owner[t] in containing
        assert context(t, owner[t]) == max(context(t, w) for w in containing)
        if 0 < owner[t] < len(windows) - 1:
            assert context(t, owner[t]) >= 16  # at least overlap / 2 on both sides


def test_long_document_windows_keep_the_owner_window_vectors(encoder: M3Encoder) -> None:
    rng = random.Random(3)
    text = generate_text(rng, 60)
    doc = encode_document(encoder, text, window=100, overlap=24)
    assert len(doc.windows) > 3
    prefix, suffix = special_affixes(encoder.tokenizer)
    ids = doc.input_ids.tolist()
    owned_hidden = np.full((doc.num_tokens, encoder.hidden_size), np.nan)
    for w, (a, b) in enumerate(doc.windows):
        row = torch.tensor([prefix + ids[a:b] + suffix])
        with torch.inference_mode():
            hidden = encoder.model(input_ids=row).last_hidden_state[0, len(prefix) : -len(suffix)]
            colbert = F.normalize(encoder.colbert_linear(hidden), dim=-1).numpy()
            sparse = torch.relu(encoder.sparse_linear(hidden)).squeeze(-1).numpy()
        mine = np.nonzero(doc.owner[a:b] == w)[0]
        assert len(mine) > 0
        owned_hidden[a + mine] = hidden.numpy()[mine]
        np.testing.assert_allclose(doc.colbert[a + mine], colbert[mine], atol=1e-6)
        np.testing.assert_allclose(doc.sparse[a + mine], sparse[mine], atol=1e-6)
    # The hidden states are not kept, only summed per sentence on the way: the sums equal those
    # of each token's owner-window state (a sentence with no token of its own reads the token
    # holding its start).
    assert not np.isnan(owned_hidden).any()
    for u, (a, b) in enumerate(doc.units.token_ranges):
        expected = owned_hidden[a:b].sum(axis=0) if b > a else owned_hidden[max(a - 1, 0)]
        np.testing.assert_allclose(doc.units.hidden_sum[u], expected, atol=1e-4)
    # Windowed vectors differ from a whole-document encoding (less context), but not wildly.
    whole = encode_document(encoder, text)
    cos = (doc.colbert * whole.colbert).sum(axis=1)
    assert cos.min() < 0.9999 and cos.mean() > 0.5


# ----------------------------------------------------------------------------------------------
# Span scores
# ----------------------------------------------------------------------------------------------


def brute_force(encoder: M3Encoder, text: str, query: str, a: int, b: int) -> dict[str, float]:
    """Scores of the encoder-token range [a, b), straight from the definitions."""
    doc = encode_document(encoder, text)
    q = encode_query(encoder, query)
    colbert = colbert_score(q.colbert, doc.colbert[a:b])
    weights: dict[str, float] = {}
    for t in range(a, b):
        key, w = str(int(doc.input_ids[t])), float(doc.sparse[t])
        if w > 0 and w > weights.get(key, 0.0):
            weights[key] = w
    sparse = lexical_matching_score({str(k): v for k, v in q.lexical.items()}, weights)
    prefix, suffix = special_affixes(encoder.tokenizer)
    row = torch.tensor([prefix + doc.input_ids.tolist() + suffix])
    with torch.inference_mode():
        hidden = encoder.model(input_ids=row).last_hidden_state[0, len(prefix) : -len(suffix)]
    mean = hidden.numpy()[a:b].astype(np.float64).mean(axis=0)
    dense = float(mean @ q.mean / np.linalg.norm(mean))
    hybrid = (0.4 * dense + 0.2 * sparse + 0.4 * colbert) / 1.0
    return {"dense": dense, "sparse": sparse, "colbert": colbert, "hybrid": hybrid}


def test_every_span_scores_like_brute_force(encoder: M3Encoder, document: str) -> None:
    ranker = SpanRanker(encoder)
    result = ranker.rank(
        document, QUERY, span_sentences=(1, 2, 3), top_k=10_000, allow_overlap=True
    )
    n_units = result.num_sentences
    assert len(result.spans) == n_units + (n_units - 1) + (n_units - 2)
    scores = [s.score for s in result.spans]
    assert scores == sorted(scores, reverse=True)
    for span in random.Random(0).sample(result.spans, 12):
        ref = brute_force(encoder, document, QUERY, span.start_token, span.end_token)
        assert span.colbert == pytest.approx(ref["colbert"], abs=1e-5)
        assert span.sparse == pytest.approx(ref["sparse"], abs=1e-5)
        assert span.dense == pytest.approx(ref["dense"], abs=1e-5)
        assert span.score == pytest.approx(ref["hybrid"], abs=1e-5)


def test_ranked_spans_do_not_overlap_and_carry_offsets(encoder: M3Encoder, document: str) -> None:
    ranker = SpanRanker(encoder)
    result = ranker.rank(document, QUERY, top_k=6)
    assert len(result.spans) == 6
    assert [s.rank for s in result.spans] == [1, 2, 3, 4, 5, 6]
    taken: set[int] = set()
    for span in result.spans:
        units = set(range(span.start_sentence, span.end_sentence))
        assert not units & taken
        taken |= units
        assert 1 <= span.end_sentence - span.start_sentence <= 3
        assert document[span.start_char : span.end_char] == span.text
        assert span.sparse is not None and span.colbert is not None


def test_the_sentence_sharing_the_query_words_ranks_first(encoder: M3Encoder) -> None:
    # Sentences over disjoint vocabularies: only the target shares tokens with the query.
    words = [w for lang in ("en", "de", "fr", "es", "ru") for w in WORDS[lang] if len(w) > 3]
    random.Random(11).shuffle(words)
    sentences = [" ".join(words[i : i + 6]).capitalize() + "." for i in range(0, 120, 6)]
    text = " ".join(sentences)
    ranker = SpanRanker(encoder)
    for target in (3, 11, 17):
        query = " ".join(sentences[target].rstrip(".").split()[1:5])
        top = ranker.rank(text, query, span_sentences=1, top_k=1).spans[0]
        assert top.text == sentences[target]


def test_span_tokens_target(encoder: M3Encoder, document: str) -> None:
    ranker = SpanRanker(encoder)
    result = ranker.rank(document, QUERY, span_tokens=60, top_k=3)
    for span in result.spans:
        n = span.end_token - span.start_token
        last_unit_alone = span.end_sentence - span.start_sentence == 1
        assert n >= 60 or last_unit_alone or span.end_token == result.num_tokens


def test_score_all_spans_for_the_planner(encoder: M3Encoder, document: str, llm_tokenizer) -> None:
    ranker = SpanRanker(encoder)
    scores = ranker.score_all_spans(document, QUERY, llm_tokenizer=llm_tokenizer)
    n_units = len(scores.segments)
    assert scores.score.shape == scores.sentence_score.shape == (n_units,)
    assert np.all(scores.score >= scores.sentence_score - 1e-12)
    assert [tuple(c) for c in scores.char_offsets] == [(s.start, s.end) for s in scores.segments]
    for ranges, total in [
        (scores.token_offsets, scores.num_tokens),
        (scores.llm_token_offsets, scores.llm_num_tokens),
    ]:
        assert ranges[0, 0] == 0 and ranges[-1, 1] == total
        assert np.all(ranges[1:, 0] == ranges[:-1, 1])  # they tile the document
    single = ranker.rank(document, QUERY, span_sentences=1, top_k=n_units, allow_overlap=True)
    by_unit = {s.start_sentence: s.score for s in single.spans}
    np.testing.assert_allclose(scores.sentence_score, [by_unit[i] for i in range(n_units)])


def test_lexical_fusion_ranks_spans_by_fused_m3_and_bm25(encoder: M3Encoder, document: str) -> None:
    """With lexical fusion a unit's score is its best containing span's reciprocal rank fusion
    of the hybrid score and BM25 over the document's sentences (retriever token ids)."""
    ranker = SpanRanker(encoder)
    fused = ranker.score_all_spans(document, QUERY, lexical_fusion=True)
    n_units = len(fused.segments)
    ranked = ranker.rank(document, QUERY, top_k=10**6, allow_overlap=True)
    spans = np.array([[s.start_sentence, s.end_sentence] for s in ranked.spans])
    hybrid = np.array([s.score for s in ranked.spans])
    doc, _ = ranker.document_encoding(document)
    query_ids = encode_query(encoder, QUERY).content_ids
    lexical = bm25_span_scores(doc.input_ids, fused.token_offsets, spans, query_ids)
    assert lexical.max() > 0  # the query shares words with the document
    combined = reciprocal_rank_fusion(hybrid, lexical)
    expected = np.full(n_units, -np.inf)
    for (s, e), value in zip(spans, combined, strict=True):
        expected[s:e] = np.maximum(expected[s:e], value)
    np.testing.assert_allclose(fused.score, expected, rtol=1e-12)
    plain = ranker.score_all_spans(document, QUERY)
    assert not np.allclose(plain.score, fused.score)
    np.testing.assert_array_equal(plain.sentence_score, fused.sentence_score)


def test_llm_token_offsets_match_the_document_processor(
    encoder: M3Encoder, document: str, llm_tokenizer
) -> None:
    ranker = SpanRanker(encoder)
    result = ranker.rank(document, QUERY, top_k=4, llm_tokenizer=llm_tokenizer)
    ids = llm_encode_document(llm_tokenizer, document)
    assert result.llm_num_tokens == len(ids)
    for span in result.spans:
        decoded = llm_tokenizer.decode(ids[span.llm_start_token : span.llm_end_token])
        assert decoded.strip() == span.text


def test_a_dense_only_folder_ranks_with_dense_scores(m3_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "dense_only"
    shutil.copytree(m3_folder, folder, ignore=shutil.ignore_patterns("*_linear.pt"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dense_only = M3Encoder(folder)
    text = "One river. Two cities. Three bridges."
    result = SpanRanker(dense_only).rank(text, QUERY, span_sentences=1, top_k=2)
    assert len(result.spans) == 2
    for span in result.spans:
        assert span.sparse is None and span.colbert is None
        assert span.score == pytest.approx(span.dense)


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


def test_empty_document_or_query_is_an_error(encoder: M3Encoder) -> None:
    ranker = SpanRanker(encoder)
    for doc in ["", "   \n\t  "]:
        with pytest.raises(ValueError, match="empty"):
            ranker.rank(doc, QUERY)
    for query in ["", "  \n"]:
        with pytest.raises(ValueError, match="empty"):
            ranker.rank("A document.", query)
    with pytest.raises(TypeError):
        ranker.rank(b"bytes", QUERY)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="top_k"):
        ranker.rank("A document.", QUERY, top_k=0)
    with pytest.raises(ValueError, match="span_sentences"):
        ranker.rank("A document.", QUERY, span_sentences=(0,))
    with pytest.raises(ValueError, match="weights"):
        ranker.rank("A document.", QUERY, weights=(1.0, -1.0, 0.0))


def test_query_over_the_encoder_limit_is_an_error(encoder: M3Encoder) -> None:
    query = "river " * (encoder.max_length + 10)
    with pytest.raises(ValueError, match=r"over the retriever's limit of 8192 tokens"):
        SpanRanker(encoder).rank("A document.", query)


def test_a_single_100k_character_sentence(encoder: M3Encoder) -> None:
    words = "river city bridge garden window market "
    text = (words * (100_000 // len(words) + 1))[:100_000]
    ranker = SpanRanker(encoder)
    result = ranker.rank(text, "garden window", top_k=3)
    assert result.num_tokens > encoder.max_length  # encoded in windows
    assert len(result.windows) >= 2
    assert result.num_sentences == len(segment(text))
    for span in result.spans:
        assert len(span.text) <= 3 * 600
        assert text[span.start_char : span.end_char] == span.text


def test_mixed_scripts_and_surrogates(encoder: M3Encoder) -> None:
    text = (
        "The river flows. 河流很长。Der Fluss ist lang! Река длинная. 川は長い。 "
        "Broken \ud800 text here. An emoji \ud83d\ude00 pair. Ende."
    )
    ranker = SpanRanker(encoder)
    result = ranker.rank(text, "river \udfff 河流", span_sentences=1, top_k=20)
    assert result.num_sentences == 8
    by_start = sorted(result.spans, key=lambda s: s.start_char)
    # Offsets index the text as given, even where a surrogate pair became one character.
    assert text[by_start[-2].start_char : by_start[-2].end_char] == "An emoji \ud83d\ude00 pair."
    assert text[by_start[-1].start_char : by_start[-1].end_char] == "Ende."
    assert by_start[-3].text == "Broken \ufffd text here."


def test_a_document_over_the_token_bound_is_refused_before_any_forward(encoder: M3Encoder) -> None:
    ranker = SpanRanker(encoder, max_document_tokens=50)
    calls = []
    handle = encoder.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="over the retriever's document limit of 50"):
            ranker.rank(generate_text(random.Random(4), 20), QUERY)
    finally:
        handle.remove()
    assert calls == []  # the document is measured first: not even the query is encoded


def test_e5_style_prompts_and_mean_pooling(m3_folder: Path, tmp_path: Path, document: str) -> None:
    import json

    folder = tmp_path / "with_prompts"
    shutil.copytree(m3_folder, folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False})
    )
    prompts = {"query": "query: ", "passage": "passage: "}
    (folder / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts}))
    e5 = M3Encoder(folder)
    assert e5.pooling == "mean" and e5.prompts == prompts
    q = encode_query(e5, QUERY)
    ref = e5.encode([QUERY], prompt_name="query")
    np.testing.assert_allclose(q.dense, ref.dense_vecs[0], atol=1e-6)
    np.testing.assert_allclose(q.colbert, ref.colbert_vecs[0], atol=1e-6)
    # The document is read as "passage: <text>": its vectors are those of that text, the
    # prompt's tokens left out; offsets still index the text itself.
    doc = encode_document(e5, document)
    passage = e5.encode([document], prompt_name="passage")
    n_prompt = len(passage.input_ids[0]) - 2 - doc.num_tokens
    assert n_prompt > 0
    np.testing.assert_allclose(doc.colbert, passage.colbert_vecs[0][n_prompt:-1], atol=1e-6)
    top = SpanRanker(e5).rank(document, QUERY, top_k=1).spans[0]
    assert document[top.start_char : top.end_char] == top.text
