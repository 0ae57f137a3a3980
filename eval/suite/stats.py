"""Statistics that let the suite rank arms: bootstrap intervals and a degeneration detector.

* :func:`mean_interval`: the mean of per-item values and its 95% percentile-bootstrap interval.
* :func:`paired_difference`: the mean of ``a - b`` over the same items and its 95% interval,
  resampling items (both arms keep the same resampled items: a paired bootstrap). An interval
  that excludes 0 says the two arms differ on this item population.

Both take ``clusters`` (one label per item, e.g. the page an item asks about): items of one
cluster are not independent (two questions about one page, a page and its translation), so the
bootstrap then resamples whole clusters and the mean is over the items drawn. With one item per
cluster it is the item bootstrap, draw for draw.
* :func:`is_degenerate`: an empty answer, or one dominated by a single repeated token or
  symbol ("the the the ...", "!!!!!!", "*****").
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval, over ``n`` items."""

    mean: float
    low: float
    high: float
    n: int
    #: how many clusters the bootstrap resampled (``n`` when items were resampled)
    clusters: int | None = None

    def as_dict(self) -> dict[str, float | int]:
        out = {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}
        if self.clusters is not None and self.clusters != self.n:
            out["clusters"] = self.clusters
        return out


def _percentile_interval(
    values: np.ndarray,
    resamples: int,
    seed: int,
    level: float,
    clusters: Sequence[Hashable] | None = None,
) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    if clusters is None:
        sums, counts = values, np.ones(len(values))
    else:
        if len(clusters) != len(values):
            raise ValueError(f"{len(clusters)} cluster labels for {len(values)} values")
        labels = {label: i for i, label in enumerate(dict.fromkeys(clusters))}
        of_item = np.array([labels[label] for label in clusters])
        sums = np.bincount(of_item, weights=values, minlength=len(labels))
        counts = np.bincount(of_item, minlength=len(labels)).astype(np.float64)
    n = len(sums)
    index = rng.integers(0, n, size=(resamples, n))
    means = sums[index].sum(axis=1) / counts[index].sum(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def mean_interval(
    values: Sequence[float],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
    clusters: Sequence[Hashable] | None = None,
) -> Interval:
    """Mean of ``values`` with a percentile-bootstrap interval (resampling items, or whole
    ``clusters``: see the module doc)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("no values: an interval needs at least one item")
    low, high = _percentile_interval(data, resamples, seed, level, clusters)
    groups = None if clusters is None else len(set(clusters))
    return Interval(float(data.mean()), low, high, int(data.size), groups)


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
    clusters: Sequence[Hashable] | None = None,
) -> Interval:
    """Mean of ``a[i] - b[i]`` with a paired-bootstrap interval; ``a`` and ``b`` share items."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same items: {len(a)} vs {len(b)}")
    return mean_interval(
        np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64),
        resamples=resamples,
        seed=seed,
        level=level,
        clusters=clusters,
    )


_PIECE = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_WORD = re.compile(r"\w+", re.UNICODE)


def _pieces(answer: str) -> list[str]:
    """Words and lone symbols: symbols inside a run of non-space text that holds a letter or
    digit join its words (``/usr/share``, ``1.2``, ``x-y``) and are not counted."""
    pieces: list[str] = []
    for run in answer.lower().split():
        pieces.extend(
            _WORD.findall(run) if any(ch.isalnum() for ch in run) else _PIECE.findall(run)
        )
    return pieces


def is_degenerate(answer: str, dominance: float = 0.5, min_repeats: int = 4) -> bool:
    """True for an empty answer or one dominated by one repeated token or symbol.

    The answer is cut into words and lone symbols (a path or a dotted number is its words, not
    its separators); it is degenerate when it has no letters or digits at all, or when one
    piece makes at least ``dominance`` of the pieces and repeats at least ``min_repeats`` times.
    """
    pieces = _pieces(answer)
    if not pieces or not any(ch.isalnum() for ch in answer):
        return True
    _, top = Counter(pieces).most_common(1)[0]
    return top >= min_repeats and top / len(pieces) >= dominance
