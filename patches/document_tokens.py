"""Patch: prompts that hold documents are tokenized around them, then planned by the plugin.

Targets vLLM 0.32.x (`vllm/renderers/base.py`). Every text prompt (chat, completions,
`LLM.generate`) is tokenized by `BaseRenderer._tokenize_prompt`, called for each prompt by
`tokenize_prompts` (offline) or `tokenize_prompts_async` (the API server, on vLLM's tokenizer
pool). This adapter changes two things, and only for prompts whose multimodal data holds
documents:
- `_tokenize_prompt` tokenizes the text around the documents
  (`vllm_landmark.document.prompt.tokenize_around_documents`) instead of the whole text;
- `tokenize_prompts(_async)` then hands each such prompt to the plugin, which scores and plans
  its documents (`plan_tokenized_prompt` offline; `server.document_work.plan_prompt_async` on
  the plugin's own threads in the API server) and returns the final token ids, which vLLM's
  own post-tokenization checks see as usual.
Prompts without documents go to vLLM's own code untouched.
"""

from __future__ import annotations

import functools
from typing import Any

from vllm_landmark.config import HF_CONFIG_KEY

from .targets import Target, check_targets

TARGET_VLLM = ("0.32",)
TARGETS = (
    Target("vllm.renderers.base", "BaseRenderer._tokenize_prompt", ("prompt", "params")),
    Target("vllm.renderers.base", "BaseRenderer._build_tokens_prompt", ("token_ids", "prompt")),
    Target("vllm.renderers.base", "BaseRenderer.tokenize_prompts", ("prompts", "params")),
    Target("vllm.renderers.base", "BaseRenderer.tokenize_prompts_async", ("prompts", "params")),
    Target("vllm.renderers.base", "BaseRenderer.get_mm_processor"),
    Target("vllm.renderers.params", "TokenizeParams.get_encode_kwargs"),
    Target("vllm.renderers.params", "TokenizeParams.apply_post_tokenization"),
    Target("vllm.renderers.params", "TokenizeParams"),
)
_APPLIED_FLAG = "_vllm_landmark_tokenize_patched"


def _reader(renderer: Any) -> Any:
    return renderer.get_mm_processor().info.reader


def _enabled(renderer: Any) -> bool:
    return getattr(renderer.model_config.hf_config, HF_CONFIG_KEY, None) is not None


def _as_validation_error(exc: Exception) -> Exception:
    from vllm_landmark.document import MODALITY
    from vllm_landmark.document.processor import DocumentValidationError

    return DocumentValidationError(str(exc), parameter=MODALITY)


def _wrap_tokenize_prompt(original: Any) -> Any:
    @functools.wraps(original)
    def tokenize_prompt(self: Any, prompt: Any, params: Any) -> Any:
        from vllm_landmark.document.items import DocumentError
        from vllm_landmark.document.prompt import has_documents, tokenize_around_documents

        if not (has_documents(prompt) and _enabled(self)):
            return original(self, prompt, params)
        try:
            token_ids, prompt = tokenize_around_documents(
                _reader(self), prompt, params.get_encode_kwargs(), params.max_output_tokens or 0
            )
        except DocumentError as exc:
            raise _as_validation_error(exc) from exc
        return self._build_tokens_prompt(token_ids, prompt)

    return tokenize_prompt


def _finished(self: Any, result: tuple[list[int], dict, Any], params: Any) -> Any:
    token_ids, prompt, _planned = result
    return params.apply_post_tokenization(
        self.tokenizer, self._build_tokens_prompt(token_ids, prompt)
    )


def _wrap_tokenize_prompts(original: Any) -> Any:
    @functools.wraps(original)
    def tokenize_prompts(self: Any, prompts: Any, params: Any) -> Any:
        from vllm_landmark.document.items import DocumentError
        from vllm_landmark.document.prompt import has_layout, plan_tokenized_prompt

        out = original(self, prompts, params)
        try:
            return [
                _finished(
                    self,
                    plan_tokenized_prompt(_reader(self), p["prompt_token_ids"], p),
                    params,
                )
                if has_layout(p)
                else p
                for p in out
            ]
        except DocumentError as exc:
            raise _as_validation_error(exc) from exc

    return tokenize_prompts


def _wrap_tokenize_prompts_async(original: Any) -> Any:
    @functools.wraps(original)
    async def tokenize_prompts_async(self: Any, prompts: Any, params: Any) -> Any:
        from vllm_landmark.document.items import DocumentError
        from vllm_landmark.document.prompt import has_layout
        from vllm_landmark.server.document_work import plan_prompt_async

        out = await original(self, prompts, params)
        finished = []
        try:
            for p in out:
                if has_layout(p):
                    result = await plan_prompt_async(_reader(self), p["prompt_token_ids"], p)
                    p = _finished(self, result, params)
                finished.append(p)
        except DocumentError as exc:
            raise _as_validation_error(exc) from exc
        return finished

    return tokenize_prompts_async


def apply() -> None:
    """Check the targets, then install the wrappers once per process."""
    check_targets(__name__, TARGET_VLLM, TARGETS)
    from vllm.renderers.base import BaseRenderer

    if getattr(BaseRenderer, _APPLIED_FLAG, False):
        return
    BaseRenderer._tokenize_prompt = _wrap_tokenize_prompt(BaseRenderer._tokenize_prompt)
    BaseRenderer.tokenize_prompts = _wrap_tokenize_prompts(BaseRenderer.tokenize_prompts)
    BaseRenderer.tokenize_prompts_async = _wrap_tokenize_prompts_async(
        BaseRenderer.tokenize_prompts_async
    )
    setattr(BaseRenderer, _APPLIED_FLAG, True)
