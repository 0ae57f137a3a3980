"""eval.longbench.pred: resumable runs, bad data lines, endpoint failures, a real server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from eval.longbench import pred
from eval.longbench.backends import Generation, GenerationRequest, ItemError
from eval.longbench.data import MissingDataError, PredictionFile, load_items
from vllm_landmark.testing.documents import WORDS

PROMPTS = {"qa": "Read.\n\n{context}\n\nQuestion: {input}\nAnswer:"}


def write_dataset(folder: Path, name: str, items: list[dict[str, Any]], extra: str = "") -> Path:
    """DATA/<name>.jsonl plus DATA/config/ with a one-line prompt."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(item) for item in items]
    (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n" + extra)
    config = folder / "config"
    config.mkdir(exist_ok=True)
    (config / "dataset2prompt.json").write_text(json.dumps({name: PROMPTS["qa"]}))
    (config / "dataset2maxlen.json").write_text(json.dumps({name: 4}))
    return folder


def qa_items(n: int, words: int = 30) -> list[dict[str, Any]]:
    base = WORDS[:14]  # the keeper of the north lighthouse wrote ... a storm came
    return [
        {
            "context": " ".join(base[(i + j) % len(base)] for j in range(words)),
            "input": f"what did the keeper write {i}?",
            "answers": ["a storm"],
            "all_classes": None,
            "length": words,
            "_id": f"qa-{i}",
        }
        for i in range(n)
    ]


# --------------------------------------------------------------------------- data files


def test_malformed_lines_are_reported_with_file_and_line(tmp_path: Path, capsys) -> None:
    extra = '{"broken json\n["not", "an object"]\n{"input": "x", "answers": []}\n\n'
    data = write_dataset(tmp_path / "data", "qa", qa_items(2), extra)
    items = load_items(data, "qa")
    assert [i["_id"] for i in items] == ["qa-0", "qa-1"]
    err = capsys.readouterr().err
    path = data / "qa.jsonl"
    assert f"{path}:3: invalid JSON" in err
    assert f"{path}:4: expected a JSON object" in err
    assert f"{path}:5: missing field(s) context" in err


def test_missing_data_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match="data.zip"):
        load_items(tmp_path, "qasper")
    with pytest.raises(MissingDataError, match="does not exist"):
        load_items(tmp_path / "nowhere", "qasper")


class FakeBackend:
    """Counts requests; answers 'a storm', or raises on chosen calls."""

    def __init__(self, fail_on: set[int] | None = None) -> None:
        self.calls = 0
        self.fail_on = fail_on or set()
        self.lock = threading.Lock()

    def generate(self, request: GenerationRequest) -> Generation:
        with self.lock:
            self.calls += 1
            call = self.calls
        if call in self.fail_on:
            raise ItemError("HTTP 400: too long")
        return Generation(text="a storm", prompt_tokens=10, completion_tokens=2)


def test_resume_skips_done_items_and_repairs_a_cut_line(tmp_path: Path) -> None:
    items = qa_items(5)
    out = PredictionFile(tmp_path / "qa.jsonl")

    def build(item: dict) -> tuple[GenerationRequest, dict]:
        return GenerationRequest(max_tokens=4, prompt=item["input"]), {}

    first = FakeBackend()
    result = pred.predict_dataset(
        "qa", items[:3], out, build, first, mode="full", concurrency=2, progress=False
    )
    assert (result.written, result.skipped, first.calls) == (3, 0, 3)
    # A crash in the middle of a write leaves a cut line without a newline.
    with out.path.open("a") as handle:
        handle.write('{"pred": "half')
    second = FakeBackend()
    result = pred.predict_dataset(
        "qa", items, out, build, second, mode="full", concurrency=2, progress=False
    )
    assert (result.written, result.skipped, second.calls) == (2, 3, 2)
    assert sorted(r["_id"] for r in out.records()) == [f"qa-{i}" for i in range(5)]
    third = FakeBackend()
    result = pred.predict_dataset("qa", items, out, build, third, mode="full", progress=False)
    assert (result.written, result.skipped, third.calls) == (0, 5, 0)


def test_refused_items_are_recorded_and_can_be_retried(tmp_path: Path) -> None:
    items = qa_items(3)
    out = PredictionFile(tmp_path / "qa.jsonl")

    def build(item: dict) -> tuple[GenerationRequest, dict]:
        return GenerationRequest(max_tokens=4, prompt=item["input"]), {}

    result = pred.predict_dataset(
        "qa", items, out, build, FakeBackend(fail_on={2}), mode="full", progress=False
    )
    assert result.failed == 1
    errors = [r for r in out.records() if r.get("error")]
    assert len(errors) == 1 and errors[0]["pred"] == "" and "too long" in errors[0]["error"]
    retry = FakeBackend()
    pred.predict_dataset(
        "qa", items, out, build, retry, mode="full", redo_errors=True, progress=False
    )
    assert retry.calls == 1
    records = list(out.records())
    assert len(records) == 3 and not any(r.get("error") for r in records)


# --------------------------------------------------------------------------- HTTP endpoint


class FlakyOpenAI(BaseHTTPRequestHandler):
    """A minimal OpenAI-compatible server: answers until ``fail_after`` requests, then 500s."""

    fail_after = 10**9
    served = 0

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        model = {"id": "fake", "object": "model", "created": 0, "owned_by": "t"}
        self._send(200, {"object": "list", "data": [{**model, "max_model_len": 512}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        cls = type(self)
        cls.served += 1
        if cls.served > cls.fail_after:
            self._send(500, {"error": {"message": "engine died", "type": "InternalError"}})
            return
        self._send(
            200,
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "fake",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "a storm"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
            },
        )


@pytest.fixture
def flaky_server() -> Iterator[tuple[str, type[FlakyOpenAI]]]:
    handler = type("Handler", (FlakyOpenAI,), {"fail_after": 2, "served": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    server.shutdown()
    server.server_close()


def test_endpoint_failure_keeps_partial_results_and_resumes(
    tmp_path: Path, tiny_model: Path, flaky_server, capsys
) -> None:
    url, handler = flaky_server
    data = write_dataset(tmp_path / "data", "qa", qa_items(6))
    out = tmp_path / "pred"
    argv = [
        "--data-dir", str(data), "--base-url", url, "--tokenizer", str(tiny_model),
        "--out", str(out), "--concurrency", "1", "--max-retries", "0", "--no-progress",
    ]  # fmt: skip
    assert pred.main(argv) == 3
    err = capsys.readouterr().err
    assert "HTTP 500" in err and "engine died" in err
    assert "run the same command again" in err
    assert len((out / "qa.jsonl").read_text().splitlines()) == 2
    assert json.loads((out / "run.json").read_text())["runs"][0]["aborted"]

    handler.fail_after = 10**9  # the endpoint is fixed: the same command finishes the job
    assert pred.main(argv) == 0
    ids = [json.loads(line)["_id"] for line in (out / "qa.jsonl").read_text().splitlines()]
    assert sorted(ids) == [f"qa-{i}" for i in range(6)]
    assert handler.served == 3 + 4  # 2 answered + 1 failed, then only the 4 missing ones


def test_unreachable_endpoint_is_a_clear_error(tmp_path: Path, tiny_model: Path, capsys) -> None:
    from vllm_landmark.testing.server_process import free_port

    data = write_dataset(tmp_path / "data", "qa", qa_items(1))
    argv = [
        "--data-dir", str(data), "--base-url", f"http://127.0.0.1:{free_port()}/v1",
        "--tokenizer", str(tiny_model), "--out", str(tmp_path / "pred"), "--max-retries", "0",
    ]  # fmt: skip
    assert pred.main(argv) == 3
    assert "cannot reach" in capsys.readouterr().err


# --------------------------------------------------------------------------- real server


@pytest.mark.server
def test_pred_against_the_real_tiny_server(tmp_path: Path, tiny_server, tiny_model: Path) -> None:
    """Full and plugin modes end to end; at k=1 the plugin answers exactly like pasted text."""
    data = write_dataset(tmp_path / "data", "qa", qa_items(3, words=40))
    common = [
        "--data-dir", str(data), "--base-url", tiny_server.base_url, "--no-progress",
        "--concurrency", "3",
    ]  # fmt: skip
    assert pred.main([*common, "--out", str(tmp_path / "full"), "--mode", "full"]) == 0
    plugin_out = tmp_path / "plugin"
    assert (
        pred.main([*common, "--out", str(plugin_out), "--mode", "plugin", "--budget", "100"]) == 0
    )
    full = {r["_id"]: r for r in PredictionFile(tmp_path / "full" / "qa.jsonl").records()}
    plugin = {r["_id"]: r for r in PredictionFile(plugin_out / "qa.jsonl").records()}
    assert sorted(full) == sorted(plugin) == ["qa-0", "qa-1", "qa-2"]
    for key, record in plugin.items():
        assert record["factor"] == 1 and record["landmark"]["injected_document_tokens"] > 0
        assert record["pred"] == full[key]["pred"]
        assert record["prompt_tokens"] == full[key]["prompt_tokens"]
        assert not full[key]["truncated"]
    # A budget below the document's length compresses it (and is still served).
    squeezed = tmp_path / "squeezed"
    assert pred.main([*common, "--out", str(squeezed), "--mode", "plugin", "--budget", "8"]) == 0
    for record in PredictionFile(squeezed / "qa.jsonl").records():
        assert record["factor"] > 1
        block = record["landmark"]
        assert block["injected_document_tokens"] < block["raw_document_tokens"]
