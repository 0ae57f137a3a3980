"""Request bodies within a byte limit: refused or cut off before they are read whole.

Chat and completion requests may carry a whole file as base64 (``file_data``), so with
``--landmark`` their bodies are limited by :class:`BodyLimitMiddleware` (``body_limit``: 4/3 of
``--landmark-max-file-bytes`` plus 1 MiB of JSON); the Files API reads an upload with
:func:`read_limited`, which stops as soon as the body is over its own limit.
"""

from __future__ import annotations

from http import HTTPStatus

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import LandmarkConfig
from .errors import openai_error
from .metrics import metrics

#: Request bodies checked by BodyLimitMiddleware (chat requests may carry file_data).
LIMITED_PATHS = ("/v1/chat/completions", "/v1/completions")


class BodyTooLarge(Exception):
    """A request body is over its byte limit (declared or counted)."""


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, or BodyTooLarge as soon as it is over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


class BodyLimitMiddleware:
    """Refuse chat and completion bodies over ``max_bytes`` before reading them.

    A declared Content-Length over the limit gets a 413 at once; a chunked body is counted as
    it arrives and the request is treated as disconnected once it goes over.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith(LIMITED_PATHS):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > self.max_bytes:
            metrics().refuse("too_large")
            response = openai_error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the request body is larger than {self.max_bytes} bytes "
                "(set by --landmark-max-file-bytes)",
            )
            await response(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    metrics().refuse("too_large")
                    return {"type": "http.disconnect"}
            return message

        await self.app(scope, limited_receive, send)


def body_limit(config: LandmarkConfig) -> int:
    """The largest chat body: a base64 file of max_file_bytes plus 1 MiB of JSON."""
    return config.max_file_bytes * 4 // 3 + (1 << 20)
