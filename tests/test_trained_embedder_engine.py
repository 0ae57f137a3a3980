"""A trained-format embedder checkpoint served by the real engine (tiny model, CPU).

The checkpoint is built untrained (identity projection, zero LoRA B) in the format the recipe
writes; what matters here is that the engine loads it, routes every k>1 span through it in
one packed call, and gives the same greedy tokens as transformers fed the same soft prompt.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from vllm_landmark import LandmarkConfig, engine_kwargs
from vllm_landmark.document.marker import filler_token_id
from vllm_landmark.testing.documents import make_document
from vllm_landmark.testing.tiny_llm import build_tiny_llama, greedy_with_soft_tokens

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def embedder_folder(tiny_model: Path, tmp_path_factory) -> Path:
    from vllm_landmark.compression.embedder import ExtensibleEmbedder

    torch.manual_seed(0)
    embedder = ExtensibleEmbedder.from_base(tiny_model, num_layers=1, factors=(2, 4, 8))
    embedder.attach_lora()
    with torch.no_grad():  # make the adapter non-trivial, so a wrong merge would show
        for name, param in embedder.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    return embedder.save_pretrained(tmp_path_factory.mktemp("embedder") / "tiny-embedder")


def test_engine_serves_the_embedder_and_matches_transformers(
    tiny_model: Path, embedder_folder: Path
) -> None:
    from transformers import AutoModelForCausalLM
    from vllm import LLM, SamplingParams

    from vllm_landmark.compression.baseline import mean_pool_groups
    from vllm_landmark.compression.embedder import ExtensibleEmbedder

    llm = LLM(
        model=str(tiny_model),
        dtype="float32",
        max_model_len=512,
        enforce_eager=True,
        **engine_kwargs(LandmarkConfig(budget=128, embedder=str(embedder_folder))),
    )
    try:
        tokenizer = llm.get_tokenizer()
        document = make_document(tokenizer, 220, seed=31)
        doc_ids = torch.tensor(tokenizer.encode(document, add_special_tokens=False))
        plan = [[0, 40, 4], [40, 60, 1], [60, len(doc_ids), 8]]
        content = [
            {"type": "document", "document": {"text": document, "plan": plan}},
            {"type": "text", "text": "which year?"},
        ]
        params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
        output = llm.chat([{"role": "user", "content": content}], params)[0]

        # A k the embedder was not trained for is refused with the served factors named.
        with pytest.raises(ValueError, match=r"factor=16 is not served here.*\(1, 2, 4, 8\)"):
            llm.chat(
                [
                    {
                        "role": "user",
                        "content": [
                            {"type": "document", "document": {"text": document, "factor": 16}}
                        ],
                    }
                ],
                params,
            )
        auto = llm.chat(
            [{"role": "user", "content": [{"type": "document", "document": {"text": document}}]}],
            params,
        )[0]
        # Over its budget cap of 128, the document is compressed at the smallest trained factor.
        assert auto.prompt_token_ids.count(filler_token_id(tokenizer)) == -(-len(doc_ids) // 2)
    finally:
        del llm
        gc.collect()

    reference = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    embed = reference.get_input_embeddings()
    embedder = ExtensibleEmbedder.from_pretrained(embedder_folder, tiny_model)
    prompt_ids = torch.tensor(output.prompt_token_ids)
    is_soft = prompt_ids == filler_token_id(tokenizer)  # an id absent from this prompt's text
    with torch.no_grad():
        compressed = embedder.embed_spans([doc_ids[0:40], doc_ids[60:]], [4, 8])
        soft = torch.cat([compressed[0], embed(doc_ids[40:60]), compressed[1]])
        assert int(is_soft.sum()) == soft.shape[0]
        # The trained path must differ from the mean baseline, or this test proves nothing.
        assert not torch.allclose(
            compressed[0], mean_pool_groups(embed(doc_ids[0:40]), 4), atol=1e-3
        )
    expected = greedy_with_soft_tokens(reference, prompt_ids, is_soft, soft, 10)
    assert list(output.outputs[0].token_ids) == expected


def test_embedder_for_another_base_model_is_refused(embedder_folder: Path, tmp_path: Path) -> None:
    from vllm import LLM

    other = build_tiny_llama(tmp_path / "other", seed=5)
    with pytest.raises(Exception, match="was trained for base model"):
        LLM(
            model=str(other),
            dtype="float32",
            max_model_len=512,
            enforce_eager=True,
            **engine_kwargs(LandmarkConfig(embedder=str(embedder_folder))),
        )
    gc.collect()
