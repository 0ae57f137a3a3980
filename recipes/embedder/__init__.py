"""Training recipe for the extensible embedder (see README.md in this folder)."""
