"""Changes to vLLM behaviour that no public hook allows: one module per patch.

Patches are adapters: they hold no planning (that is `vllm_landmark.planning`), only the
calls that route vLLM's requests to the plugin. Each module names the vLLM versions and the
private symbols it wraps or overrides (checked at start-up by
`targets.check_targets`, which stops the process with a message naming the version and the
symbol), applies itself idempotently through `apply()`, and is tested on its own.
`apply_all()` is what the plugin's `register()` calls.
"""

from __future__ import annotations


def apply_all() -> None:
    from . import chat_documents, cli_flags, document_tokens, overrides

    overrides.apply()
    cli_flags.apply()
    chat_documents.apply()
    document_tokens.apply()
