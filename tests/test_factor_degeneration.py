"""Mixed plans with k up to 32 do not derail SmolLM2 more often than middle truncation.

The real engine, the real SmolLM2-135M-Instruct and its shipped embedder; questions made by
the real-text QA generator (`eval.suite.qa.make_question`) over the bundled demo document, so
the test needs no installed documentation. Marked smollm2: it starts the real model (about a
minute or two on a loaded 2 vCPU machine).
"""

from __future__ import annotations

import random
from importlib import resources
from pathlib import Path

import pytest

from eval.longbench.prompts import middle_truncate
from eval.suite.arms import ArmInput, token_range
from eval.suite.qa import make_question
from eval.suite.qa_run import conversation
from eval.suite.stats import is_degenerate
from vllm_landmark import LandmarkConfig, engine_kwargs
from vllm_landmark.planning import select_windows, windows_plan

pytestmark = [pytest.mark.smollm2, pytest.mark.engine]

BUDGET = 1024
WINDOW = 2048
RAW = 256  # k=1 tokens around the gold sentence; the rest of the budget is compressed
ITEMS = 4


@pytest.fixture(scope="module")
def smollm2() -> Path:
    from vllm_landmark.default_models import prepare_default_llm

    return prepare_default_llm()


def demo_items() -> list[dict]:
    """A few questions over the demo document, each on a different sentence."""
    context = (resources.files("vllm_landmark.data") / "demo_document.md").read_text("utf-8")
    items, seen = [], set()
    for seed in range(50):
        question = make_question(context, "en", random.Random(seed))
        if question is not None and tuple(question["evidence"]) not in seen:
            seen.add(tuple(question["evidence"]))
            items.append({"id": f"demo-{seed}", "context": context, **question})
        if len(items) == ITEMS:
            return items
    raise AssertionError(f"the generator made only {len(items)} questions on the demo document")


def arms_of(item: dict, tokenizer) -> dict[str, ArmInput]:
    """Middle truncation, and plans: a k=1 window on the gold sentence + the rest at k."""
    from vllm_landmark.document.tokens import encode_document

    context = item["context"]
    n = len(encode_document(tokenizer, context))
    enc = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
    assert len(enc["input_ids"]) == n
    starts = [a for a, _ in enc["offset_mapping"]]
    ends = [b for _, b in enc["offset_mapping"]]
    evidence = token_range(starts, ends, *item["evidence"])
    windows = select_windows([evidence], [1.0], RAW, RAW, num_tokens=n)
    whole = [(0, n)]
    text, _, _ = middle_truncate(context, tokenizer, BUDGET)
    arms = {"truncate": ArmInput("truncate", text=text)}
    for name, factors in [
        ("k8", (8,)),
        ("k16", (16,)),
        ("k32", (32,)),
        ("k2-32", (2, 4, 8, 16, 32)),
    ]:
        plan = windows_plan(windows, whole, [0.0], n, BUDGET, factors)
        used = {s.factor for s in plan.spans} - {1}
        assert plan.soft_tokens <= BUDGET and used and used <= set(factors)
        arms[name] = ArmInput(name, plan=[list(t) for t in plan.as_triples()])
    return arms


def test_plans_up_to_k32_degenerate_no_more_than_truncation(smollm2: Path) -> None:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    items = demo_items()
    inputs = [arms_of(item, tokenizer) for item in items]
    llm = LLM(
        model=str(smollm2),
        dtype="float32",
        max_model_len=WINDOW,
        enforce_eager=True,
        gpu_memory_utilization=0.3,
        **engine_kwargs(LandmarkConfig(budget=BUDGET)),
    )
    params = SamplingParams(temperature=0.0, max_tokens=16)
    degenerate: dict[str, list[str]] = {}
    for arm in inputs[0]:
        messages = [
            conversation(given[arm], item) for item, given in zip(items, inputs, strict=True)
        ]
        outputs = llm.chat(messages, params, use_tqdm=False)
        answers = [out.outputs[0].text for out in outputs]
        degenerate[arm] = [a for a in answers if is_degenerate(a)]
    baseline = len(degenerate["truncate"])
    worse = {arm: bad for arm, bad in degenerate.items() if len(bad) > baseline}
    assert not worse, f"more degenerate answers than truncation ({baseline}): {worse}"
