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
from typing import Any

TARGET_VLLM = ("0.32",)
_APPLIED_FLAG = "_vllm_landmark_patched"

#: (flag, LandmarkConfig field, type, help)
FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    (
        "--landmark-budget",
        "budget",
        int,
        "Soft tokens one document may take in the prompt (default: half of --max-model-len).",
    ),
    (
        "--landmark-factor",
        "factor",
        int,
        "Force one scaling factor k for every document (1, 2, 4, 8, 16 or 32). Default: the "
        "smallest allowed factor that fits the budget.",
    ),
    (
        "--landmark-factors",
        "factors",
        None,
        "Comma-separated factors the planner may choose from (default: 1,2,4,8,16,32).",
    ),
    (
        "--landmark-embedder",
        "embedder",
        str,
        "'mean-baseline' (untrained mean of k token embeddings) or a trained embedder folder.",
    ),
    ("--landmark-retriever", "retriever", str, "BGE-M3-layout folder used to rank document spans."),
    (
        "--landmark-max-document-tokens",
        "max_document_tokens",
        int,
        "Hard limit on one document's length in LLM tokens.",
    ),
    (
        "--landmark-max-document-chars",
        "max_document_chars",
        int,
        "Hard limit on one document's length in characters (checked before tokenizing).",
    ),
    (
        "--landmark-placeholder-token",
        "placeholder_token",
        str,
        "Special token that marks a document in the prompt (default: an unused special token).",
    ),
)


def _parse_factors(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--landmark-factors expects comma-separated integers, got {value!r}"
        ) from exc


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
        group.add_argument(
            flag, type=_parse_factors if kind is None else kind, default=None, help=help_text
        )
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
        config = landmark_config_from_args(args)
        if config is not None:
            existing = engine_args.hf_overrides
            if callable(existing):
                raise ValueError("--landmark cannot be combined with a callable hf_overrides")
            engine_args.hf_overrides = LandmarkHfOverrides(config, dict(existing or {}))
        return engine_args

    return from_cli_args


def apply() -> None:
    """Install the wrappers once per process."""
    from vllm.engine.arg_utils import EngineArgs

    if getattr(EngineArgs, _APPLIED_FLAG, False):
        return
    EngineArgs.add_cli_args = staticmethod(_wrap_add_cli_args(EngineArgs.add_cli_args))
    EngineArgs.from_cli_args = classmethod(_wrap_from_cli_args(EngineArgs.from_cli_args.__func__))
    setattr(EngineArgs, _APPLIED_FLAG, True)
