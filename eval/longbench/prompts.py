"""LongBench prompts: the per-data-set templates, max new tokens, middle truncation, chat rule.

Behaviour follows THUDM/LongBench ``pred.py`` (read, not copied):

* The prompt is ``dataset2prompt[dataset].format(**item)`` (``{context}`` and ``{input}``).
* Middle truncation: the prompt is tokenized with the model's tokenizer *with* its special
  tokens (``tokenizer(prompt).input_ids``); when that is longer than ``max_length``, the prompt
  becomes ``decode(ids[:half]) + decode(ids[-half:])`` with ``half = int(max_length / 2)``,
  both decoded with ``skip_special_tokens=True`` and joined with nothing in between.
* Six data sets skip the chat template (few-shot and code completion: trec, triviaqa, samsum,
  lsht, lcc, repobench-p); the others are wrapped in the model's chat format.
* samsum stops at a newline as well as at EOS, after at least one new token.
* Greedy decoding; ``dataset2maxlen`` gives the max new tokens per data set.

The configuration files are LongBench's own ``config/`` folder (``dataset2prompt.json``,
``dataset2maxlen.json``, ``model2maxlen.json``); this module never ships or rewrites them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from eval.longbench.metrics import base_dataset

#: Data sets that LongBench sends without the chat template ("chat models are better off").
NO_CHAT_TEMPLATE_DATASETS: frozenset[str] = frozenset(
    {"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"}
)

#: Data sets whose generation also stops at a newline (LongBench: samsum).
NEWLINE_STOP_DATASETS: frozenset[str] = frozenset({"samsum"})

#: Chat template that renders the messages' contents as they are: how a chat endpoint can be
#: asked to skip the model's chat format (vLLM needs ``--trust-request-chat-template``).
PASSTHROUGH_CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"

CONFIG_FILES = ("dataset2prompt.json", "dataset2maxlen.json")
CONTEXT_FIELD = "{context}"


class ConfigError(Exception):
    """The LongBench configuration cannot be found or read."""


class TokenizerLike(Protocol):
    """The part of a Hugging Face tokenizer that truncation needs."""

    def __call__(self, text: str, **kwargs: Any) -> Any: ...

    def decode(self, ids: Any, **kwargs: Any) -> str: ...


def uses_chat_template(dataset: str) -> bool:
    """Whether LongBench wraps this data set's prompt in the chat template (``_e`` names too)."""
    return base_dataset(dataset) not in NO_CHAT_TEMPLATE_DATASETS


def stops_at_newline(dataset: str) -> bool:
    """Whether generation for this data set also stops at a newline (samsum)."""
    return base_dataset(dataset) in NEWLINE_STOP_DATASETS


@dataclass(frozen=True)
class BenchmarkConfig:
    """The per-data-set prompt templates and max new tokens (and reference max lengths)."""

    prompts: dict[str, str]
    max_new_tokens: dict[str, int]
    model_max_length: dict[str, int] = field(default_factory=dict)
    folder: Path | None = None

    def prompt(self, dataset: str) -> str:
        """Template of a data set (LongBench-E names use their v1 template)."""
        for name in (dataset, base_dataset(dataset)):
            if name in self.prompts:
                return self.prompts[name]
        raise ConfigError(f"no prompt for {dataset!r} in {self.folder}/dataset2prompt.json")

    def max_tokens(self, dataset: str) -> int:
        """Max new tokens of a data set."""
        for name in (dataset, base_dataset(dataset)):
            if name in self.max_new_tokens:
                return int(self.max_new_tokens[name])
        raise ConfigError(f"no max length for {dataset!r} in {self.folder}/dataset2maxlen.json")


def find_config_dir(explicit: Path | str | None, data_dir: Path | str | None) -> Path:
    """The folder holding dataset2prompt.json: the explicit one, else next to the data.

    Looks in ``explicit``; else in ``DATA/config``, ``DATA/../config`` and ``DATA`` itself.
    """
    if explicit is not None:
        candidates = [Path(explicit)]
    elif data_dir is not None:
        data = Path(data_dir)
        candidates = [data / "config", data.parent / "config", data]
    else:
        candidates = []
    for folder in candidates:
        if all((folder / name).is_file() for name in CONFIG_FILES):
            return folder
    looked = ", ".join(str(c) for c in candidates) or "(nowhere: give --config-dir)"
    raise ConfigError(
        "LongBench config not found (need dataset2prompt.json and dataset2maxlen.json); looked "
        f"in {looked}. Point --config-dir at the config/ folder of a THUDM/LongBench checkout "
        "(LongBench/config)."
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def load_config(folder: Path | str) -> BenchmarkConfig:
    """Read ``dataset2prompt.json``, ``dataset2maxlen.json`` and (if there) model2maxlen.json."""
    folder = Path(folder)
    prompts = _read_json(folder / "dataset2prompt.json")
    maxlen = _read_json(folder / "dataset2maxlen.json")
    model_path = folder / "model2maxlen.json"
    model_maxlen = _read_json(model_path) if model_path.is_file() else {}
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise ConfigError(f"{folder}/dataset2prompt.json must map data set names to strings")
    if not isinstance(maxlen, dict) or not all(isinstance(v, int) for v in maxlen.values()):
        raise ConfigError(f"{folder}/dataset2maxlen.json must map data set names to integers")
    return BenchmarkConfig(prompts, maxlen, dict(model_maxlen), folder)


def format_prompt(template: str, item: Mapping[str, Any]) -> str:
    """``template.format(**item)``, with a clear error for a field the item lacks."""
    try:
        return template.format(**item)
    except KeyError as exc:
        raise ValueError(
            f"the prompt template needs field {exc.args[0]!r}, which the item lacks"
        ) from exc


def token_ids(tokenizer: TokenizerLike, text: str) -> list[int]:
    """Token ids as LongBench counts them: with the tokenizer's special tokens (e.g. BOS)."""
    return list(tokenizer(text, truncation=False)["input_ids"])


def middle_truncate(
    prompt: str, tokenizer: TokenizerLike, max_length: int
) -> tuple[str, int, bool]:
    """LongBench's middle truncation; returns (prompt, its token count before, truncated?)."""
    ids = token_ids(tokenizer, prompt)
    if len(ids) <= max_length:
        return prompt, len(ids), False
    half = int(max_length / 2)
    head = tokenizer.decode(ids[:half], skip_special_tokens=True)
    tail = tokenizer.decode(ids[-half:], skip_special_tokens=True)
    return head + tail, len(ids), True


def split_template(template: str, item: Mapping[str, Any]) -> tuple[str, str]:
    """The formatted text before and after ``{context}`` (for sending the context apart)."""
    if template.count(CONTEXT_FIELD) != 1:
        raise ValueError("the prompt template must contain {context} exactly once")
    before, after = template.split(CONTEXT_FIELD)
    return format_prompt(before, item), format_prompt(after, item)


def document_content(
    prefix: str,
    document: str,
    suffix: str,
    *,
    factor: int | None = None,
    query: str | None = None,
) -> list[dict[str, Any]]:
    """Chat content parts ``[text, document, text]`` that read like the pasted prompt.

    The server joins a message's parts with one newline. So that the document at k=1 gives the
    same tokens as ``prefix + document + suffix``, one newline that the join re-creates is
    dropped from the end of the prefix and from the start of the suffix; empty parts are left
    out. A prefix not ending in a newline (``"Story: {context}"``) gets one extra newline.
    ``query`` asks a server with a retriever to plan the document for that question.
    """
    if factor is not None and query is not None:
        raise ValueError("give a document either a factor or a query, not both")
    body: dict[str, Any] = {"text": document}
    if factor is not None:
        body["factor"] = int(factor)
    if query is not None:
        body["query"] = query
    parts: list[dict[str, Any]] = []
    head = prefix[:-1] if prefix.endswith("\n") else prefix
    if head:
        parts.append({"type": "text", "text": head})
    parts.append({"type": "document", "document": body})
    tail = suffix[1:] if suffix.startswith("\n") else suffix
    if tail:
        parts.append({"type": "text", "text": tail})
    return parts


def default_max_length(window: int) -> int:
    """Prompt budget for a model window, by LongBench's rule: whole thousands minus 500.

    That reproduces its model2maxlen.json (4k -> 3500, 8k -> 7500, 16k -> 15500,
    32k -> 31500), leaving room for the chat format and the answer.
    """
    return max(256, (window // 1000) * 1000 - 500)
