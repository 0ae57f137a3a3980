"""Shared fixtures: a tiny random Llama built at test time and one real server per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from vllm_landmark.testing.server_process import ServerProcess  # noqa: E402
from vllm_landmark.testing.tiny_llm import build_tiny_llama  # noqa: E402

#: Settings of the session's tiny server; tests compute expectations from them.
TINY_WINDOW = 512
TINY_BUDGET = 128
TINY_MAX_DOC_TOKENS = 8000
TINY_MAX_DOC_CHARS = 60000


def tiny_server_args() -> list[str]:
    """The flags of the session's tiny server (other servers reuse them to compare answers)."""
    return [
        "--max-model-len",
        str(TINY_WINDOW),
        "--landmark-budget",
        str(TINY_BUDGET),
        "--landmark-max-document-tokens",
        str(TINY_MAX_DOC_TOKENS),
        "--landmark-max-document-chars",
        str(TINY_MAX_DOC_CHARS),
        # Named explicitly (never a default): these tests check the k>1 soft-prompt path.
        "--landmark-embedder",
        "mean-baseline",
        # Position plans (head and tail first): these tests check the budget rule and the k>1
        # path; the retriever's plans (the default) are tested in test_retrieval_planning.py.
        "--landmark-retriever",
        "none",
        "--enforce-eager",
    ]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_server(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    server = ServerProcess(
        model=tiny_model,
        args=tiny_server_args(),
        log_dir=tmp_path_factory.mktemp("tiny-server"),
    )
    with server:
        yield server
