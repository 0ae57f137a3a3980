"""Helpers for the BGE-M3 tests: a tiny model builder and the FlagEmbedding reference runner."""
