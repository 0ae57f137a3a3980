"""LongBench v1 / LongBench-E scoring: metrics that reproduce the published ones, and a scorer.

``eval.longbench.metrics`` holds the per-item metrics and the dataset tables;
``eval.longbench.score`` aggregates prediction files (``python -m eval.longbench.score``).
"""
