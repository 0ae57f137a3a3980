"""The token that marks where a document goes in a prompt.

Chat templates render one placeholder token per document; the processor then expands it to
one token per soft token. It must be a single, special token of the LLM's tokenizer that
text never produces by accident and the chat template does not use itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Special tokens known to be unused in common tokenizers, best first.
PREFERRED_TOKENS: tuple[str, ...] = (
    "<|landmark_document|>",
    "<|reserved_special_token_0|>",
    "<|fim_pad|>",
    "<|vision_pad|>",
    "<repo_name>",
    "<reponame>",
    "<filename>",
)


class PlaceholderError(ValueError):
    """No usable placeholder token; the message says which setting fixes it."""


@dataclass(frozen=True)
class Placeholder:
    token: str
    token_id: int


def _special_tokens(tokenizer: Any) -> dict[str, int]:
    """All added special tokens of a Hugging Face tokenizer, by text."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found = {tok.content: int(idx) for idx, tok in decoder.items() if getattr(tok, "special", True)}
    for text in getattr(tokenizer, "all_special_tokens", []) or []:
        idx = tokenizer.convert_tokens_to_ids(text)
        if isinstance(idx, int):
            found.setdefault(text, idx)
    return found


def choose_placeholder(tokenizer: Any, configured: str | None = None) -> Placeholder:
    """The configured placeholder token, or the first unused special token of the tokenizer."""
    specials = _special_tokens(tokenizer)
    if configured is not None:
        if configured not in specials:
            raise PlaceholderError(
                f"--landmark-placeholder-token {configured!r} is not a special token of this "
                f"tokenizer; special tokens are: {sorted(specials)[:20]}"
            )
        return Placeholder(configured, specials[configured])
    template = str(getattr(tokenizer, "chat_template", "") or "")
    in_use = {
        getattr(tokenizer, name, None)
        for name in ("bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token")
    }
    for text in PREFERRED_TOKENS:
        if text in specials and text not in in_use and text not in template:
            return Placeholder(text, specials[text])
    raise PlaceholderError(
        "the tokenizer has no known unused special token to mark documents with; set "
        "--landmark-placeholder-token to one of its special tokens that your chat template "
        f"does not use (special tokens: {sorted(specials)[:20]})"
    )
