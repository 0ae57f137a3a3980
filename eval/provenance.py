"""The provenance header every result JSON in ``eval/results/`` carries.

    from eval.provenance import provenance
    result = {"provenance": provenance("eval.benchmarks.bench_ttft", argv, config=vars(args),
                                       embedder="auto"), ...}

One object, the same keys in every file (``KEYS``): ``commit`` (the checkout, ``+dirty`` when
``plugin/`` or ``patches/`` had uncommitted edits), ``command`` (the command line that wrote the
file), ``config`` (the run's settings), ``embedder`` (the k > 1 embedder the run used, or
``None`` when none was involved), ``machine`` (what it ran on) and ``load`` (the load average,
1/5/15 min, when the run started: other work on the machine slows every timing). A value that is
not known is the string ``"unknown"``, never a guess. ``python -m eval.report`` shows the header
of every current run.

Standard library only: the GPU scripts import it on a machine without the project installed.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

#: The header's keys, in order.
KEYS = ("commit", "command", "config", "embedder", "machine", "load")
#: What a backfilled header says where the run did not record the value.
UNKNOWN = "unknown"

REPO = Path(__file__).resolve().parents[1]


def code_revision(repo: Path = REPO) -> str | None:
    """Short commit of the checkout, ``+dirty`` when plugin or patch code is edited."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=repo,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "plugin", "patches"],
            capture_output=True,
            text=True,
            check=True,
            cwd=repo,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    """What the numbers were measured on (CPU model, cores, memory, OS, Python, GPU)."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {
        "arch": platform.machine(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": memory,
        "os": platform.platform(),
        "python": platform.python_version(),
        "gpu": _gpu(),
    }


def _gpu() -> str | None:
    """The first CUDA device's name when torch is already imported and sees one."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - a broken CUDA setup is not the result's concern
        return None
    return None


def load_average() -> list[float] | None:
    """The 1/5/15-minute load average, rounded (None where the OS has none)."""
    if not hasattr(os, "getloadavg"):
        return None
    return [round(x, 2) for x in os.getloadavg()]


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """``python -m MODULE ARGS`` (ARGS: ``argv``, else this process's own arguments)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python -m " + module, *(shlex.quote(str(a)) for a in args)])


def plain(value: Any) -> Any:
    """A settings value as JSON: paths and enums as text, containers recursively."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, Enum):
        return plain(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def provenance(
    module: str,
    argv: Sequence[str] | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    embedder: str | None = None,
    command: str | None = None,
    load: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The header for a result written now by ``python -m MODULE`` with ``argv``.

    ``config``: the run's settings (e.g. ``vars(args)``); ``embedder``: the k > 1 embedder it
    used (a name or folder; None when no embedder was involved); ``command`` replaces the
    command line built from ``module`` and ``argv``; ``load``: the load average taken when the
    run started (default: now, so call this before the work).
    """
    return {
        "commit": code_revision() or UNKNOWN,
        "command": command or command_line(module, argv),
        "config": plain(dict(config)) if config is not None else UNKNOWN,
        "embedder": plain(embedder),
        "machine": machine(),
        "load": list(load) if load is not None else load_average(),
    }


def with_provenance(result: Mapping[str, Any], header: Mapping[str, Any]) -> dict[str, Any]:
    """``result`` with ``header`` as its first key, ``provenance``."""
    return {"provenance": dict(header), **{k: v for k, v in result.items() if k != "provenance"}}


def write_result(
    path: Path,
    result: Mapping[str, Any],
    header: Mapping[str, Any],
    *,
    indent: int = 2,
    ensure_ascii: bool = True,
) -> None:
    """Write ``result`` with its provenance ``header`` as JSON to ``path`` (folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(with_provenance(result, header), indent=indent, ensure_ascii=ensure_ascii)
    path.write_text(text + "\n", encoding="utf-8")


def missing_keys(result: Mapping[str, Any]) -> list[str]:
    """The header keys a result lacks (all of them when it has no header)."""
    header = result.get("provenance")
    if not isinstance(header, Mapping):
        return list(KEYS)
    return [key for key in KEYS if key not in header]
