"""Patch: `--landmark` and `--landmark-*` flags on vLLM's engine argument parser.

Targets vLLM 0.32.x. vLLM has no public hook for new CLI flags, but
`AsyncEngineArgs.add_cli_args` loads the general plugins before it builds its arguments, so
the plugin can wrap `EngineArgs.add_cli_args` (add the flags) and `EngineArgs.from_cli_args`
(fold them into `hf_overrides`, which reaches every engine process). Works for
`vllm serve`, `python -m vllm.entrypoints.openai.api_server` and `landmark serve`.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .targets import Target, check_targets

TARGET_VLLM = ("0.32",)
TARGETS = (
    Target("vllm.engine.arg_utils", "EngineArgs.add_cli_args", ("parser",)),
    Target("vllm.engine.arg_utils", "EngineArgs.from_cli_args", ("args",)),
)
_APPLIED_FLAG = "_vllm_landmark_patched"

#: (flag, LandmarkConfig field, argparse type name, help)
FLAGS: tuple[tuple[str, str, str, str], ...] = (
    (
        "--landmark-budget",
        "budget",
        "positive_int",
        "Cap on the soft tokens one document may take in the prompt (default: no cap; a "
        "document is read whole whenever the prompt fits --max-model-len).",
    ),
    (
        "--landmark-factor",
        "factor",
        "factor",
        "Force one scaling factor k for every document over its share of the window (1, 2, 4, "
        "8, 16 or 32). Default: the planner chooses.",
    ),
    (
        "--landmark-factors",
        "factors",
        "factors",
        "Comma-separated factors the planner may choose from (default: 1,2,4,8,16,32).",
    ),
    (
        "--landmark-embedder",
        "embedder",
        "embedder",
        "'auto' (default: the bundled trained embedder for the served model, else none: "
        "documents are cut to their best spans, never compressed untrained), 'mean-baseline' "
        "(untrained mean of k token embeddings, for experiments) or a trained folder.",
    ),
    (
        "--landmark-retriever",
        "retriever",
        "retriever",
        "Rank document spans by the question: 'default' (the default: bundled "
        "multilingual-e5-small with trained lexical and multi-vector heads, loaded the first "
        "time a document does not fit), a BGE-M3-layout folder (e.g. BAAI/bge-m3), or 'none' "
        "(an over-long document keeps its head and tail).",
    ),
    (
        "--landmark-retrieval-rounds",
        "retrieval_rounds",
        "positive_int",
        "Most retrieval rounds one question may take (default 5): after the first, what the "
        "best sentence names (a variable, a code, a name) is looked for in turn, so a chain of "
        "facts lands in the plan; 1 turns this off.",
    ),
    (
        "--landmark-max-document-tokens",
        "max_document_tokens",
        "positive_int",
        "Hard limit on one document's length in LLM tokens.",
    ),
    (
        "--landmark-max-request-documents",
        "max_request_documents",
        "positive_int",
        "The most documents one request may carry (default 64); more is refused with a 413.",
    ),
    (
        "--landmark-max-request-document-tokens",
        "max_request_document_tokens",
        "positive_int",
        "The most LLM tokens all documents of one request may hold together (default "
        "1,048,576); more is refused with a 413 before any retrieval.",
    ),
    (
        "--landmark-max-document-chars",
        "max_document_chars",
        "positive_int",
        "Hard limit on one document's length in characters (checked before tokenizing).",
    ),
    (
        "--landmark-output-reserve",
        "output_reserve",
        "non_negative_int",
        "Tokens kept free for the answer when a request gives no max_tokens (default 256, at "
        "most a quarter of --max-model-len).",
    ),
    (
        "--landmark-file-store",
        "file_store",
        "path",
        "Folder where the Files API (/v1/files) keeps uploads so they survive a restart "
        "(created if missing). Default: in memory only.",
    ),
    (
        "--landmark-file-store-bytes",
        "file_store_bytes",
        "positive_int",
        "Most bytes of uploaded text the Files API store holds, all keys together (default "
        "256 MiB); an upload that does not fit is refused with a 413.",
    ),
    (
        "--landmark-max-file-bytes",
        "max_file_bytes",
        "positive_int",
        "Largest upload the Files API reads (bytes, default 16 MiB); chat request bodies may "
        "be 4/3 of it (base64) plus 1 MiB. Larger bodies are refused before they are read.",
    ),
)


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def _non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value!r}")
    return number


def _factor(value: str) -> int:
    from vllm_landmark.config import ALLOWED_FACTORS

    if value.strip() not in {str(k) for k in ALLOWED_FACTORS}:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an allowed factor; choose one of {ALLOWED_FACTORS}"
        )
    return int(value)


def _factors(value: str) -> tuple[int, ...]:
    factors = tuple(_factor(v) for v in value.split(",") if v.strip())
    if not factors:
        raise argparse.ArgumentTypeError("expected at least one factor, e.g. 1,2,4,8")
    return factors


def _folder(value: str) -> str:
    if not Path(value).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is not an existing folder")
    return value


def _path(value: str) -> str:
    return str(Path(value).expanduser())


def _choice(parse: Callable[[str], Any], value: str) -> str | None:
    """An embedder/retriever choice checked by the config's parser (folders must exist), kept
    as text in the parsed arguments (vLLM logs them and hands them to the processes it spawns);
    LandmarkConfig parses it into the typed value."""
    from vllm_landmark.config import LandmarkConfigError, setting_text

    try:
        setting = parse(value)
    except LandmarkConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if isinstance(setting, Path):
        _folder(str(setting))
    return setting_text(setting)


def _embedder(value: str) -> str | None:
    from vllm_landmark.config import parse_embedder

    return _choice(parse_embedder, value)


def _retriever(value: str) -> str:
    """A retriever choice as text; 'none' stays 'none' (an explicit "no retriever", which
    the config reads as None), so it is not mistaken for a flag that was not given."""
    from vllm_landmark.config import NO_RETRIEVER, parse_retriever

    return _choice(parse_retriever, value) or NO_RETRIEVER


_TYPES = {
    "positive_int": _positive_int,
    "non_negative_int": _non_negative_int,
    "factor": _factor,
    "factors": _factors,
    "folder": _folder,
    "path": _path,
    "embedder": _embedder,
    "retriever": _retriever,
}


def add_landmark_arguments(parser: Any) -> Any:
    """Add the plugin's flags to a vLLM argument parser (once)."""
    if "--landmark" in getattr(parser, "_option_string_actions", {}):
        return parser
    group = parser.add_argument_group("vllm-landmark", "Long documents as soft tokens.")
    group.add_argument(
        "--landmark",
        action="store_true",
        default=False,
        help="Serve the model through LandmarkForCausalLM: chat requests may carry documents "
        "(file/document parts, `documents`) injected as soft tokens.",
    )
    for flag, _field, kind, help_text in FLAGS:
        group.add_argument(flag, type=_TYPES[kind], default=None, help=help_text)
    return parser


def landmark_config_from_args(args: argparse.Namespace) -> Any:
    """The LandmarkConfig the flags describe, or None without --landmark."""
    from vllm_landmark.config import LandmarkConfig

    given = {
        field: getattr(args, flag[2:].replace("-", "_"), None)
        for flag, field, _kind, _help in FLAGS
    }
    given = {k: v for k, v in given.items() if v is not None}
    if not getattr(args, "landmark", False):
        if given:
            names = ", ".join(f"--{f.replace('_', '-')}" for f in given)
            raise ValueError(f"landmark settings given ({names}) without --landmark")
        return None
    return LandmarkConfig(**given)


def _wrap_add_cli_args(original: Any) -> Any:
    @functools.wraps(original)
    def add_cli_args(parser: Any, *args: Any, **kwargs: Any) -> Any:
        return add_landmark_arguments(original(parser, *args, **kwargs))

    return add_cli_args


def _wrap_from_cli_args(original: Any) -> Any:
    @functools.wraps(original)
    def from_cli_args(cls: Any, args: argparse.Namespace) -> Any:
        from vllm_landmark.engine import LandmarkHfOverrides

        engine_args = original(cls, args)
        if isinstance(engine_args.hf_overrides, LandmarkHfOverrides):
            return engine_args  # folded already, by the process that parsed the flags
        config = landmark_config_from_args(args)
        if config is not None:
            existing = engine_args.hf_overrides
            if callable(existing):
                raise ValueError("--landmark cannot be combined with a callable hf_overrides")
            engine_args.hf_overrides = LandmarkHfOverrides(config, dict(existing or {}))
            # vLLM hands these args to the processes it spawns (one API server per data-parallel
            # rank, --api-server-count); they build their engine args before any plugin loads,
            # so the overrides must travel in the args themselves.
            args.hf_overrides = engine_args.hf_overrides
        return engine_args

    return from_cli_args


def apply() -> None:
    """Check the targets, then install the wrappers once per process."""
    check_targets(__name__, TARGET_VLLM, TARGETS)
    from vllm.engine.arg_utils import EngineArgs

    if getattr(EngineArgs, _APPLIED_FLAG, False):
        return
    EngineArgs.add_cli_args = staticmethod(_wrap_add_cli_args(EngineArgs.add_cli_args))
    EngineArgs.from_cli_args = classmethod(_wrap_from_cli_args(EngineArgs.from_cli_args.__func__))
    setattr(EngineArgs, _APPLIED_FLAG, True)
