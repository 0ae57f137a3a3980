"""The plugin in a real offline vLLM engine (tiny random Llama, CPU, float32)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from vllm_landmark import DOCUMENT_MARKER, LandmarkConfig, engine_kwargs
from vllm_landmark.compression.baseline import mean_pool_groups
from vllm_landmark.document.marker import filler_token_id
from vllm_landmark.planning import choose_factor, num_soft_tokens
from vllm_landmark.testing.documents import make_document
from vllm_landmark.testing.tiny_llm import greedy_with_soft_tokens

pytestmark = pytest.mark.engine

WINDOW = 512
BUDGET = 128


@pytest.fixture(scope="module")
def llm(tiny_model: Path) -> Iterator[object]:
    from vllm import LLM

    engine = LLM(
        model=str(tiny_model),
        dtype="float32",
        max_model_len=WINDOW,
        enforce_eager=True,
        # The untrained mean baseline, by name: what these tests check is the soft-prompt path.
        # Uniform and position plans (no retriever): these tests check the k>1 path itself.
        **engine_kwargs(LandmarkConfig(budget=BUDGET, embedder="mean-baseline", retriever=None)),
    )
    yield engine
    del engine
    gc.collect()


def placeholder_id(tokenizer) -> int:
    """The id at soft-token positions (absent from these prompts' text)."""
    return filler_token_id(tokenizer)


def greedy(max_tokens: int = 24):
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def doc_part(text: str, **extra: object) -> dict:
    return {"type": "document", "document": {"text": text, **extra}}


def test_k1_document_is_token_identical_to_pasted_text(llm) -> None:
    tokenizer = llm.get_tokenizer()
    for seed, size in [(1, 40), (2, 100), (3, BUDGET)]:
        document = make_document(tokenizer, size, seed=seed)
        question = "what did the keeper write in the record?"
        injected = llm.chat(
            [{"role": "user", "content": [doc_part(document), {"type": "text", "text": question}]}],
            greedy(),
        )[0]
        pasted = llm.chat([{"role": "user", "content": document + "\n" + question}], greedy())[0]
        assert len(injected.prompt_token_ids) == len(pasted.prompt_token_ids)
        assert injected.outputs[0].token_ids == pasted.outputs[0].token_ids


def test_two_documents_in_one_prompt_match_pasted_text(llm) -> None:
    tokenizer = llm.get_tokenizer()
    first, second = make_document(tokenizer, 60, seed=4), make_document(tokenizer, 70, seed=5)
    content = [doc_part(first), {"type": "text", "text": "and"}, doc_part(second)]
    injected = llm.chat([{"role": "user", "content": content}], greedy())[0]
    pasted = llm.chat([{"role": "user", "content": f"{first}\nand\n{second}"}], greedy())[0]
    assert injected.outputs[0].token_ids == pasted.outputs[0].token_ids


def test_document_four_times_the_window_is_served_at_the_budget(llm) -> None:
    tokenizer = llm.get_tokenizer()
    document = make_document(tokenizer, 4 * WINDOW, seed=6)
    num_tokens = len(tokenizer.encode(document, add_special_tokens=False))
    factor = choose_factor(num_tokens, BUDGET, LandmarkConfig(budget=BUDGET))
    question = "who kept the light?"
    output = llm.chat(
        [{"role": "user", "content": [doc_part(document), {"type": "text", "text": question}]}],
        greedy(4),
    )[0]
    text_only = llm.chat([{"role": "user", "content": "\n" + question}], greedy(1))[0]
    injected = output.prompt_token_ids.count(placeholder_id(tokenizer))
    assert num_tokens > 3 * WINDOW
    assert injected == num_soft_tokens(num_tokens, factor) <= BUDGET
    # Documents take no token of their own: the rest of the prompt is the text.
    assert len(output.prompt_token_ids) == len(text_only.prompt_token_ids) + injected


def test_k_above_one_matches_a_transformers_reference(llm, tiny_model: Path) -> None:
    """Greedy tokens at k=4 equal Hugging Face transformers fed the same soft prompt."""
    from transformers import AutoModelForCausalLM

    tokenizer = llm.get_tokenizer()
    document = make_document(tokenizer, 300, seed=7)
    question = "which year?"
    output = llm.chat(
        [
            {
                "role": "user",
                "content": [doc_part(document, factor=4), {"type": "text", "text": question}],
            }
        ],
        greedy(12),
    )[0]

    reference = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    embed = reference.get_input_embeddings()
    doc_ids = torch.tensor(tokenizer.encode(document, add_special_tokens=False))
    prompt_ids = torch.tensor(output.prompt_token_ids)
    is_soft = prompt_ids == placeholder_id(tokenizer)
    with torch.no_grad():
        soft = mean_pool_groups(embed(doc_ids), 4)
        assert soft.shape[0] == int(is_soft.sum()) == num_soft_tokens(len(doc_ids), 4)
    expected = greedy_with_soft_tokens(reference, prompt_ids, is_soft, soft, 12)
    assert list(output.outputs[0].token_ids) == expected


def test_explicit_plan_matches_a_transformers_reference(llm, tiny_model: Path) -> None:
    """Spans at k=1 and k=4 with a dropped gap: the same soft prompt as transformers."""
    from transformers import AutoModelForCausalLM

    tokenizer = llm.get_tokenizer()
    document = make_document(tokenizer, 200, seed=9)
    doc_ids = torch.tensor(tokenizer.encode(document, add_special_tokens=False))
    plan = [[0, 30, 4], [30, 50, 1], [90, 150, 8], [150, len(doc_ids), 2]]
    content = [
        {"type": "document", "document": {"text": document, "plan": plan}},
        {"type": "text", "text": "which year?"},
    ]
    output = llm.chat([{"role": "user", "content": content}], greedy(10))[0]

    reference = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    embed = reference.get_input_embeddings()
    prompt_ids = torch.tensor(output.prompt_token_ids)
    is_soft = prompt_ids == placeholder_id(tokenizer)
    with torch.no_grad():
        soft = torch.cat([mean_pool_groups(embed(doc_ids[a:b]), k) for a, b, k in plan])
        assert (
            int(is_soft.sum())
            == soft.shape[0]
            == 8 + 20 + 8 + num_soft_tokens(len(doc_ids) - 150, 2)
        )
    expected = greedy_with_soft_tokens(reference, prompt_ids, is_soft, soft, 10)
    assert list(output.outputs[0].token_ids) == expected


def test_bad_documents_raise_clear_errors_and_engine_keeps_working(llm) -> None:
    with pytest.raises(ValueError, match="empty"):
        llm.generate({"prompt": DOCUMENT_MARKER, "multi_modal_data": {"document": "  "}})
    with pytest.raises(ValueError, match="factor=3 is not allowed"):
        llm.generate(
            {
                "prompt": DOCUMENT_MARKER,
                "multi_modal_data": {"document": {"text": "a", "factor": 3}},
            }
        )
    with pytest.raises(ValueError, match="0 document marker"):
        llm.generate({"prompt": "no marker", "multi_modal_data": {"document": "the keeper."}})
    with pytest.raises(ValueError, match="token-id prompts cannot carry documents"):
        llm.generate({"prompt_token_ids": [5, 6], "multi_modal_data": {"document": "a b"}})
    tokenizer = llm.get_tokenizer()
    # 40x the budget is more than the strongest factor holds: the middle is left out.
    too_long = make_document(tokenizer, 40 * BUDGET, seed=8)
    served = llm.generate(
        {"prompt": DOCUMENT_MARKER, "multi_modal_data": {"document": too_long}}, greedy(2)
    )[0]
    assert served.prompt_token_ids.count(placeholder_id(tokenizer)) <= BUDGET
    ok = llm.generate(
        {"prompt": f"x {DOCUMENT_MARKER}", "multi_modal_data": {"document": "the keeper."}},
        greedy(2),
    )
    assert len(ok[0].outputs[0].token_ids) == 2
