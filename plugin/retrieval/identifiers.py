"""Identifiers a question quotes (UUIDs, hashes, error codes, SKUs, paths), found whole.

A subword tokenizer cuts ``3f2a9c1e-...`` or ``ERR_CONN_RESET`` into pieces that many other
lines share, so neither the encoder's lexical head nor BM25 over its tokens sees the identifier
as one term; among hundreds of look-alike lines the one holding it is not ranked first. This
module finds identifier-like strings in the question by their shape and looks for each one, whole
and verbatim, in the document's text: a sentence that holds a quoted identifier outranks every
sentence that does not (`identifier_unit_counts`, used by `SpanRanker.score_all_spans`).

An identifier is a run of characters without spaces, quotes or brackets that
- mixes letters and digits (``E1234``, ``3f2a9c1e``, ``SKU-883A``, a UUID), or
- holds an inner ``-``, ``_``, ``.``, ``/``, ``:`` or ``#`` between word characters, is at least
  5 characters long and is not a plain hyphenated word (``ERR_CONN_RESET``, ``/etc/fstab``,
  ``config.yaml``; not ``well-known``), or
- is a number of 5 digits or more (``41822``), or
- is quoted in backticks or double quotes as one word.
Plain words, short numbers and sentence punctuation are not identifiers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"[^\s\"'`()\[\]{}<>,;!?]+")
_QUOTED = re.compile(r"`([^`\s]+)`|\"([^\"\s]+)\"")
_INNER_SEPARATOR = re.compile(r"\w[-_./:#]\w")
#: Trailing characters a sentence puts after a word (not part of the identifier).
_TRAILING = ".:"


def _looks_like_identifier(word: str) -> bool:
    has_digit = any(c.isdigit() for c in word)
    has_alpha = any(c.isalpha() for c in word)
    if has_digit and has_alpha and len(word) >= 4:
        return True
    if len(word) >= 5 and _INNER_SEPARATOR.search(word):
        # Not plain hyphenated words ("well-known"): a digit, a code separator or inner capitals.
        marked = has_digit or any(c in "_/.:#" for c in word)
        if marked or any(c.isupper() for c in word[1:]):
            return True
    return word.isdigit() and len(word) >= 5


def quoted_identifiers(question: str) -> list[str]:
    """The identifier-like strings of a question, in order, each once."""
    found: list[str] = []
    for match in _QUOTED.finditer(question):
        word = match.group(1) or match.group(2)
        if word and word not in found and len(word) >= 3:
            found.append(word)
    for match in _WORD.finditer(question):
        word = match.group(0).rstrip(_TRAILING)
        if word and word not in found and _looks_like_identifier(word):
            found.append(word)
    return found


def identifier_unit_hits(
    document: str, unit_chars: np.ndarray, identifiers: Sequence[str]
) -> np.ndarray:
    """(len(identifiers), S) bool: whether unit ``s`` (character range ``unit_chars[s]``, units
    in document order) holds an occurrence of each identifier, whole (not inside a longer word).
    """
    hits = np.zeros((len(identifiers), len(unit_chars)), dtype=bool)
    if not len(unit_chars):
        return hits
    starts, ends = unit_chars[:, 0], unit_chars[:, 1]
    for row, identifier in enumerate(identifiers):
        pattern = re.compile(r"(?<!\w)" + re.escape(identifier) + r"(?!\w)")
        found = np.asarray([m.span() for m in pattern.finditer(document)], dtype=np.int64)
        if not len(found):
            continue
        # The units an occurrence [a, b) overlaps: from the first ending after a to the last
        # starting before b.
        first = np.searchsorted(ends, found[:, 0], side="right")
        last = np.searchsorted(starts, found[:, 1], side="left")
        single = last - first == 1
        hits[row, first[single]] = True
        for lo, hi in zip(first[~single].tolist(), last[~single].tolist(), strict=True):
            hits[row, lo:hi] = True
    return hits


def identifier_unit_counts(document: str, unit_chars: np.ndarray, question: str) -> np.ndarray:
    """(S,) float: how many distinct identifiers quoted in ``question`` each unit holds."""
    identifiers = quoted_identifiers(question)
    if not identifiers:
        return np.zeros(len(unit_chars))
    hits = identifier_unit_hits(document, np.asarray(unit_chars), identifiers)
    return hits.sum(axis=0).astype(np.float64)
