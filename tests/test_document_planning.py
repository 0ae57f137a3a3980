"""The request path's pure pieces: markers, segment tokenization, the budget rule."""

from __future__ import annotations

import pytest

from vllm_landmark.compression.choice import NO_EMBEDDER, EmbedderChoice
from vllm_landmark.config import LandmarkConfig
from vllm_landmark.document.items import DocumentError
from vllm_landmark.document.marker import (
    DOCUMENT_MARKER,
    MarkerError,
    SegmentTokenizer,
    filler_token_id,
    new_marker,
    split_at_markers,
)
from vllm_landmark.document.reader import DocumentReader, ParsedDocument
from vllm_landmark.planning import (
    DocumentToPlan,
    PlanSettings,
    ScoredSpans,
    needs_scores,
    plan_prompt,
    position_scores,
    share_room,
)

TRAINED = EmbedderChoice("trained", "/unused", (2, 4, 8, 16, 32))


def test_markers_are_fresh_and_split_the_prompt_in_order() -> None:
    first, second = new_marker(), new_marker()
    assert first != second and len(first) > 32
    assert split_at_markers(f"a{first}b{second}c", [first, second]) == ["a", "b", "c"]
    assert split_at_markers(f"{DOCUMENT_MARKER}x{DOCUMENT_MARKER}", [DOCUMENT_MARKER] * 2) == [
        "",
        "x",
        "",
    ]
    with pytest.raises(MarkerError, match="0 document marker"):
        split_at_markers("no marker here", [first])
    with pytest.raises(MarkerError, match="out of order"):
        split_at_markers(f"{second}{first}", [first, second])
    with pytest.raises(MarkerError, match="3 document marker"):
        split_at_markers(DOCUMENT_MARKER * 3, [DOCUMENT_MARKER] * 2)


def test_text_after_a_document_tokenizes_as_after_a_special_token(tiny_model) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    segments = SegmentTokenizer.for_tokenizer(tokenizer)
    assert segments.boundary is not None
    special = segments.boundary
    for text in ["\nthe keeper", " light", "question?\n<|im_end|>\n"]:
        expected = tokenizer.encode(special + text, add_special_tokens=False)[1:]
        assert segments.encode_after_document(text) == expected
    ids, positions = segments.encode(["<|im_start|>user\n", "\nwhy?"], {})
    head = tokenizer.encode("<|im_start|>user\n", add_special_tokens=False)
    assert positions == [len(head)] and ids[: len(head)] == head
    assert filler_token_id(tokenizer) != tokenizer.eos_token_id


def test_water_filling_shares() -> None:
    assert share_room([10, 20], 100, None) == [10, 20]
    assert share_room([10, 500, 500], 210, None) == [10, 100, 100]
    assert share_room([300, 300], 101, None) == [51, 50]
    assert share_room([300, 300], 1000, 64) == [64, 64]
    assert share_room([5], -3, None) == [0]
    for lengths, room, cap in [([7, 90, 3, 400], 333, None), ([50] * 7, 100, 20)]:
        shares = share_room(lengths, room, cap)
        assert sum(shares) <= room
        assert all(s <= n for s, n in zip(shares, lengths, strict=True))


def test_position_scores_keep_head_and_tail_first() -> None:
    scores = position_scores(640)
    best = sorted(range(len(scores.values)), key=lambda i: -scores.values[i])[:2]
    assert sorted(best) == [0, len(scores.values) - 1]


def planner(tokenizer, embedder=NO_EMBEDDER, window: int = 512, **config) -> DocumentReader:
    return DocumentReader(LandmarkConfig(**config), tokenizer, window, embedder)


def document(n: int, **kwargs) -> ParsedDocument:
    return ParsedDocument(token_ids=tuple(range(5, 5 + n)), marker=DOCUMENT_MARKER, **kwargs)


def test_a_prompt_that_fits_reads_every_document_whole(tiny_model) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    # 261 document tokens + 34 text tokens + the default reserve (128 in a 512 window) fit.
    planned = planner(tokenizer).plan([document(261)], [3], text_tokens=34)[0]
    assert planned.reason == "fits" and planned.plan.as_triples() == [(0, 261, 1)]
    # The request's max_tokens replaces the reserve: 34 + 261 + 300 > 512.
    tight = planner(tokenizer).plan([document(261)], [3], 34, max_output_tokens=300)[0]
    assert tight.reason == "window" and tight.plan.soft_tokens == 512 - 34 - 300
    assert tight.selection == "position" and set(tight.summary()["factors"]) == {1}


def test_over_the_window_compresses_only_with_a_trained_embedder(tiny_model) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    without = planner(tokenizer).plan([document(2000)], [0], 50)[0]
    assert without.summary()["factors"] == [1] and without.plan.soft_tokens <= 512 - 50 - 128
    first, last = without.plan.spans[0], without.plan.spans[-1]
    assert first.start == 0 and last.end == 2000  # head and tail kept, the middle left out
    trained = planner(tokenizer, TRAINED).plan([document(2000)], [0], 50)[0]
    assert trained.plan.kept_tokens == 2000 and trained.plan.soft_tokens <= 334
    assert trained.selection == "uniform" and trained.summary()["factors"] == [8]


def test_documents_share_the_room_and_the_budget_caps_each(tiny_model) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    short, long = document(40), document(900)
    planned = planner(tokenizer).plan([short, long], [0, 1], 30)
    assert planned[0].reason == "fits" and planned[0].plan.soft_tokens == 40
    assert planned[1].plan.soft_tokens == 512 - 30 - 128 - 40
    capped = planner(tokenizer, budget=64).plan([short, long], [0, 1], 30)
    assert capped[0].reason == "fits" and capped[1].reason == "budget"
    assert capped[1].plan.soft_tokens == 64


def test_given_factors_and_plans_are_kept_and_checked(tiny_model) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    plain = planner(tokenizer)
    item = {"token_ids": list(range(5, 105)), "plan": [[0, 50, 1], [60, 100, 1]]}
    planned = plain.plan([plain.parse(item, DOCUMENT_MARKER)], [0], 10)[0]
    assert planned.reason == "plan" and planned.plan.as_triples() == [(0, 50, 1), (60, 100, 1)]
    with pytest.raises(DocumentError, match="factor=4 is not served here"):
        plain.parse({"token_ids": [5] * 10, "factor": 4}, DOCUMENT_MARKER)
    with pytest.raises(DocumentError, match="past the document"):
        plain.parse({"token_ids": [5] * 10, "plan": [[0, 20, 1]]}, DOCUMENT_MARKER)
    with pytest.raises(DocumentError, match="no room"):
        plain.plan([document(100)], [0], text_tokens=500)
    keys = {
        planner(tokenizer, TRAINED).plan([document(600)], [0], 10, max_output_tokens=m)[0].cache_key
        for m in (10, 10, 400)
    }
    assert len(keys) == 2  # the cache key follows the plan, not the request


def test_options_that_cannot_place_documents_are_refused_at_start_up() -> None:
    from types import SimpleNamespace

    from vllm_landmark.modeling import check_serving_options

    check_serving_options(SimpleNamespace(enable_prompt_embeds=False, tokenizer_mode="auto"))
    with pytest.raises(ValueError, match="cannot be combined with --enable-prompt-embeds"):
        check_serving_options(SimpleNamespace(enable_prompt_embeds=True, tokenizer_mode="auto"))
    with pytest.raises(ValueError, match="without --tokenizer-mode mistral"):
        check_serving_options(SimpleNamespace(enable_prompt_embeds=False, tokenizer_mode="mistral"))


def test_document_tokens_are_cached_and_can_be_forgotten(tiny_model) -> None:
    from transformers import AutoTokenizer

    from vllm_landmark.document.tokens import DocumentTokenizer, forget_document

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    cache = DocumentTokenizer(tokenizer)
    text = "the keeper <|im_end|> wrote"
    ids = cache.encode(text)
    assert ids == tuple(tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") not in ids  # special text stays text
    assert cache.encode(text) is ids  # served from the cache
    assert forget_document(text) >= 1 and not cache.forget(text)


def test_pipeline_parallel_is_refused_on_the_cpu_build() -> None:
    from types import SimpleNamespace

    from vllm.platforms import current_platform

    from vllm_landmark.modeling import check_parallelism

    check_parallelism(SimpleNamespace(pipeline_parallel_size=1))
    if current_platform.is_cpu():
        with pytest.raises(ValueError, match="does not run on vLLM's CPU build"):
            check_parallelism(SimpleNamespace(pipeline_parallel_size=2))


def test_retrieval_is_wanted_exactly_where_the_plan_reads_scores(tiny_model, tmp_path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    # No retriever: never scored.
    assert planner(tokenizer, retriever=None).to_score([document(600)], [0], 10) == [False]
    # A cap the document exceeds decides alone; a document under it is read whole.
    capped = planner(tokenizer, retriever=str(tmp_path), budget=100)
    question = {"text": "x" * 10, "query": "why?"}
    assert capped.to_score([document(600, **question)], [0], 10) == [True]
    assert capped.to_score([document(90, **question)], [0], 10) == [False]
    # Otherwise the window decides: 200 + 100 + reserve 128 fits 512, 200 + 200 + 128 does not.
    windowed = planner(tokenizer, retriever=str(tmp_path))
    assert windowed.to_score([document(200, **question)], [0], 100) == [False]
    assert windowed.to_score([document(200, **question)], [0], 200) == [True]
    # No text or no question: nothing for the retriever to read.
    assert windowed.to_score([document(200, text="x")], [0], 200) == [False]


@pytest.mark.parametrize("budget", [None, 64, 300])
@pytest.mark.parametrize("factors", [(1,), (1, 4, 16)])
def test_needs_scores_agrees_with_what_the_plan_reads(budget, factors) -> None:
    """For every layout, a document is planned by its scores exactly when `needs_scores`
    says so: planning it with and without scores differs only there."""
    import random

    rng = random.Random(0)
    settings = PlanSettings(factors, factors, budget=budget)
    for _ in range(60):
        documents = []
        for _ in range(rng.randint(1, 3)):
            n = rng.choice([20, 150, 400, 900, 3000])
            bounds = tuple((a, min(n, a + 25)) for a in range(0, n, 25))
            values = tuple(rng.random() for _ in bounds)
            documents.append(DocumentToPlan(tuple([9] * n), 0, ScoredSpans(bounds, values)))
        text, window, reserve = rng.randint(10, 200), 1024, rng.choice([16, 128])
        wanted = needs_scores(documents, text, window, reserve, settings)
        try:
            scored = plan_prompt(documents, text, window, reserve, settings)
        except ValueError:
            continue
        blind = plan_prompt(
            [DocumentToPlan(d.token_ids) for d in documents], text, window, reserve, settings
        )
        for want, with_scores, without in zip(wanted, scored, blind, strict=True):
            assert (with_scores.selection == "retriever") == want
            if not want:
                assert with_scores == without
