"""Reading benchmark items from a local folder and keeping a resumable prediction file.

Items come from ``DIR/<dataset>.jsonl`` (LongBench's ``data.zip`` unpacks to ``data/*.jsonl``)
or Parquet (``DIR/<dataset>.parquet`` or ``DIR/<dataset>/*.parquet``, needs ``pyarrow``). The
local suite (``eval.suite``) writes the same layout. Nothing is ever fetched from a hub.

Each item needs ``context``, ``input`` and ``answers``; ``_id`` identifies it (a content hash
stands in when it is missing). Malformed lines are reported as ``FILE:LINE: reason`` and
skipped, both in the data and in an existing prediction file.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

REQUIRED_FIELDS = ("context", "input", "answers")


class MissingDataError(Exception):
    """No data file for a data set; the message says where to put it."""


def warn(message: str) -> None:
    """One warning line on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def item_id(item: dict[str, Any]) -> str:
    """The item's ``_id``, or a stable hash of its input, context and answers."""
    given = item.get("_id")
    if isinstance(given, str) and given:
        return given
    blob = json.dumps(
        [item.get("input"), item.get("context"), item.get("answers")], ensure_ascii=False
    )
    return "sha1:" + hashlib.sha1(blob.encode("utf-8")).hexdigest()


def data_file_candidates(data_dir: Path, dataset: str) -> list[Path]:
    """Paths that may hold a data set, in the order they are tried."""
    return [
        data_dir / f"{dataset}.jsonl",
        data_dir / "data" / f"{dataset}.jsonl",
        data_dir / f"{dataset}.parquet",
        data_dir / dataset,  # a folder of parquet shards (Hugging Face layout)
    ]


def find_data_file(data_dir: Path | str, dataset: str) -> Path:
    """The file (or parquet folder) holding a data set, or MissingDataError saying where."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise MissingDataError(
            f"data folder {folder} does not exist. Put LongBench's data there: unzip data.zip "
            f"(from the THUDM/LongBench data release) so that {folder}/<dataset>.jsonl exist, "
            "or generate the local suite with `python -m eval.suite.generate --out DIR`."
        )
    for path in data_file_candidates(folder, dataset):
        if path.is_file() or (path.is_dir() and any(path.glob("*.parquet"))):
            return path
    raise MissingDataError(
        f"no data for {dataset!r} in {folder}: expected {folder}/{dataset}.jsonl (LongBench's "
        f"data.zip unpacks to data/{dataset}.jsonl), {folder}/{dataset}.parquet or "
        f"{folder}/{dataset}/*.parquet. Copy the files there; nothing is downloaded."
    )


def _check_item(obj: Any) -> str | None:
    """Why a decoded line is not a usable item, or None."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    missing = [name for name in REQUIRED_FIELDS if name not in obj]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    if not isinstance(obj["context"], str) or not isinstance(obj["input"], str):
        return '"context" and "input" must be strings'
    answers = obj["answers"]
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        return '"answers" must be a list of strings'
    return None


def jsonl_lines(
    path: Path, *, errors: str = "replace"
) -> Iterator[tuple[int, Any, json.JSONDecodeError | None]]:
    """``(line number, object, None)`` or ``(line number, None, the JSON error)`` per non-blank
    line of a jsonl file; ``errors`` is how undecodable UTF-8 is handled (``open``'s argument).
    """
    with path.open(encoding="utf-8", errors=errors) as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield lineno, None, exc
                continue
            yield lineno, obj, None


def read_jsonl_items(path: Path) -> list[dict[str, Any]]:
    """Valid items of a jsonl file; malformed lines are reported (FILE:LINE) and skipped."""
    items: list[dict[str, Any]] = []
    for lineno, obj, bad_json in jsonl_lines(path):
        if bad_json is not None:
            where = f"{path}:{lineno}"
            warn(f"{where}: invalid JSON ({bad_json.msg}, column {bad_json.colno}); skipped")
            continue
        problem = _check_item(obj)
        if problem:
            warn(f"{path}:{lineno}: {problem}; skipped")
            continue
        items.append(obj)
    return items


def read_parquet_items(path: Path) -> list[dict[str, Any]]:
    """Valid items of a parquet file or a folder of parquet shards (sorted by name)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MissingDataError(
            f"{path} is Parquet, which needs pyarrow (`pip install pyarrow`), or convert it to "
            "jsonl"
        ) from exc
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    items: list[dict[str, Any]] = []
    for file in files:
        for row, obj in enumerate(pq.read_table(file).to_pylist(), start=1):
            problem = _check_item(obj)
            if problem:
                warn(f"{file}:row {row}: {problem}; skipped")
                continue
            items.append(obj)
    return items


def load_items(data_dir: Path | str, dataset: str) -> list[dict[str, Any]]:
    """All valid items of a data set from the local folder."""
    path = find_data_file(data_dir, dataset)
    if path.suffix == ".jsonl":
        return read_jsonl_items(path)
    return read_parquet_items(path)


class PredictionFile:
    """An append-only ``<dataset>.jsonl`` of predictions that a rerun continues.

    ``done_ids`` reads what is there (malformed lines reported and ignored, so their items are
    predicted again); ``append`` writes one line and flushes, so a crash loses at most the
    line being written. Thread-safe.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def records(self) -> Iterable[dict[str, Any]]:
        """The valid JSON object lines already in the file."""
        if not self.path.exists():
            return
        for lineno, obj, bad_json in jsonl_lines(self.path):
            if bad_json is not None:
                warn(f"{self.path}:{lineno}: invalid JSON ({bad_json.msg}); ignored, will redo")
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("_id"), str):
                warn(f"{self.path}:{lineno}: no _id; ignored")
                continue
            yield obj

    def done_ids(self, *, redo_errors: bool = False) -> set[str]:
        """Ids already predicted (those recorded with an ``error`` too unless redo_errors)."""
        return {rec["_id"] for rec in self.records() if not (redo_errors and rec.get("error"))}

    def drop_errors(self) -> int:
        """Rewrite the file without the records that carry an ``error``; return how many."""
        if not self.path.exists():
            return 0
        kept, dropped = [], 0
        for rec in self.records():
            if rec.get("error"):
                dropped += 1
            else:
                kept.append(json.dumps(rec, ensure_ascii=False) + "\n")
        if dropped:
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            tmp.write_text("".join(kept), encoding="utf-8")
            tmp.replace(self.path)
        return dropped

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as a line (repairing a missing final newline first)."""
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            needs_newline = False
            if self.path.exists() and self.path.stat().st_size > 0:
                with self.path.open("rb") as handle:
                    handle.seek(-1, 2)
                    needs_newline = handle.read(1) != b"\n"
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(("\n" if needs_newline else "") + line)
                handle.flush()
