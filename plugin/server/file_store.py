"""The Files API store: uploaded text files, per API key, bounded in bytes, optionally on disk.

Design (see README, "Files API"):
- Files are UTF-8 text (the only thing a document part can hold), kept in memory. The store
  holds at most ``max_bytes`` of text over all keys; an upload that does not fit is refused
  (``StoreFull``, a 413), never made room for by evicting someone's file: a file id a client
  holds stays valid until the client deletes it.
- Each file belongs to an owner: the SHA-256 of the API key it was uploaded with ("" on a
  server without ``--api-key``). Every lookup names the owner; another owner's file is "not
  found", so a key cannot learn that another key's file exists.
- Ids are ``file-`` + 24 random hex digits. With a folder, each file is two files in it,
  ``<id>.txt`` (the text) and ``<id>.json`` (metadata), written atomically; the folder is read
  back at start-up. An id is checked against its pattern before it names a path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["FileNotFound", "FileStore", "StoreFull", "StoredFile", "owner_of"]

logger = logging.getLogger(__name__)

ID_PATTERN = re.compile(r"^file-[0-9a-f]{24}$")


class FileNotFound(KeyError):
    """No file with this id for this owner."""


class StoreFull(RuntimeError):
    """The upload does not fit in the store's byte limit."""


def owner_of(api_key: str | None) -> str:
    """The owner id of an API key: its SHA-256 (the key itself is never stored)."""
    if not api_key:
        return ""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class StoredFile:
    """Metadata of one stored file (its text is kept beside it)."""

    id: str
    owner: str
    filename: str
    purpose: str
    bytes: int
    created_at: int

    def openai_object(self) -> dict[str, object]:
        """The OpenAI ``file`` object."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


class FileStore:
    """Thread-safe store of text files keyed by (owner, id)."""

    def __init__(self, max_bytes: int, directory: str | Path | None = None) -> None:
        self.max_bytes = int(max_bytes)
        self.directory = None if directory is None else Path(directory).expanduser()
        self._lock = threading.Lock()
        self._files: dict[str, tuple[StoredFile, str]] = {}
        self._bytes = 0
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._load()

    # -- reading ---------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)

    def get(self, owner: str, file_id: str) -> tuple[StoredFile, str]:
        """(metadata, text) of the owner's file, or FileNotFound."""
        with self._lock:
            entry = self._files.get(file_id)
        if entry is None or entry[0].owner != owner:
            raise FileNotFound(file_id)
        return entry

    def list(self, owner: str) -> list[StoredFile]:
        """The owner's files, oldest first."""
        with self._lock:
            files = [meta for meta, _text in self._files.values() if meta.owner == owner]
        return sorted(files, key=lambda f: (f.created_at, f.id))

    # -- writing ---------------------------------------------------------------------------

    def add(self, owner: str, text: str, filename: str, purpose: str) -> StoredFile:
        """Store a text; StoreFull when it does not fit."""
        size = len(text.encode("utf-8", "surrogatepass"))
        meta = StoredFile(
            id="file-" + secrets.token_hex(12),
            owner=owner,
            filename=filename,
            purpose=purpose,
            bytes=size,
            created_at=int(time.time()),
        )
        with self._lock:
            if self._bytes + size > self.max_bytes:
                raise StoreFull(
                    f"the file store is full ({self._bytes} of {self.max_bytes} bytes used, this "
                    f"file has {size}); delete files or raise --landmark-file-store-bytes"
                )
            self._files[meta.id] = (meta, text)
            self._bytes += size
        if self.directory is not None:
            try:
                self._write(meta, text)
            except OSError:
                self._forget(meta.id)
                raise
        return meta

    def delete(self, owner: str, file_id: str) -> tuple[StoredFile, str]:
        """Remove the owner's file; returns what was removed (FileNotFound if none)."""
        meta, text = self.get(owner, file_id)
        self._forget(file_id)
        if self.directory is not None:
            for suffix in (".json", ".txt"):
                (self.directory / f"{file_id}{suffix}").unlink(missing_ok=True)
        return meta, text

    def _forget(self, file_id: str) -> None:
        with self._lock:
            entry = self._files.pop(file_id, None)
            if entry is not None:
                self._bytes -= entry[0].bytes

    # -- disk ------------------------------------------------------------------------------

    def _write(self, meta: StoredFile, text: str) -> None:
        assert self.directory is not None and ID_PATTERN.match(meta.id)
        # Text first, metadata last: a file without metadata is ignored at load.
        for suffix, data in ((".txt", text), (".json", json.dumps(asdict(meta)))):
            path = self.directory / f"{meta.id}{suffix}"
            tmp = path.with_suffix(suffix + ".tmp")
            tmp.write_text(data, encoding="utf-8", errors="surrogatepass")
            os.replace(tmp, path)

    def _load(self) -> None:
        assert self.directory is not None
        for path in sorted(self.directory.glob("file-*.json")):
            file_id = path.stem
            if not ID_PATTERN.match(file_id):
                continue
            try:
                meta = StoredFile(**json.loads(path.read_text(encoding="utf-8")))
                text = (self.directory / f"{file_id}.txt").read_text(
                    encoding="utf-8", errors="surrogatepass"
                )
            except (OSError, ValueError, TypeError) as exc:
                logger.warning("landmark file store: skipping %s: %s", path.name, exc)
                continue
            if meta.id != file_id:
                logger.warning("landmark file store: skipping %s: id mismatch", path.name)
                continue
            self._files[file_id] = (meta, text)
            self._bytes += meta.bytes
        if self._files:
            logger.info(
                "landmark file store: %d files (%d bytes) loaded from %s",
                len(self._files),
                self._bytes,
                self.directory,
            )
