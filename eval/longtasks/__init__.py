"""Synthetic long-context tasks over real text, built at run time (see ``generate``)."""
