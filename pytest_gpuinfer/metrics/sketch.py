"""A latency distribution in bounded memory: a t-digest plus exact count, sum, min and max.

Long load runs cannot keep every sample. :class:`LatencySketch` keeps about 16 KiB whatever the
number of values: ``fastdigest`` (a Rust t-digest with 1,000 centroids, chosen by
``bench/bench_memory.py --sketches``: the most accurate and among the fastest of the structures
measured, fed from numpy arrays in batches). Count, sum, min and max are exact.

A t-digest gives no hard error guarantee, so :meth:`LatencySketch.bounds` says how far an estimate
can be trusted: the means of the centroids two places either side of the ones holding the ranks
the exact (linearly interpolated) percentile is taken between. Samples sit between the means of
the centroids around them, so the exact value lies within those bounds (measured: 1,919 of 1,920
percentiles of eight latency-like distributions, the miss 0.004 % outside, on a tie). At the tails
the digest keeps single values, so the bounds there are the neighbouring samples themselves.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

CENTROIDS = 1000
"""The t-digest's size: about 16 KiB, worst error 0.15 % from p50 to p99.9 on 1M values."""

BOUND_CENTROIDS = 2
"""Centroids either side of the percentile's own that its bounds reach to."""

_NAN = float("nan")


def _digest(max_centroids: int = CENTROIDS) -> Any:
    """A new empty fastdigest t-digest."""
    from fastdigest import TDigest

    return TDigest(max_centroids)


class LatencySketch:
    """Count, sum, min, max and a t-digest of a stream of values (seconds, tokens, ...)."""

    __slots__ = ("_digest", "centroids", "count", "max", "min", "total")

    def __init__(self, centroids: int = CENTROIDS) -> None:
        """``centroids``: the digest's size (fewer: smaller and rougher; a time window's)."""
        self.centroids = centroids
        self._digest: Any = None  # made on the first value (an empty sketch costs nothing)
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, values: npt.NDArray[np.float64], weights: npt.NDArray[Any] | None = None) -> None:
        """Fold an array of values in (value i counted ``weights[i]`` times when given)."""
        if values.size == 0:
            return
        if self._digest is None:
            self._digest = _digest(self.centroids)
        if weights is None:
            self._digest.batch_update(values)
            self.count += int(values.size)
            self.total += float(values.sum())
        else:
            self._digest.batch_update(values, weights.astype(np.float64))
            self.count += int(weights.sum())
            self.total += float(np.dot(values, weights))
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))

    def merge(self, other: LatencySketch) -> None:
        """Fold another sketch in (another worker's, another window's)."""
        if other.count == 0:
            return
        if self._digest is None:
            self._digest = _digest(self.centroids)
        self._digest.merge_inplace(other._digest)
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    @property
    def mean(self) -> float:
        """The exact mean (NaN without values)."""
        return self.total / self.count if self.count else _NAN

    def quantile(self, q: float) -> float:
        """The estimate of quantile ``q`` (0..1), interpolated as numpy's default percentile is."""
        if self.count == 0:
            return _NAN
        if q <= 0.0:
            return self.min
        if q >= 1.0:
            return self.max
        value = float(self._digest.quantile(q))
        return min(max(value, self.min), self.max)

    def quantiles(self, qs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Estimates of many quantiles (0..1) at once."""
        if self.count == 0:
            return np.full(qs.shape, _NAN)
        out = np.asarray(self._digest.quantile_vec(qs.tolist()), dtype=np.float64)
        out = np.clip(out, self.min, self.max)
        out[qs <= 0.0] = self.min
        out[qs >= 1.0] = self.max
        return out

    def bounds(self, q: float) -> tuple[float, float]:
        """Where the exact percentile ``q`` (0..1) lies, as far as the digest can tell."""
        if self.count == 0:
            return _NAN, _NAN
        centroids = np.asarray(self._digest.centroids, dtype=np.float64)
        means, weights = centroids[:, 0], centroids[:, 1]
        ends = np.cumsum(weights)  # centroid k holds ranks ends[k-1] .. ends[k] - 1
        rank = q * (self.count - 1)
        low = int(np.searchsorted(ends, math.floor(rank), side="right"))
        high = int(np.searchsorted(ends, min(math.floor(rank) + 1, self.count - 1), side="right"))
        last = len(means) - 1
        lo = self.min if low - BOUND_CENTROIDS <= 0 else float(means[low - BOUND_CENTROIDS])
        hi = self.max if high + BOUND_CENTROIDS >= last else float(means[high + BOUND_CENTROIDS])
        return min(lo, self.quantile(q)), max(hi, self.quantile(q))

    def __getstate__(self) -> dict[str, Any]:
        """Picklable form (workers send their sketches back over a pipe)."""
        return {
            "centroids": self.centroids,
            "digest": None if self._digest is None else self._digest.to_bytes(),
            "count": self.count,
            "total": self.total,
            "min": self.min,
            "max": self.max,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Rebuild from :meth:`__getstate__`."""
        from fastdigest import TDigest

        self.centroids = state["centroids"]
        data = state["digest"]
        self._digest = None if data is None else TDigest.from_bytes(data)
        self.count = state["count"]
        self.total = state["total"]
        self.min = state["min"]
        self.max = state["max"]

    def __repr__(self) -> str:
        return f"LatencySketch(count={self.count}, min={self.min!r}, max={self.max!r})"
