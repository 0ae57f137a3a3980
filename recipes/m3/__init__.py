"""M3 self-knowledge distillation: train the sparse and multi-vector heads of a BGE-M3 folder.

See ``recipes/m3/README.md``. Modules: ``build_data`` (triples from offline documents),
``config`` (run settings), ``data`` (triples, length-grouped batches), ``model`` (encoder +
heads, frozen-encoder feature cache, export in BGE-M3 layout), ``losses`` (the three scores,
InfoNCE and self-distillation), ``train`` (the loop: progress bar, resumable checkpoints).
"""
