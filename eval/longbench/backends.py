"""Where predictions come from: an OpenAI-compatible endpoint or an offline vLLM engine.

Both take the same ``GenerationRequest`` (chat messages, or a raw prompt for the data sets
that skip the chat template) and return a ``Generation``. Decoding is greedy.

Errors are split in two: ``ItemError`` (the server refused this one request, e.g. a prompt
longer than the window: HTTP 400/413/422) is recorded for the item and the run goes on;
``EndpointError`` (connection refused, timeout, 5xx, wrong model name) stops the run, keeping
what was already written, so the same command resumes it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: HTTP statuses that concern one request only; any other failure stops the run.
ITEM_STATUSES = frozenset({400, 413, 422})


class EndpointError(Exception):
    """The backend cannot serve requests at all (the run stops, partial results stay)."""


class ItemError(Exception):
    """The backend refused one request (recorded for that item; the run goes on)."""


@dataclass
class GenerationRequest:
    """One greedy generation: chat ``messages`` or a raw ``prompt`` (no chat template).

    ``chat_template`` overrides the model's template for chat requests (used to send document
    parts without the chat format). ``newline_token_id`` makes generation stop at a newline as
    well, after at least one token (LongBench's samsum rule).
    """

    max_tokens: int
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    chat_template: str | None = None
    newline_token_id: int | None = None

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of messages and prompt")


@dataclass
class Generation:
    """The answer and what the backend reported about it."""

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float = 0.0
    landmark: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class EndpointBackend:
    """An OpenAI-compatible server: this plugin's, plain vLLM, or a remote API.

    ``vllm_extras`` sends vLLM's sampling fields (``stop_token_ids``, ``min_tokens``) for the
    newline rule; without it (other APIs) a ``"\\n"`` stop string is used instead.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str = "EMPTY",
        timeout: float = 600.0,
        max_retries: int = 2,
        vllm_extras: bool = True,
    ) -> None:
        import openai

        self.base_url = base_url
        self.vllm_extras = vllm_extras
        self.client = openai.OpenAI(
            base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries
        )
        self.model = model or self._first_model()

    def _first_model(self) -> str:
        """The first model the endpoint lists (what a single-model vLLM server serves)."""
        try:
            models = list(self.client.models.list())
        except Exception as exc:
            raise self._classify(exc, "listing models") from exc
        if not models:
            raise EndpointError(f"{self.base_url} lists no models; pass --model")
        return models[0].id

    def _classify(self, exc: Exception, what: str) -> Exception:
        """Turn an openai exception into ItemError or EndpointError with a clear message."""
        import openai

        if isinstance(exc, openai.APITimeoutError):
            return EndpointError(f"{what}: timed out talking to {self.base_url} ({exc})")
        if isinstance(exc, openai.APIConnectionError):
            return EndpointError(f"{what}: cannot reach {self.base_url} ({exc})")
        if isinstance(exc, openai.APIStatusError):
            detail = _error_detail(exc)
            if exc.status_code in ITEM_STATUSES:
                return ItemError(f"HTTP {exc.status_code}: {detail}")
            return EndpointError(
                f"{what}: {self.base_url} answered HTTP {exc.status_code}: {detail}"
            )
        return EndpointError(f"{what}: {type(exc).__name__}: {exc}")

    def generate(self, request: GenerationRequest) -> Generation:
        """Run one request; raise ItemError or EndpointError on failure."""
        extra: dict[str, Any] = {}
        stop: list[str] | None = None
        if request.newline_token_id is not None:
            if self.vllm_extras:
                extra.update(stop_token_ids=[request.newline_token_id], min_tokens=1)
            else:
                stop = ["\n"]
        started = time.perf_counter()
        try:
            if request.messages is not None:
                if request.chat_template is not None:
                    extra["chat_template"] = request.chat_template
                response = self.client.chat.completions.create(
                    model=self.model,
                    messages=request.messages,  # type: ignore[arg-type]
                    max_tokens=request.max_tokens,
                    temperature=0.0,
                    stop=stop,
                    extra_body=extra or None,
                )
                text = response.choices[0].message.content or ""
            else:
                response = self.client.completions.create(
                    model=self.model,
                    prompt=request.prompt or "",
                    max_tokens=request.max_tokens,
                    temperature=0.0,
                    stop=stop,
                    extra_body=extra or None,
                )
                text = response.choices[0].text or ""
        except Exception as exc:
            raise self._classify(exc, "request") from exc
        usage = response.usage
        return Generation(
            text=text,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            latency_s=time.perf_counter() - started,
            landmark=(response.model_extra or {}).get("landmark"),
        )


def _error_detail(exc: Any) -> str:
    """The server's error message from an openai APIStatusError, shortened."""
    body = getattr(exc, "body", None)
    message = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else None
    text = str(message or exc)
    return text if len(text) <= 500 else text[:500] + "..."


class OfflineBackend:
    """An in-process ``vllm.LLM`` (optionally with the plugin); requests run in batches.

    Scripts that use it need an ``if __name__ == "__main__":`` guard (vLLM spawns workers).
    ``latency_s`` of each answer is the wall time of its whole group, and there is no
    ``landmark`` block (that comes from the server layer).
    """

    def __init__(self, model: str, *, landmark_config: Any = None, **engine_args: Any) -> None:
        from vllm import LLM

        kwargs = dict(engine_args)
        if landmark_config is not None:
            from vllm_landmark import engine_kwargs

            kwargs.update(engine_kwargs(landmark_config))
        self.model = model
        self.llm = LLM(model=model, **kwargs)

    def _params(self, request: GenerationRequest) -> Any:
        from vllm import SamplingParams

        if request.newline_token_id is not None:
            return SamplingParams(
                temperature=0.0,
                max_tokens=request.max_tokens,
                stop_token_ids=[request.newline_token_id],
                min_tokens=1,
            )
        return SamplingParams(temperature=0.0, max_tokens=request.max_tokens)

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[Generation | Exception]:
        """Run requests together (grouped by kind); per request a Generation or the error."""
        results: list[Generation | Exception] = [ItemError("not run")] * len(requests)
        groups: dict[tuple[bool, str | None], list[int]] = {}
        for index, request in enumerate(requests):
            key = (request.messages is not None, request.chat_template)
            groups.setdefault(key, []).append(index)
        for (is_chat, template), indices in groups.items():
            started = time.perf_counter()
            params = [self._params(requests[i]) for i in indices]
            try:
                if is_chat:
                    outputs = self.llm.chat(
                        [requests[i].messages for i in indices],  # type: ignore[misc]
                        params,
                        chat_template=template,
                        use_tqdm=False,
                    )
                else:
                    outputs = self.llm.generate(
                        [requests[i].prompt for i in indices],  # type: ignore[misc]
                        params,
                        use_tqdm=False,
                    )
            except Exception as exc:  # one bad prompt fails the group: retry one by one
                if len(indices) == 1:
                    results[indices[0]] = ItemError(f"{type(exc).__name__}: {exc}")
                    continue
                for i in indices:
                    results[i] = self.generate_batch([requests[i]])[0]
                continue
            elapsed = time.perf_counter() - started
            for i, output in zip(indices, outputs, strict=True):
                completion = output.outputs[0]
                results[i] = Generation(
                    text=completion.text,
                    prompt_tokens=len(output.prompt_token_ids or []),
                    completion_tokens=len(completion.token_ids),
                    latency_s=elapsed,
                )
        return results
