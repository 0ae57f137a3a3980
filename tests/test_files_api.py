"""The Files API (/v1/files), chat by file_id, key isolation, persistence and /metrics, through a
real server started with two API keys and an on-disk file store, driven by the openai SDK."""

from __future__ import annotations

import json
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from vllm_landmark.testing.server_process import ServerProcess

pytestmark = pytest.mark.server

KEY_A = "key-a-secret"
KEY_B = "key-b-secret"
MAX_FILE_BYTES = 40_000
STORE_BYTES = 100_000


def _text(num_words: int, seed: int) -> str:
    rng = random.Random(seed)
    words = ["river", "engine", "snow", "plough", "badger", "north", "line", "winter", "report"]
    return " ".join(rng.choice(words) for _ in range(num_words)) + "."


def _server(model: Path, store: Path, log_dir: Path) -> ServerProcess:
    return ServerProcess(
        model=model,
        args=[
            "--max-model-len",
            "512",
            "--enforce-eager",
            "--api-key",
            KEY_A,
            KEY_B,
            "--landmark-file-store",
            str(store),
            "--landmark-max-file-bytes",
            str(MAX_FILE_BYTES),
            "--landmark-file-store-bytes",
            str(STORE_BYTES),
        ],
        log_dir=log_dir,
    )


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("file-store")


@pytest.fixture(scope="module")
def files_server(
    tiny_model: Path, store_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with _server(tiny_model, store_dir, tmp_path_factory.mktemp("files-server")) as server:
        yield server


def _client(server: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=120)


def _ask_with(client: openai.OpenAI, part: dict[str, Any]) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=[
            {
                "role": "user",
                "content": [part, {"type": "text", "text": "Question: what is this about?"}],
            }
        ],
        max_tokens=4,
        temperature=0,
    )


def _ask(client: openai.OpenAI, file_id: str) -> openai.types.chat.ChatCompletion:
    return _ask_with(client, {"type": "file", "file": {"file_id": file_id}})


def _upload(client: openai.OpenAI, text: str, name: str = "report.txt") -> str:
    created = client.files.create(file=(name, text.encode(), "text/plain"), purpose="user_data")
    assert created.id.startswith("file-") and "/" not in created.id
    assert created.bytes == len(text.encode()) and created.filename == name
    return created.id


def test_sdk_upload_chat_twice_list_delete(files_server: ServerProcess) -> None:
    client = _client(files_server, KEY_A)
    before = files_server.landmark_metrics()
    text = _text(600, seed=3)
    file_id = _upload(client, text)

    first, second = _ask(client, file_id), _ask(client, file_id)
    assert first.choices[0].message.content == second.choices[0].message.content
    block = first.model_extra["landmark"]["documents"][0]
    assert block["raw_tokens"] > 0 and block["injected_tokens"] > 0

    assert file_id in [f.id for f in client.files.list()]
    assert client.files.retrieve(file_id).purpose == "user_data"
    assert client.files.content(file_id).text == text

    after = files_server.landmark_metrics()
    assert after["vllm:landmark_documents_total"] == before["vllm:landmark_documents_total"] + 2
    raw = "vllm:landmark_document_raw_tokens_total"
    assert after[raw] == before[raw] + 2 * block["raw_tokens"]
    injected = "vllm:landmark_document_injected_tokens_total"
    assert after[injected] == before[injected] + 2 * block["injected_tokens"]
    assert (
        after["vllm:landmark_plan_seconds_count"] == before["vllm:landmark_plan_seconds_count"] + 2
    )
    assert after["vllm:landmark_file_store_files"] == before["vllm:landmark_file_store_files"] + 1
    assert after["vllm:landmark_file_store_bytes"] >= len(text.encode())
    assert "vllm:landmark_document_factor_bucket{le=1.0}" in after

    deleted = client.files.delete(file_id)
    assert deleted.deleted and deleted.id == file_id
    assert file_id not in [f.id for f in client.files.list()]
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)
    with pytest.raises(openai.BadRequestError, match="no file with id"):
        _ask(client, file_id)
    refused = "vllm:landmark_requests_refused_total{reason=file_not_found}"
    assert files_server.landmark_metrics()[refused] == after[refused] + 1


def test_a_key_cannot_read_list_or_use_another_keys_file(files_server: ServerProcess) -> None:
    alice, bob = _client(files_server, KEY_A), _client(files_server, KEY_B)
    text = _text(200, seed=4)
    file_id = _upload(alice, text)
    assert file_id not in [f.id for f in bob.files.list()]
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(file_id)
    with pytest.raises(openai.NotFoundError):
        bob.files.content(file_id)
    with pytest.raises(openai.NotFoundError):
        bob.files.delete(file_id)
    with pytest.raises(openai.BadRequestError, match="no file with id"):
        _ask(bob, file_id)
    with pytest.raises(openai.AuthenticationError):
        _client(files_server, "wrong-key").files.list()
    # Bob's tries left Alice's file as uploaded: she reads it back, and a chat naming it is
    # answered exactly as one that sends the same text inline.
    assert alice.files.content(file_id).text == text
    by_id = _ask(alice, file_id)
    inline = _ask_with(alice, {"type": "document", "document": {"text": text}})
    assert by_id.choices[0].message.content == inline.choices[0].message.content
    assert by_id.usage.prompt_tokens == inline.usage.prompt_tokens
    assert by_id.model_extra["landmark"] == inline.model_extra["landmark"]
    alice.files.delete(file_id)


def test_uploads_are_checked_and_bounded(files_server: ServerProcess) -> None:
    client = _client(files_server, KEY_A)
    before = files_server.landmark_metrics()
    with pytest.raises(openai.APIStatusError) as info:
        client.files.create(file=("a.pdf", b"%PDF-1.4", "application/pdf"), purpose="user_data")
    assert info.value.status_code == 415
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("a.txt", b"hello", "text/plain"), purpose="fine-tune")
    with pytest.raises(openai.APIStatusError) as info:
        client.files.create(file=("a.txt", b"\xff\xfe bytes", "text/plain"), purpose="user_data")
    assert info.value.status_code == 415
    with pytest.raises(openai.APIStatusError, match="larger than") as info:
        client.files.create(file=("big.txt", b"x" * 200_000, "text/plain"), purpose="user_data")
    assert info.value.status_code == 413
    # The store holds 100,000 bytes: the third 39,000-byte file does not fit (no eviction).
    ids = [_upload(client, "word " * 7800, f"f{i}.txt") for i in range(2)]
    with pytest.raises(openai.APIStatusError, match="file store is full") as info:
        _upload(client, "word " * 7800)
    assert info.value.status_code == 413
    after = files_server.landmark_metrics()
    for reason, count in [("unsupported_media_type", 2), ("too_large", 1), ("store_full", 1)]:
        key = f"vllm:landmark_requests_refused_total{{reason={reason}}}"
        assert after[key] == before[key] + count, reason
    for file_id in ids:
        client.files.delete(file_id)


def _raw_post(
    server: ServerProcess, path: str, headers: dict[str, str], body: bytes
) -> socket.socket:
    """A socket that has sent a request head and the start of its body (and nothing more)."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY_A}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode() + body)
    return sock


def test_an_oversized_chat_body_is_refused_before_it_is_read(files_server: ServerProcess) -> None:
    limit = MAX_FILE_BYTES * 4 // 3 + (1 << 20)
    headers = {"Content-Type": "application/json", "Content-Length": str(limit + 1)}
    # 1 KiB of a body declared over the limit: the 413 comes without the rest being sent.
    with _raw_post(files_server, "/v1/chat/completions", headers, b"x" * 1024) as sock:
        sock.settimeout(30)
        answer = b""
        while b"larger than" not in answer:  # head and body may come in separate reads
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413") and b"larger than" in answer, answer


def test_a_slow_upload_does_not_block_others(files_server: ServerProcess) -> None:
    """A client sends part of an upload and stalls: others are served while it is still open
    and unanswered, and it is stored once the rest of its body arrives."""
    boundary = "slowboundary"
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="s.txt"\r\n'
        "Content-Type: text/plain\r\n\r\nslow text"
    ).encode()
    rest = f"\r\n--{boundary}--\r\n".encode()
    headers = {
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(len(part) + len(rest)),
        "Connection": "close",
    }
    client = _client(files_server, KEY_A)
    with _raw_post(files_server, "/v1/files", headers, part) as sock:
        file_id = _upload(client, "a quick upload while another one stalls")
        assert file_id in [f.id for f in client.files.list()]
        assert _ask(client, file_id).model_extra["landmark"]["documents"][0]["raw_tokens"] > 0
        client.files.delete(file_id)
        # All of that was answered while the stalled upload had no answer yet (nor was closed).
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1, socket.MSG_PEEK)
        sock.settimeout(120)
        sock.sendall(rest)
        answer = b""
        while chunk := sock.recv(4096):  # the server closes the connection after its answer
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer
    stored = json.loads(body)
    assert (stored["filename"], stored["bytes"]) == ("s.txt", len(b"slow text"))
    assert client.files.content(stored["id"]).text == "slow text"
    client.files.delete(stored["id"])


def test_files_survive_a_restart(
    files_server: ServerProcess, tiny_model: Path, store_dir: Path, tmp_path: Path
) -> None:
    client = _client(files_server, KEY_A)
    text = "Stored once, read after a restart.\n" * 20
    file_id = _upload(client, text, "kept.md")
    files_server.stop()
    assert sorted(p.name for p in store_dir.iterdir() if p.stem == file_id) == [
        f"{file_id}.json",
        f"{file_id}.txt",
    ]
    with _server(tiny_model, store_dir, tmp_path) as restarted:
        alice, bob = _client(restarted, KEY_A), _client(restarted, KEY_B)
        assert [f.filename for f in alice.files.list() if f.id == file_id] == ["kept.md"]
        assert alice.files.content(file_id).text == text
        assert file_id not in [f.id for f in bob.files.list()]
        assert _ask(alice, file_id).model_extra["landmark"]["documents"][0]["raw_tokens"] > 0
        alice.files.delete(file_id)
    assert not any(p.stem == file_id for p in store_dir.iterdir())
