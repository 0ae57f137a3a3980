"""Compression: how many soft tokens a document gets and how they are computed."""
