"""Bundled demo data for vllm-landmark (a fictional document and a question about it)."""
