"""Patch: tokenize prompts that hold documents around their markers, then plan the documents.

Targets vLLM 0.32.x (`vllm/renderers/base.py`: `BaseRenderer._tokenize_prompt`, which every
text prompt goes through: chat, completions, `LLM.generate`). A prompt whose multimodal data
has documents is tokenized piece by piece around each document's marker (see
`vllm_landmark.document.marker`), which gives each document an insertion index rather than a
token; with the token count of the rest of the prompt and the request's `max_tokens` known,
the documents are planned (`DocumentPlanner.plan`), and the planned documents, keyed for
vLLM's caches by (document, plan), replace the raw items. A document read whole at k=1 is
pasted into the text instead (token-identical to pasting it, whatever the tokenizer). Prompts
without documents go to vLLM's own code untouched.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

from vllm_landmark.config import HF_CONFIG_KEY
from vllm_landmark.document import MODALITY

from .targets import Target, check_targets

TARGET_VLLM = ("0.32",)
TARGETS = (
    Target("vllm.renderers.base", "BaseRenderer._tokenize_prompt", ("prompt", "params")),
    Target("vllm.renderers.base", "BaseRenderer._build_tokens_prompt", ("token_ids", "prompt")),
    Target("vllm.renderers.params", "TokenizeParams.get_encode_kwargs"),
    Target("vllm.renderers.params", "TokenizeParams"),
)
_APPLIED_FLAG = "_vllm_landmark_tokenize_patched"


def plan_prompt_documents(planner: Any, prompt: dict, params: Any) -> tuple[list[int], dict]:
    """(token ids, prompt dict with planned documents and their cache keys) for one prompt.

    A document read whole at k=1 whose text holds no special-token string is pasted into the
    prompt text and tokenized with it: exactly what pasting the text gives, for any tokenizer.
    The others keep their own tokens and an insertion index.
    """
    from vllm_landmark.document.items import normalize_document
    from vllm_landmark.document.marker import DOCUMENT_MARKER, split_at_markers
    from vllm_landmark.document.planning import ParsedDocument

    raw = prompt["multi_modal_data"][MODALITY]
    raw = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    documents = [
        item
        if isinstance(item, ParsedDocument)
        else planner.parse(normalize_document(item, planner.config), DOCUMENT_MARKER)
        for item in raw
    ]
    encode_kwargs = params.get_encode_kwargs()
    pieces = split_at_markers(prompt["prompt"], [d.marker for d in documents])
    token_ids, positions = planner.segments.encode(pieces, encode_kwargs)
    planner.plan(documents, positions, len(token_ids), params.max_output_tokens or 0)
    pasted = [planner.can_paste(document) for document in documents]
    if any(pasted):
        merged = [pieces[0]]
        for document, piece, paste in zip(documents, pieces[1:], pasted, strict=True):
            if paste:
                merged[-1] += document.text + piece
            else:
                merged.append(piece)
        token_ids, positions = planner.segments.encode(merged, encode_kwargs)
        injected = [d for d, paste in zip(documents, pasted, strict=True) if not paste]
        for document, position in zip(injected, positions, strict=True):
            document.planned = replace(document.planned, position=position)
    else:
        injected = documents
    mm_data = {k: v for k, v in prompt["multi_modal_data"].items() if k != MODALITY}
    uuids = {k: v for k, v in (prompt.get("multi_modal_uuids") or {}).items() if k != MODALITY}
    if injected:
        mm_data[MODALITY] = [document.planned for document in injected]
        uuids[MODALITY] = [document.planned.cache_key for document in injected]
    out = {k: v for k, v in prompt.items() if k not in ("multi_modal_data", "multi_modal_uuids")}
    if mm_data:
        out["multi_modal_data"] = mm_data
        out["multi_modal_uuids"] = uuids
    return token_ids, out


def _wrap_tokenize_prompt(original: Any) -> Any:
    @functools.wraps(original)
    def tokenize_prompt(self: Any, prompt: Any, params: Any) -> Any:
        mm_data = prompt.get("multi_modal_data") or {}
        if (
            not mm_data.get(MODALITY)
            or getattr(self.model_config.hf_config, HF_CONFIG_KEY, None) is None
        ):
            return original(self, prompt, params)
        from vllm_landmark.document.items import DocumentError
        from vllm_landmark.document.processor import DocumentValidationError

        planner = self.get_mm_processor().info.planner
        try:
            token_ids, prompt = plan_prompt_documents(planner, prompt, params)
        except DocumentError as exc:
            raise DocumentValidationError(str(exc), parameter=MODALITY) from exc
        return self._build_tokens_prompt(token_ids, prompt)

    return tokenize_prompt


def apply() -> None:
    """Check the targets, then install the wrapper once per process."""
    check_targets(__name__, TARGET_VLLM, TARGETS)
    from vllm.renderers.base import BaseRenderer

    if getattr(BaseRenderer, _APPLIED_FLAG, False):
        return
    BaseRenderer._tokenize_prompt = _wrap_tokenize_prompt(BaseRenderer._tokenize_prompt)
    setattr(BaseRenderer, _APPLIED_FLAG, True)
