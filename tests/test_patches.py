"""Each patch on its own: its start-up guard, and the pure pieces it wraps vLLM with."""

from __future__ import annotations

import asyncio
import json

import pytest

from vllm_landmark.document.items import DocumentError
from vllm_landmark.patches import chat_documents, cli_flags, document_tokens, overrides
from vllm_landmark.patches.targets import PatchTargetError, Target, check_targets
from vllm_landmark.server.chat_documents import documents_field_to_parts, last_user_text

PATCHES = [chat_documents, cli_flags, document_tokens, overrides]


@pytest.mark.parametrize("patch", PATCHES)
def test_every_patch_targets_the_installed_vllm(patch) -> None:
    check_targets(patch.__name__, patch.TARGET_VLLM, patch.TARGETS)


def test_every_private_vllm_method_the_plugin_overrides_is_guarded() -> None:
    """A private method of a vLLM base class that a plugin class overrides is a start-up
    target of some patch (so a vLLM that renamed it stops the server at start-up)."""
    from vllm_landmark.document.processor import DocumentDataParser, DocumentMultiModalProcessor

    guarded = {(target.module, target.qualname) for patch in PATCHES for target in patch.TARGETS}
    overridden = set()
    for cls in (DocumentDataParser, DocumentMultiModalProcessor):
        for name in vars(cls):
            if not name.startswith("_") or name.startswith("__") or not callable(vars(cls)[name]):
                continue
            for base in cls.__mro__[1:]:
                if base.__module__.startswith("vllm.") and name in vars(base):
                    overridden.add((base.__module__, f"{base.__qualname__}.{name}"))
                    break
    assert overridden, "the document classes override no private vLLM method?"
    assert overridden <= guarded, sorted(overridden - guarded)


def test_the_guard_names_the_version_and_the_symbol(monkeypatch) -> None:
    with pytest.raises(PatchTargetError, match=r"targets vLLM 0\.1, but vLLM 0\.32"):
        check_targets("p", ("0.1",), ())
    missing = Target("vllm.renderers.base", "BaseRenderer.no_such_method")
    with pytest.raises(PatchTargetError, match="has no vllm.renderers.base:BaseRenderer.no_such"):
        check_targets("p", ("0.32",), (missing,))
    renamed = Target("vllm.renderers.base", "BaseRenderer._tokenize_prompt", ("prompt", "text"))
    with pytest.raises(PatchTargetError, match=r"no longer takes \['text'\]"):
        check_targets("p", ("0.32",), (renamed,))
    import vllm

    monkeypatch.setattr(vllm, "__version__", "0.33.1")
    with pytest.raises(PatchTargetError, match="vLLM 0.33.1 is installed"):
        chat_documents.apply()


def test_documents_field_goes_before_the_last_user_message() -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "the question"},
    ]
    out = documents_field_to_parts(messages, [{"title": "Report", "text": "body"}, {"text": "x"}])
    assert out[:2] == messages[:2] and messages[2]["content"] == "the question"
    assert out[2]["content"] == [
        {"type": "text", "text": "Report"},
        {"type": "document", "document": {"text": "body"}},
        {"type": "document", "document": {"text": "x"}},
        {"type": "text", "text": "the question"},
    ]
    with pytest.raises(DocumentError, match="no user message"):
        documents_field_to_parts([{"role": "system", "content": "s"}], [{"text": "x"}])
    with pytest.raises(DocumentError, match=r"documents\[0\] needs a 'text' string"):
        documents_field_to_parts(messages, [{"title": "x"}])


def test_last_user_text_is_the_question() -> None:
    assert last_user_text([{"role": "user", "content": "  why?  "}]) == "why?"
    parts = [
        {"type": "document", "document": {"text": "long"}},
        {"type": "text", "text": "Who"},
        {"type": "text", "text": "designed it?"},
    ]
    messages = [{"role": "user", "content": "old"}, {"role": "user", "content": parts}]
    assert last_user_text(messages) == "Who\ndesigned it?"
    assert last_user_text([{"role": "assistant", "content": "hi"}]) is None
    assert last_user_text([{"role": "user", "content": [parts[0]]}]) is None


def test_the_stream_gets_the_block_in_its_last_data_chunk() -> None:
    chunks = [
        'data: {"id": 1, "choices": [{"delta": {"content": "a"}}]}\n\n',
        'data: {"id": 1, "choices": []}\n\n',
        "data: [DONE]\n\n",
    ]

    async def source():
        for chunk in chunks:
            yield chunk

    async def collect():
        return [c async for c in chat_documents.stream_with_block(source(), {"documents": []})]

    out = asyncio.run(collect())
    assert out[0] == chunks[0] and out[-1] == chunks[-1] and len(out) == 3
    assert json.loads(out[1][len("data: ") :]) == {
        "id": 1,
        "choices": [],
        "landmark": {"documents": []},
    }
