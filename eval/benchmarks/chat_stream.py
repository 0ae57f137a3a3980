"""One streaming chat request, timed: what the serving benchmarks measure per request."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StreamedChat:
    """Timings of one streamed answer, its usage chunk and the response's landmark block."""

    ttft_s: float  # first content token (the end, if none came)
    e2e_s: float
    usage: Any  # the server's usage (stream_options include_usage); None if it sent none
    landmark: dict[str, Any] | None

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Completion tokens after the first over the time after it (None when unmeasurable)."""
        tokens = self.usage.completion_tokens if self.usage else None
        after = self.e2e_s - self.ttft_s
        return (tokens - 1) / after if tokens and tokens > 1 and after > 0 else None


def stream_chat(client: Any, model: str, content: Any, max_tokens: int) -> StreamedChat:
    """Send one user message (greedy, ``ignore_eos``: exactly ``max_tokens`` come back) and
    time the stream with an ``openai`` client."""
    started = time.perf_counter()
    first = None
    usage = None
    landmark = None
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
        if chunk.usage is not None:
            usage = chunk.usage
        extra = chunk.model_extra or {}
        if extra.get("landmark"):
            landmark = extra["landmark"]
    ended = time.perf_counter()
    return StreamedChat((first or ended) - started, ended - started, usage, landmark)
