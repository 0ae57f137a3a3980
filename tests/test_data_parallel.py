"""Data parallel and several API servers: every process that parses requests has the plugin.

vLLM spawns one API server per data-parallel rank (or per `--api-server-count`); each builds
its engine arguments from the parsed flags before any plugin loads, so the plugin's settings
must travel inside those arguments. Through the real server: a document request is answered,
and its greedy answer equals the single-engine server's (`tiny_server`, same flags). Under
data parallelism, requests carrying the same document go to the engine its content names.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator

import openai
import pytest

from tests.conftest import tiny_server_args
from vllm_landmark.document.tokens import encode_document
from vllm_landmark.server.affinity import affinity_rank
from vllm_landmark.testing.documents import make_document
from vllm_landmark.testing.server_process import ServerProcess, finished_per_engine

pytestmark = pytest.mark.server
QUESTION = "what did the keeper write in the record?"


@pytest.fixture(
    scope="module",
    params=[["--data-parallel-size", "2"], ["--api-server-count", "2"]],
    ids=["dp2", "api2"],
)
def parallel_server(request, tiny_server, tiny_model, tmp_path_factory) -> Iterator[ServerProcess]:
    # `tiny_server` first: it must start without the binding below. One core per engine: the CPU build binds each data-parallel rank's threads.
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0|1"
    try:
        server = ServerProcess(
            tiny_model,
            args=[*tiny_server_args(), *request.param],
            log_dir=tmp_path_factory.mktemp("parallel-server"),
            startup_timeout=420.0,
        )
        with server:
            yield server
    finally:
        os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)


def answer(
    server: ServerProcess, model: str, document: str, headers: dict[str, str] | None = None
) -> tuple[str, dict]:
    client = openai.OpenAI(
        base_url=server.base_url, api_key="unused", max_retries=0, default_headers=headers
    )
    response = client.chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "document", "document": {"text": document}},
                    {"type": "text", "text": QUESTION},
                ],
            }
        ],
        temperature=0.0,
        max_tokens=12,
        extra_body={"ignore_eos": True},
    )
    return response.choices[0].message.content, response.model_extra["landmark"]


def test_documents_are_answered_as_on_one_engine(parallel_server, tiny_server, tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    for seed, size in [(31, 60), (32, 2000)]:  # read whole; planned into the budget at k>1
        document = make_document(tokenizer, size, seed=seed)
        expected = answer(tiny_server, str(tiny_model), document)
        # Several requests, so both engines (or both API servers) take some.
        for _ in range(3):
            assert answer(parallel_server, str(tiny_model), document) == expected


def test_same_document_same_engine(parallel_server, tiny_model):
    if "--data-parallel-size" not in parallel_server.args:
        pytest.skip("two API servers over one engine: there is no engine to choose")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    root = parallel_server.base_url.removesuffix("/v1")
    engines_used = set()
    for seed in range(40, 46):
        document = make_document(tokenizer, 300, seed=seed)
        expected = str(affinity_rank([encode_document(tokenizer, document)], 2))
        for _ in range(2):
            before = finished_per_engine(root)
            answer(parallel_server, str(tiny_model), document)
            moved = finished_per_engine(root) - before
            assert moved == Counter({expected: 1}), (seed, moved)
        engines_used.add(expected)
    assert engines_used == {"0", "1"}  # the seeds were not picked: 6 documents, both engines
    # A caller's own X-data-parallel-rank still wins over the document's engine.
    other = str(1 - int(expected))
    before = finished_per_engine(root)
    answer(parallel_server, str(tiny_model), document, headers={"X-data-parallel-rank": other})
    assert finished_per_engine(root) - before == Counter({other: 1})
