"""Training recipes: the extensible embedder and the M3 heads (see the issues)."""
