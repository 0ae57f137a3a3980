"""Reading documents out of OpenAI chat content parts.

Accepted, in a message's content list:
- `{"type": "file", "file": {"file_data": "data:text/plain;base64,...", "filename": ...}}`
  (OpenAI's file part; media type text/plain or text/markdown, UTF-8 text);
- `{"type": "document", "document": {"text": "...", "factor": 4}}` (plain text, no base64;
  `factor` optional, forces the scaling factor of this document).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from ..config import LandmarkConfig
from ..document.items import DocumentError, check_document_text, normalize_document

TEXT_MEDIA_TYPES = ("text/plain", "text/markdown", "text/x-markdown")
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".text")
DOCUMENT_PART_TYPES = ("file", "document")


def _parse_data_url(url: str) -> tuple[str, dict[str, str], str]:
    """(media type, parameters, payload) of a base64 data URL."""
    header, sep, payload = url[len("data:") :].partition(",")
    if not sep:
        raise DocumentError("file_data is a data URL without a ',' before its payload")
    fields = [f.strip() for f in header.split(";") if f.strip()]
    if "base64" not in [f.lower() for f in fields]:
        raise DocumentError("file_data data URLs must be base64-encoded (';base64,')")
    media_type = fields[0].lower() if fields and "=" not in fields[0] else ""
    params = dict(f.split("=", 1) for f in fields if "=" in f)
    return media_type, {k.lower(): v.lower() for k, v in params.items()}, payload


def decode_file_part(file: Any, config: LandmarkConfig) -> str:
    """The UTF-8 text of an OpenAI `file` part, or a DocumentError saying what is wrong."""
    if not isinstance(file, dict):
        raise DocumentError("a 'file' part needs a 'file' object with 'file_data'")
    if file.get("file_id") is not None and file.get("file_data") is None:
        raise DocumentError(
            "file_id is not supported without the Files API (`landmark serve` enables it; with "
            "`vllm serve`, set VLLM_PLUGINS=landmark); or send the text in file_data"
        )
    data = file.get("file_data")
    if not isinstance(data, str) or not data:
        raise DocumentError("a 'file' part needs 'file_data' (a base64 data URL of text)")
    filename = str(file.get("filename") or "")
    if data.startswith("data:"):
        media_type, params, payload = _parse_data_url(data)
        if media_type not in TEXT_MEDIA_TYPES:
            raise DocumentError(
                f"unsupported media type {media_type or '(none)'!r} for a document; "
                f"send one of {', '.join(TEXT_MEDIA_TYPES[:2])}"
            )
        charset = params.get("charset", "utf-8")
        if charset not in ("utf-8", "utf8", "us-ascii"):
            raise DocumentError(f"unsupported charset {charset!r}; documents must be UTF-8")
    elif filename.lower().endswith(TEXT_SUFFIXES):
        payload = data
    else:
        raise DocumentError(
            "file_data must be a data URL such as 'data:text/plain;base64,...' (or plain base64 "
            f"with a filename ending in one of {', '.join(TEXT_SUFFIXES)})"
        )
    max_payload = (config.max_document_chars * 4 + 2) // 3 * 4 + 4
    if len(payload) > max_payload:
        raise DocumentError(
            f"file_data is larger than the document limit of {config.max_document_chars} "
            "characters (--landmark-max-document-chars)"
        )
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DocumentError(f"file_data is not valid base64: {exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(
            f"file_data is not UTF-8 text (byte {exc.start} cannot be decoded); binary files "
            "are not supported"
        ) from exc
    return check_document_text(text, config)


def document_from_part(part: dict[str, Any], config: LandmarkConfig) -> dict[str, Any]:
    """A normalised document item from a `file` or `document` content part."""
    if part.get("type") == "file":
        return {"text": decode_file_part(part.get("file"), config)}
    body = part.get("document")
    if not isinstance(body, dict):
        raise DocumentError("a 'document' part needs a 'document' object with 'text'")
    return normalize_document(body, config)
