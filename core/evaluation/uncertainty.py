"""Uncertainty of held-out metrics: bootstrap confidence intervals over examples and McNemar's test.

Pure numpy (scipy only when installed, for the binomial tail).  A metric's
per-example scores are ``values`` with optional ``weights``; the metric is
their weighted mean ``sum(w * v) / sum(w)`` (weights 1: the plain mean, e.g.
exact match; token counts: a token-weighted loss).

* :func:`bootstrap_interval`: percentile bootstrap of one metric, resampling
  examples with replacement.
* :func:`paired_bootstrap_interval`: the same for the difference of two
  metrics measured on the same examples (``a - b``; each resample draws the
  same example indices for both), e.g. tuned minus base.
* :func:`unpaired_bootstrap_interval`: the difference of two metrics on
  different examples (each side resampled on its own), e.g. the
  train-vs-held-out gap.
* :func:`mcnemar_exact`: the paired exact McNemar test of two 0/1 scores on
  the same examples (a two-sided binomial test on the discordant pairs).

Every function takes a ``seed`` (the run's) and is reproducible with it.  At
the extremes a percentile bootstrap collapses to a point (every example 0 or
every example 1 gives the interval ``[0, 0]`` or ``[1, 1]``); read such an
interval together with ``n``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

#: the defaults of the run (config ``uncertainty``)
RESAMPLES = 1000
CONFIDENCE = 0.95


def _arrays(values: Sequence[float], weights: Optional[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(values, dtype=float)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=float)
    if v.ndim != 1 or w.shape != v.shape:
        raise ValueError(f"values and weights must be flat and of equal length, got {v.shape} and {w.shape}")
    if not len(v):
        raise ValueError("no per-example values")
    if np.any(w < 0) or not np.all(np.isfinite(v)) or not np.all(np.isfinite(w)):
        raise ValueError("per-example values must be finite and weights non-negative")
    return v, w


def weighted_mean(values: Sequence[float], weights: Optional[Sequence[float]] = None) -> float:
    """``sum(w * v) / sum(w)`` (the plain mean without weights)."""
    v, w = _arrays(values, weights)
    total = w.sum()
    return float((w * v).sum() / total) if total > 0 else float("nan")


def _resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(int(resamples), n))


def _resampled_means(v: np.ndarray, w: np.ndarray, indices: np.ndarray) -> np.ndarray:
    weights = w[indices]
    totals = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (weights * v[indices]).sum(axis=1) / totals
    return means[np.isfinite(means)]


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if not len(samples):
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_interval(values: Sequence[float], weights: Optional[Sequence[float]] = None, *,
                       resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float]:
    """``(low, high)``: the percentile bootstrap interval of the weighted mean of ``values``."""
    v, w = _arrays(values, weights)
    return _percentiles(_resampled_means(v, w, _resample_indices(len(v), resamples, seed)), confidence)


def paired_bootstrap_interval(a: Sequence[float], b: Sequence[float], weights_a: Optional[Sequence[float]] = None,
                              weights_b: Optional[Sequence[float]] = None, *, resamples: int = RESAMPLES,
                              confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float]:
    """``(low, high)`` of ``mean(a) - mean(b)`` where ``a[i]`` and ``b[i]`` score the same example ``i``.

    Each resample draws one set of example indices and uses it for both
    sides, so what the two have in common (the hard examples) cancels out.
    """
    va, wa = _arrays(a, weights_a)
    vb, wb = _arrays(b, weights_b)
    if len(va) != len(vb):
        raise ValueError(f"paired scores must cover the same examples: {len(va)} vs {len(vb)}")
    indices = _resample_indices(len(va), resamples, seed)
    ta, tb = wa[indices].sum(axis=1), wb[indices].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = (wa[indices] * va[indices]).sum(axis=1) / ta - (wb[indices] * vb[indices]).sum(axis=1) / tb
    return _percentiles(diff[np.isfinite(diff)], confidence)


def unpaired_bootstrap_interval(a: Sequence[float], b: Sequence[float], weights_a: Optional[Sequence[float]] = None,
                                weights_b: Optional[Sequence[float]] = None, *, resamples: int = RESAMPLES,
                                confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float]:
    """``(low, high)`` of ``mean(a) - mean(b)`` for scores of different examples (resampled independently)."""
    va, wa = _arrays(a, weights_a)
    vb, wb = _arrays(b, weights_b)
    ma = _resampled_means(va, wa, _resample_indices(len(va), resamples, seed))
    mb = _resampled_means(vb, wb, _resample_indices(len(vb), resamples, seed + 1))
    size = min(len(ma), len(mb))
    return _percentiles(ma[:size] - mb[:size], confidence)


def is_binary(values: Sequence[float]) -> bool:
    """True when every value is 0 or 1 (an exact-match-style score)."""
    v = np.asarray(values, dtype=float)
    return bool(len(v)) and bool(np.all((v == 0) | (v == 1)))


def binomial_two_sided(successes: int, trials: int) -> float:
    """Two-sided exact binomial test of ``successes`` in ``trials`` against p = 1/2.

    ``min(1, 2 * P(X <= min(k, n - k)))``; from scipy when it is installed,
    else the exact sum of binomial terms.
    """
    if trials == 0:
        return 1.0
    smaller = min(successes, trials - successes)
    try:
        from scipy.stats import binom
    except ImportError:
        tail = sum(math.comb(trials, i) for i in range(smaller + 1)) / 2 ** trials
    else:
        tail = float(binom.cdf(smaller, trials, 0.5))
    return min(1.0, 2.0 * tail)


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> dict:
    """McNemar's exact test of two paired 0/1 scores.

    Returns ``{"gained": n(a=1, b=0), "lost": n(a=0, b=1), "p_value": ...}``:
    only the discordant examples count; under "no difference" each is as
    likely to go either way, so the p-value is the two-sided binomial test of
    ``gained`` out of ``gained + lost`` at 1/2.
    """
    va, vb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if va.shape != vb.shape:
        raise ValueError(f"paired scores must cover the same examples: {va.shape} vs {vb.shape}")
    if not (is_binary(va) and is_binary(vb)):
        raise ValueError("McNemar's test needs 0/1 scores")
    gained = int(np.sum((va == 1) & (vb == 0)))
    lost = int(np.sum((va == 0) & (vb == 1)))
    return {"gained": gained, "lost": lost, "p_value": binomial_two_sided(gained, gained + lost)}
