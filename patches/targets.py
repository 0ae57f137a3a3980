"""Start-up checks for the patches: the vLLM version and every symbol a patch wraps.

A patch wraps private vLLM functions; on a vLLM it was not written for they may be gone or
take other arguments. Each patch declares what it needs, and `check_targets` stops the process
at start-up (vLLM runs general plugins before it serves anything) with a message naming the
version and the symbol, instead of failing on the first request.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import import_module


class PatchTargetError(RuntimeError):
    """The installed vLLM is not one a patch targets."""


@dataclass(frozen=True)
class Target:
    """A symbol a patch wraps: `module:qualname`, and the parameters it must accept."""

    module: str
    qualname: str
    parameters: tuple[str, ...] = ()

    def resolve(self) -> object:
        obj: object = import_module(self.module)
        for name in self.qualname.split("."):
            obj = getattr(obj, name)
        return obj


def installed_vllm_version() -> str:
    import vllm

    return str(getattr(vllm, "__version__", "unknown"))


def check_targets(patch: str, versions: Sequence[str], targets: Sequence[Target]) -> None:
    """Raise PatchTargetError unless vLLM's version and every target are what `patch` expects."""
    version = installed_vllm_version()
    if not any(version == v or version.startswith(v + ".") for v in versions):
        raise PatchTargetError(
            f"vllm-landmark's patch {patch!r} targets vLLM {', '.join(versions)}, but vLLM "
            f"{version} is installed: install a supported vLLM (the `cpu`/`gpu` extras of "
            "vllm-landmark pin them) or a vllm-landmark release made for this vLLM"
        )
    for target in targets:
        where = f"{target.module}:{target.qualname}"
        try:
            obj = target.resolve()
        except (ImportError, AttributeError) as exc:
            raise PatchTargetError(
                f"vllm-landmark's patch {patch!r}: vLLM {version} has no {where} ({exc})"
            ) from exc
        if not target.parameters:
            continue
        try:
            names = set(inspect.signature(obj).parameters)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise PatchTargetError(
                f"vllm-landmark's patch {patch!r}: cannot read the signature of {where}"
            ) from exc
        missing = [name for name in target.parameters if name not in names]
        if missing:
            raise PatchTargetError(
                f"vllm-landmark's patch {patch!r}: {where} in vLLM {version} no longer takes "
                f"{missing} (it takes {sorted(names)})"
            )
