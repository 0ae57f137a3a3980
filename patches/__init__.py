"""Changes to vLLM behaviour that no public hook allows: one module per patch.

Each module names the vLLM versions it targets, applies itself idempotently through
`apply()`, and is tested on its own. `apply_all()` is what the plugin's `register()` calls.
"""

from __future__ import annotations


def apply_all() -> None:
    from . import chat_documents, cli_flags

    cli_flags.apply()
    chat_documents.apply()
