"""`POST /v1/landmark/spans` on a real OpenAI-compatible server started with
`--landmark-retriever` (a tiny random BGE-M3 whose limit is 128 tokens, so long documents go
through overlapping windows)."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import httpx
import pytest

from vllm_landmark.server.spans_endpoint import ROUTE
from vllm_landmark.testing.server_process import ServerProcess
from vllm_landmark.testing.tiny_m3 import build_tiny_m3, generate_text

pytestmark = pytest.mark.server

ENTRY_POINT = "landmark = vllm_landmark.server.spans_endpoint:SpansEndpointPlugin"
M3_LIMIT = 128


def _entry_point_shim(folder: Path) -> Path | None:
    """Until the project's own metadata declares the endpoint plugin, a dist-info on
    PYTHONPATH declares it (the same entry point the distribution should carry)."""
    if any(ep.name == "landmark" for ep in entry_points(group="vllm.endpoint_plugins")):
        return None
    info = folder / "vllm_landmark_spans_endpoint-0.0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: vllm-landmark-spans-endpoint\nVersion: 0.0.0\n"
    )
    (info / "entry_points.txt").write_text(f"[vllm.endpoint_plugins]\n{ENTRY_POINT}\n")
    return folder


@pytest.fixture(scope="module")
def m3_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_m3(
        tmp_path_factory.mktemp("endpoint") / "tiny_m3", max_position_embeddings=M3_LIMIT + 2
    )


@pytest.fixture(scope="module")
def spans_server(
    tiny_model: Path, m3_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    shim = _entry_point_shim(tmp_path_factory.mktemp("entry-point"))
    saved = {k: os.environ.get(k) for k in ("VLLM_PLUGINS", "PYTHONPATH")}
    os.environ["VLLM_PLUGINS"] = "landmark"
    if shim is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim), saved["PYTHONPATH"]]))
    server = ServerProcess(
        model=tiny_model,
        args=["--max-model-len", "512", "--enforce-eager", "--landmark-retriever", str(m3_folder)],
        log_dir=tmp_path_factory.mktemp("spans-server"),
    )
    try:
        server.start()  # the environment is read when the process starts
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def post(spans_server: ServerProcess):
    url = spans_server.base_url.removesuffix("/v1") + ROUTE
    client = httpx.Client(timeout=120)

    def _post(body: dict | str) -> httpx.Response:
        if isinstance(body, str):
            return client.post(url, content=body, headers={"Content-Type": "application/json"})
        return client.post(url, json=body)

    yield _post
    client.close()


@pytest.fixture(scope="module")
def document() -> str:
    rng = random.Random(21)
    return "\n\n".join(generate_text(rng, rng.randint(2, 5)) for _ in range(15))


def error_message(response: httpx.Response) -> str:
    return response.json()["error"]["message"]


def test_ranked_spans_with_scores_and_offsets(post, document: str, tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    response = post({"document": document, "question": "Where is the river?", "top_k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "landmark.spans"
    assert body["retriever"] == "tiny_m3"
    assert body["weights"] == [0.4, 0.2, 0.4]
    info = body["document"]
    assert info["num_tokens"] > M3_LIMIT and len(info["windows"]) > 1  # windowed encoding
    assert info["cached"] is False
    spans = body["spans"]
    assert [s["rank"] for s in spans] == [1, 2, 3]
    assert [s["score"] for s in spans] == sorted((s["score"] for s in spans), reverse=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ids = tokenizer.encode(document, add_special_tokens=False)
    assert info["llm_num_tokens"] == len(ids)
    for span in spans:
        assert document[span["start_char"] : span["end_char"]] == span["text"]
        for key in ("dense", "sparse", "colbert"):
            assert isinstance(span[key], float)
        piece = tokenizer.decode(ids[span["llm_start_token"] : span["llm_end_token"]])
        assert piece.strip() == span["text"]

    again = post({"document": document, "query": "Wo ist der Berg?", "span_tokens": 40})
    assert again.status_code == 200, again.text
    assert again.json()["document"]["cached"] is True
    assert again.json()["timings"]["document_encode_s"] == 0.0


def test_bad_requests_get_clear_4xx(post, m3_folder: Path) -> None:
    cases = [
        ({"document": "", "question": "q"}, 400, "document is empty"),
        ({"document": " \n\t ", "question": "q"}, 400, "document is empty"),
        ({"document": "Text.", "question": "   "}, 400, "question is empty"),
        (
            {"document": "Text.", "question": "river " * (M3_LIMIT + 5)},
            400,
            f"over the retriever's limit of {M3_LIMIT} tokens",
        ),
        ({"document": "Text.", "question": "q", "retriever": "bge-m3"}, 404, "unknown retriever"),
        ({"document": "Text.", "question": "q", "span_sentences": [0]}, 400, "span_sentences"),
        (
            {"document": "Text.", "question": "q", "span_sentences": [1], "span_tokens": 9},
            400,
            "not both",
        ),
        ({"document": "Text.", "question": "q", "weights": [1, -1, 0]}, 400, "weights"),
        ({"document": "Text.", "question": "q", "weights": [1, 1]}, 400, "weights"),
        ({"document": "Text.", "question": "q", "top_k": 0}, 400, "top_k"),
        ({"document": "Text.", "question": "q", "surprise": 1}, 400, "surprise"),
        ({"question": "q"}, 400, "document"),
        ({"document": "Te\x00xt.", "question": "q"}, 400, "NUL"),
        ('{"document": "broken json', 400, ""),
    ]
    for body, status, needle in cases:
        response = post(body)
        assert response.status_code == status, (body, response.text)
        assert needle in error_message(response), (body, response.text)
    # The retriever may be named by its folder name or its path.
    for name in ("tiny_m3", str(m3_folder)):
        ok = post({"document": "Text.", "question": "q", "retriever": name})
        assert ok.status_code == 200, ok.text


def test_hard_documents_are_served(post, spans_server: ServerProcess) -> None:
    words = "river city bridge garden window market "
    one_sentence = (words * (100_000 // len(words) + 1))[:100_000]
    response = post({"document": one_sentence, "question": "garden window", "top_k": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["document"]["num_sentences"] >= 100_000 // 600
    assert all(len(s["text"]) <= 3 * 600 for s in body["spans"])

    mixed = "The river flows. 河流很长。Der Fluss ist lang! Река длинная. 川は長い。"
    response = post({"document": mixed, "question": "河流", "span_sentences": [1], "top_k": 5})
    assert response.status_code == 200, response.text
    assert sorted(s["text"] for s in response.json()["spans"]) == sorted(
        ["The river flows.", "河流很长。", "Der Fluss ist lang!", "Река длинная.", "川は長い。"]
    )

    # A lone surrogate (valid JSON escape, not valid Unicode text) gets the same clear 400 as
    # in chat requests.
    raw = '{"document": "Broken \\ud800 text. Fine text.", "question": "text"}'
    response = post(raw)
    assert response.status_code == 400, response.text
    assert "lone surrogate (U+D800) at character 7" in response.text
    assert spans_server.alive()
    assert "Loaded endpoint plugin landmark" in spans_server.log_path.read_text()
    assert httpx.get(spans_server.base_url.removesuffix("/v1") + "/health").status_code == 200


def test_encoding_cache_metrics_and_deleting_a_file_drops_its_encodings(
    post, spans_server: ServerProcess
) -> None:
    """Chat by file_id plans with the retriever; /metrics counts the encoding cache; deleting
    the file removes its encoding from the cache."""
    import openai

    client = openai.OpenAI(base_url=spans_server.base_url, api_key="unused", max_retries=0)
    rng = random.Random(77)
    text = "\n\n".join(generate_text(rng, 4) for _ in range(40))
    before = spans_server.landmark_metrics()
    file_id = client.files.create(
        file=("long.txt", text.encode(), "text/plain"), purpose="user_data"
    ).id
    content = [
        {"type": "file", "file": {"file_id": file_id}},
        {"type": "text", "text": "Where is the river?"},
    ]
    model = client.models.list().data[0].id
    for _ in range(2):
        response = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": content}], max_tokens=2
        )
        assert response.model_extra["landmark"]["documents"][0]["selection"] == "retriever"
    after = spans_server.landmark_metrics()
    misses = "vllm:landmark_encoding_cache_misses_total"
    hits = "vllm:landmark_encoding_cache_hits_total"
    assert after[misses] == before[misses] + 1 and after[hits] == before[hits] + 1
    assert after["vllm:landmark_retrieval_seconds_count"] == (
        before["vllm:landmark_retrieval_seconds_count"] + 2
    )
    cached = after["vllm:landmark_encoding_cache_bytes"]
    assert cached > before["vllm:landmark_encoding_cache_bytes"]

    client.files.delete(file_id)
    assert spans_server.landmark_metrics()["vllm:landmark_encoding_cache_bytes"] < cached
    # Asked again by its text, the document is encoded again (a miss, not a hit).
    response = post({"document": text, "question": "Where is the river?"})
    assert response.json()["document"]["cached"] is False
