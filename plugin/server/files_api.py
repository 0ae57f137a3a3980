"""A subset of OpenAI's Files API on the serving process, for documents asked about many times.

Routes (OpenAI shapes, so the ``openai`` SDK works unchanged)::

    POST   /v1/files                 multipart: file (UTF-8 text), purpose user_data|assistants
    GET    /v1/files                 the caller's files (limit, after, order)
    GET    /v1/files/{id}            one file object
    GET    /v1/files/{id}/content    the text
    DELETE /v1/files/{id}            {"id", "object": "file", "deleted": true}

A chat ``file`` part ``{"type": "file", "file": {"file_id": "file-..."}}`` reads the stored
text (``resolve_file_ids``). With ``--api-key``, each key sees only its own files: another
key's file id is "not found" everywhere. Uploads are read with a byte limit
(``--landmark-max-file-bytes``): a larger body is refused with a 413 before it is read, and
reading one upload never blocks other requests (it is streamed on the event loop). The body
limits are :mod:`.body_limit`'s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ..config import LandmarkConfig
from ..document.items import DocumentError, check_document_text
from .body_limit import BodyLimitMiddleware, BodyTooLarge, body_limit, read_limited
from .chat_documents import replace_parts
from .errors import openai_error
from .file_parts import TEXT_MEDIA_TYPES, TEXT_SUFFIXES
from .file_store import FileNotFound, FileStore, StoredFile, StoreFull, owner_of
from .metrics import metrics, watch_file_store

__all__ = [
    "FILES_ROUTE",
    "STATE_KEY",
    "BodyLimitMiddleware",
    "FilesService",
    "has_file_ids",
    "resolve_file_ids",
    "router",
]

logger = logging.getLogger(__name__)

FILES_ROUTE = "/v1/files"
#: Attribute of the app state that holds the FilesService.
STATE_KEY = "landmark_files"
PURPOSES = ("user_data", "assistants")
#: Room for the multipart envelope (boundaries, part headers, the purpose field).
MULTIPART_OVERHEAD = 64 << 10
#: An upload must arrive within this many seconds.
UPLOAD_TIMEOUT_S = 300.0


class FilesService:
    """The store of one server and how it tells callers apart."""

    def __init__(self, config: LandmarkConfig, api_keys: list[str]) -> None:
        self.config = config
        self.keys_required = bool(api_keys)
        self.store = FileStore(config.file_store_bytes, config.file_store)
        watch_file_store(self.store)

    def owner(self, request: Request) -> str:
        """The caller's owner id: its API key's hash when the server has keys, else ""."""
        if not self.keys_required:
            return ""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return owner_of(token if scheme.lower() == "bearer" else None)

    def forget_caches(self, text: str) -> None:
        """Drop a deleted file's text from the caches: its LLM tokens and retriever encodings."""
        from ..document.tokens import forget_document

        forget_document(text)
        from ..retrieval.cache import content_hash
        from ..retrieval.service import loaded_span_rankers

        digest = content_hash(text)
        dropped = 0
        for ranker in loaded_span_rankers():  # a retriever never loaded holds nothing to drop
            dropped += ranker.cache.discard(
                lambda key: isinstance(key, tuple) and key[:1] == (digest,)
            )
        if dropped:
            logger.info("landmark files: dropped %d cached encodings of a deleted file", dropped)


def _service(request: Request) -> FilesService | None:
    return getattr(request.app.state, STATE_KEY, None)


def _not_initialised() -> JSONResponse:
    return openai_error(HTTPStatus.NOT_FOUND, "the Files API is not enabled on this server")


def _not_found(file_id: str) -> JSONResponse:
    return openai_error(HTTPStatus.NOT_FOUND, f"no file with id {file_id!r:.80}", "file_id")


async def _parse_upload(request: Request, body: bytes) -> tuple[str, bytes, str, str]:
    """(filename, content, content type, purpose) of a multipart upload; ValueError if bad."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartParser

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ValueError("an upload is multipart/form-data with 'file' and 'purpose' fields")
    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=8).parse()
    except Exception as exc:  # noqa: BLE001 - starlette raises several types for bad bodies
        raise ValueError(f"the multipart body cannot be read: {exc}") from exc
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, UploadFile):
        raise ValueError("the upload has no 'file' part")
    if not isinstance(purpose, str) or not purpose:
        raise ValueError("the upload has no 'purpose' field")
    content = await upload.read()
    await form.close()
    return upload.filename or "upload.txt", content, upload.content_type or "", purpose


def _is_text(filename: str, content_type: str) -> bool:
    media_type = content_type.split(";")[0].strip().lower()
    if media_type in TEXT_MEDIA_TYPES:
        return True
    generic = media_type in ("", "application/octet-stream")
    return generic and filename.lower().endswith(TEXT_SUFFIXES)


# ----------------------------------------------------------------------------------------------
# Routes
# ----------------------------------------------------------------------------------------------

router = APIRouter()


@router.post(FILES_ROUTE)
async def create_file(raw_request: Request) -> Response:
    """Upload a UTF-8 text file."""
    service = _service(raw_request)
    if service is None:
        return _not_initialised()
    meter = metrics()
    limit = service.config.max_file_bytes
    try:
        body = await asyncio.wait_for(
            read_limited(raw_request, limit + MULTIPART_OVERHEAD), UPLOAD_TIMEOUT_S
        )
        filename, content, content_type, purpose = await _parse_upload(raw_request, body)
    except BodyTooLarge:
        meter.refuse("too_large")
        return openai_error(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"the upload is larger than {limit} bytes (--landmark-max-file-bytes)",
            "file",
        )
    except TimeoutError:
        meter.refuse("bad_upload")
        return openai_error(
            HTTPStatus.REQUEST_TIMEOUT, f"the upload took over {UPLOAD_TIMEOUT_S} s"
        )
    except ValueError as exc:
        meter.refuse("bad_upload")
        return openai_error(HTTPStatus.BAD_REQUEST, str(exc))
    if len(content) > limit:
        meter.refuse("too_large")
        return openai_error(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"the file has {len(content)} bytes, over {limit} (--landmark-max-file-bytes)",
            "file",
        )
    if purpose not in PURPOSES:
        meter.refuse("bad_upload")
        return openai_error(
            HTTPStatus.BAD_REQUEST,
            f"purpose {purpose!r:.40} is not supported; use one of {', '.join(PURPOSES)}",
            "purpose",
        )
    if not _is_text(filename, content_type):
        meter.refuse("unsupported_media_type")
        return openai_error(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"only text files can be documents ({', '.join(TEXT_MEDIA_TYPES[:2])}, or a name "
            f"ending in {', '.join(TEXT_SUFFIXES)}); got {content_type or '(none)'!r:.60}",
            "file",
        )
    try:
        text = check_document_text(content.decode("utf-8"), service.config)
    except UnicodeDecodeError as exc:
        meter.refuse("unsupported_media_type")
        return openai_error(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"the file is not UTF-8 text (byte {exc.start} cannot be decoded)",
            "file",
        )
    except DocumentError as exc:
        meter.refuse("invalid_document")
        return openai_error(HTTPStatus.BAD_REQUEST, str(exc), "file")
    try:
        stored = await asyncio.to_thread(
            service.store.add, service.owner(raw_request), text, filename[:255], purpose
        )
    except StoreFull as exc:
        meter.refuse("store_full")
        return openai_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(exc), "file")
    return JSONResponse(stored.openai_object())


@router.get(FILES_ROUTE)
async def list_files(
    raw_request: Request, limit: int = 10000, after: str | None = None, order: str = "desc"
) -> Response:
    """The caller's files (newest first unless order=asc)."""
    service = _service(raw_request)
    if service is None:
        return _not_initialised()
    files: list[StoredFile] = service.store.list(service.owner(raw_request))
    if order == "desc":
        files.reverse()
    if after is not None:
        ids = [f.id for f in files]
        files = files[ids.index(after) + 1 :] if after in ids else []
    page = files[: max(1, min(limit, 10000))]
    data = [f.openai_object() for f in page]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(files) > len(page),
        }
    )


def _owned_file(file_id: str, raw_request: Request) -> tuple[StoredFile, str] | JSONResponse:
    """The caller's stored file and its text, or the error response to send instead."""
    service = _service(raw_request)
    if service is None:
        return _not_initialised()
    try:
        return service.store.get(service.owner(raw_request), file_id)
    except FileNotFound:
        return _not_found(file_id)


@router.get(FILES_ROUTE + "/{file_id}")
async def retrieve_file(file_id: str, raw_request: Request) -> Response:
    found = _owned_file(file_id, raw_request)
    if isinstance(found, JSONResponse):
        return found
    return JSONResponse(found[0].openai_object())


@router.get(FILES_ROUTE + "/{file_id}/content")
async def file_content(file_id: str, raw_request: Request) -> Response:
    found = _owned_file(file_id, raw_request)
    if isinstance(found, JSONResponse):
        return found
    text = found[1]
    return Response(text.encode("utf-8", "surrogatepass"), media_type="text/plain; charset=utf-8")


@router.delete(FILES_ROUTE + "/{file_id}")
async def delete_file(file_id: str, raw_request: Request) -> Response:
    service = _service(raw_request)
    if service is None:
        return _not_initialised()
    try:
        _stored, text = await asyncio.to_thread(
            service.store.delete, service.owner(raw_request), file_id
        )
    except FileNotFound:
        return _not_found(file_id)
    await asyncio.to_thread(service.forget_caches, text)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


# ----------------------------------------------------------------------------------------------
# Chat: file_id parts
# ----------------------------------------------------------------------------------------------


def _file_id_of(part: Any) -> str | None:
    if not isinstance(part, dict) or part.get("type") != "file":
        return None
    file = part.get("file")
    if not isinstance(file, dict) or file.get("file_data") is not None:
        return None
    file_id = file.get("file_id")
    return file_id if isinstance(file_id, str) else None


def has_file_ids(messages: list[Any]) -> bool:
    """Whether a chat request has `file` parts that name a stored file."""
    return any(
        _file_id_of(part) is not None
        for message in messages
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for part in message["content"]
    )


def resolve_file_ids(messages: list[Any], raw_request: Request) -> list[Any]:
    """Messages whose `file_id` parts are `document` parts holding the caller's stored text.

    DocumentError when the server has no Files API or the caller has no such file.
    """
    service = _service(raw_request)
    if service is None:
        raise DocumentError(
            "file_id needs the Files API, which is not enabled on this server (`landmark "
            "serve` enables it; with `vllm serve`, set VLLM_PLUGINS=landmark)"
        )
    owner = service.owner(raw_request)

    def resolve(part: Any) -> Any:
        file_id = _file_id_of(part)
        if file_id is None:
            return part
        try:
            _stored, text = service.store.get(owner, file_id)
        except FileNotFound:
            raise DocumentError(f"no file with id {file_id!r:.80}") from None
        return {"type": "document", "document": {"text": text}}

    return replace_parts(messages, resolve)


def attach(app: FastAPI, config: LandmarkConfig | None) -> None:
    """Add the routes, and the body limit when the server has --landmark."""
    app.include_router(router)
    if config is not None:
        app.add_middleware(BodyLimitMiddleware, max_bytes=body_limit(config))
