"""The demo's planned path: the retriever plans the bundled document for the question.

Real commands and a real engine on the real default models (SmolLM2 + the bundled retriever and
embedder): the 4,351-token document gets at most 1,024 soft tokens (windows around the best
spans at k=1; the shipped embedder's factors are off by its factor check).

What the plan must do for the answer is asserted on its likelihood, teacher-forced: the
designer's name, stated in one section in the middle of the document, must be far more likely
with the plan than with middle truncation at the same budget, and at least about as likely as
with the whole document pasted. The greedy answer of this 135M model is not asserted: over
~1,000 tokens of windows it flips with changes that keep the fact in what the LLM reads
(window sizes 32-512 and budgets 512-1,024 each gave right and wrong answers, with the fact
always in the windows), so it cannot tell a good plan from a bad one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import resources

import pytest

# Both tests run an offline engine: the demo command starts one, and so does the second test.
pytestmark = [pytest.mark.smollm2, pytest.mark.engine]

BUDGET = 1024
ANSWER = "Ottilie Brandvold"  # the designer, named in one section, mid-document


def test_demo_plans_the_document_into_the_budget() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "vllm_landmark.cli", "demo", "--budget", str(BUDGET)]
    command += ["--retriever", "default"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    match = re.search(r"document: (\d+) tokens, injected as (\d+) soft tokens", result.stdout)
    assert match, result.stdout[-2000:]
    raw, injected = int(match[1]), int(match[2])
    assert injected <= BUDGET < raw


def test_planned_document_makes_the_answer_likely() -> None:
    from vllm import LLM, SamplingParams

    from eval.longbench.prompts import middle_truncate
    from eval.suite.qa_run import answer_logprob, answer_token_ids
    from vllm_landmark import LandmarkConfig, engine_kwargs
    from vllm_landmark.default_models import prepare_default_llm

    data = resources.files("vllm_landmark.data")
    document = (data / "demo_document.md").read_text(encoding="utf-8").rstrip()
    question = json.loads((data / "demo.json").read_text(encoding="utf-8"))["question"]
    assert ANSWER in document
    llm = LLM(
        model=str(prepare_default_llm()),
        dtype="float32",
        max_model_len=8192,
        enforce_eager=True,
        **engine_kwargs(LandmarkConfig(budget=BUDGET, retriever="default")),
    )
    tokenizer = llm.get_tokenizer()
    ask = f"\n\nQuestion: {question}\nAnswer briefly."
    truncated, _, _ = middle_truncate(document, tokenizer, BUDGET)
    assert ANSWER not in truncated  # the fact is in the middle: truncation cuts it
    planned = {"type": "document", "document": {"text": document, "query": question}}
    contexts = {
        "plan": [planned, {"type": "text", "text": ask}],
        "truncate": truncated + "\n" + ask,
        "whole": document + "\n" + ask,
    }
    answer_ids = answer_token_ids(tokenizer, ask, ANSWER)
    conversations = [
        [{"role": "user", "content": content}, {"role": "assistant", "content": ANSWER}]
        for content in contexts.values()
    ]
    outputs = llm.chat(
        conversations,
        SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0),
        add_generation_prompt=False,
        continue_final_message=True,
        use_tqdm=False,
    )
    logprob = {
        arm: answer_logprob(out, answer_ids) for arm, out in zip(contexts, outputs, strict=True)
    }
    plan_tokens = len(outputs[0].prompt_token_ids)
    assert plan_tokens < len(outputs[2].prompt_token_ids) // 3  # the plan really cut it
    # Measured (dev machine): plan -0.97, truncation -6.56, whole document -1.75 nats/token.
    assert logprob["plan"] > logprob["truncate"] + 3.0, logprob
    assert logprob["plan"] > logprob["whole"] - 0.5, logprob
