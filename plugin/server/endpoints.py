"""The plugin's HTTP routes as one vLLM endpoint plugin (entry point ``landmark``).

vLLM loads ``vllm.endpoint_plugins`` entry points in the API server only, and only when their
name is in ``VLLM_PLUGINS`` (``landmark serve`` sets ``VLLM_PLUGINS=landmark``; with ``vllm
serve``, set it yourself). Routes: ``POST /v1/landmark/spans`` (``spans_endpoint``) and the
Files API ``/v1/files`` (``files_api``), plus the chat body limit.
"""

from __future__ import annotations

import asyncio
from argparse import Namespace
from typing import Any

from fastapi import FastAPI

from . import files_api, spans_endpoint
from .metrics import metrics, watch_encoding_caches

__all__ = ["LandmarkEndpointPlugin"]


def _flags_config(args: Namespace | None) -> Any:
    """The LandmarkConfig of the server's flags, or None without --landmark."""
    if args is None or not getattr(args, "landmark", False):
        return None
    from ..patches.cli_flags import landmark_config_from_args

    return landmark_config_from_args(args)


class LandmarkEndpointPlugin:
    """The ``vllm.endpoint_plugins`` entry point (a zero-argument factory)."""

    name = "landmark"
    required_tasks = None

    def __init__(self) -> None:
        self.spans = spans_endpoint.SpansEndpointPlugin()

    def attach_router(self, app: FastAPI) -> None:
        self.spans.attach_router(app)
        files_api.attach(app, _flags_config(getattr(app.state, "args", None)))

    async def init_state(self, engine_client: Any, state: Any, args: Namespace) -> None:
        await self.spans.init_state(engine_client, state, args)
        config = spans_endpoint._config_of(engine_client, args)
        if config is None:
            return
        from vllm import envs

        api_keys = [key for key in (getattr(args, "api_key", None) or [envs.VLLM_API_KEY]) if key]
        service = await asyncio.to_thread(files_api.FilesService, config, api_keys)
        setattr(state, files_api.STATE_KEY, service)
        metrics()
        watch_encoding_caches()
