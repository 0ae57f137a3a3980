"""Error responses in OpenAI's (and vLLM's) JSON format, for the plugin's own routes."""

from __future__ import annotations

from http import HTTPStatus

from fastapi.responses import JSONResponse


def openai_error(status: HTTPStatus, message: str, param: str | None = None) -> JSONResponse:
    """``{"error": {"message", "type", "param", "code"}}`` with ``status`` as the HTTP status."""
    body = {
        "error": {
            "message": message,
            "type": status.phrase.replace(" ", "") + "Error",
            "param": param,
            "code": status.value,
        }
    }
    return JSONResponse(body, status_code=status.value)
