"""Evaluation harnesses for vllm-landmark (benchmarks run against a served model)."""
