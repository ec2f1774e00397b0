"""Uncertainty of held-out metrics: intervals for one column, for paired differences, and tests.

A metric's per-example scores are ``values`` with optional ``weights``; the
metric is their weighted mean ``sum(w * v) / sum(w)`` (weights 1: the plain
mean, e.g. exact match; token counts: a token-weighted loss).  The methods
come from scipy and are chosen by the kind of score (:func:`column_interval`,
:func:`paired_difference`):

* 0/1 scores, one column: the **Wilson score** interval
  (:func:`wilson_interval`; :func:`clopper_pearson_interval` is the exact
  one).  Valid at the edges: 0/30 gives ``[0, 0.114]``, never ``[0, 0]``.
* 0/1 scores, paired difference (tuned minus another column on the same
  examples): **Newcombe's** hybrid score interval for paired proportions
  (:func:`newcombe_paired_interval`, his method 10, built on Wilson limits),
  and **McNemar's exact test** (:func:`mcnemar_exact`).
* continuous scores, one column: the **BCa bootstrap** (``scipy.stats.bootstrap``,
  ``resamples`` resamples, the run's seed).
* continuous or weighted scores, paired difference: the **paired t interval**
  (:func:`paired_t_interval`; for weighted means on the linearised
  per-example contributions, the delta method).
* the train-vs-held-out gap of the memorisation check (different examples):
  an unpaired percentile bootstrap (:func:`unpaired_bootstrap_interval`).

Everything that enters the verdict (the paired differences and their tests)
is deterministic: no resampling, so another seed can never change it.  The
percentile bootstrap helpers (:func:`bootstrap_interval`,
:func:`paired_bootstrap_interval`) remain for callers that want them.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

#: the defaults of the run (config ``uncertainty``; the schema takes them from here)
RESAMPLES = 10000
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
    """Two-sided exact binomial test of ``successes`` in ``trials`` against p = 1/2 (``scipy.stats.binomtest``)."""
    if trials == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(int(successes), int(trials), 0.5).pvalue)


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> dict:
    """McNemar's exact test of two paired 0/1 scores.

    Returns ``{"gained": n(a=1, b=0), "lost": n(a=0, b=1), "p_value": ...}``:
    only the discordant examples count; under "no difference" each is as
    likely to go either way, so the p-value is the two-sided binomial test of
    ``gained`` out of ``gained + lost`` at 1/2.
    """
    va, vb = _binary_pair(a, b)
    gained = int(np.sum((va == 1) & (vb == 0)))
    lost = int(np.sum((va == 0) & (vb == 1)))
    return {"gained": gained, "lost": lost, "p_value": binomial_two_sided(gained, gained + lost)}


def _binary_pair(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    va, vb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if va.shape != vb.shape:
        raise ValueError(f"paired scores must cover the same examples: {va.shape} vs {vb.shape}")
    if not (is_binary(va) and is_binary(vb)):
        raise ValueError("McNemar's test and Newcombe's interval need 0/1 scores")
    return va, vb


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """``(low, high)``: the Wilson score interval of ``successes`` out of ``n`` (``scipy.stats.binomtest``)."""
    _check_confidence(confidence)
    if n <= 0:
        raise ValueError("no per-example values")
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return max(0.0, float(ci.low)), min(1.0, float(ci.high))


def clopper_pearson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """``(low, high)``: the exact (Clopper-Pearson) interval of ``successes`` out of ``n``."""
    _check_confidence(confidence)
    if n <= 0:
        raise ValueError("no per-example values")
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def newcombe_paired_interval(a: Sequence[float], b: Sequence[float],
                             confidence: float = CONFIDENCE) -> tuple[float, float]:
    """``(low, high)`` of ``mean(a) - mean(b)`` for 0/1 scores of the same examples: Newcombe's method 10.

    The Wilson limits of each column's proportion are combined with the
    correlation (phi, continuity-corrected) of the paired 0/1 scores (Newcombe 1998, "Improved
    confidence intervals for the difference between binomial proportions
    based on paired data").  Valid at small n and at the edges (a column at
    0/n or n/n), where a Wald or percentile-bootstrap interval collapses.
    """
    va, vb = _binary_pair(a, b)
    n = len(va)
    if not n:
        raise ValueError("no per-example values")
    both = int(np.sum((va == 1) & (vb == 1)))
    only_a = int(np.sum((va == 1) & (vb == 0)))
    only_b = int(np.sum((va == 0) & (vb == 1)))
    neither = n - both - only_a - only_b
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = wilson_interval(both + only_a, n, confidence)
    l2, u2 = wilson_interval(both + only_b, n, confidence)
    # phi of the 2x2 table, with Newcombe's correction: a positive association counts only beyond n/2
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    association = both * neither - only_a * only_b
    association = association - n / 2 if association > n / 2 else min(association, 0)
    phi = association / math.sqrt(margins) if margins else 0.0
    difference = p1 - p2
    below = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    above = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    return max(-1.0, difference - math.sqrt(max(below, 0.0))), min(1.0, difference + math.sqrt(max(above, 0.0)))


def _contributions(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-example linearised contributions of a weighted mean (the delta method): their mean is 0 and
    their variance / n is the weighted mean's variance.  Weights 1: ``values - mean``."""
    total = weights.sum()
    mean = (weights * values).sum() / total
    return len(values) * weights * (values - mean) / total


def paired_t_interval(a: Sequence[float], b: Sequence[float], weights_a: Optional[Sequence[float]] = None,
                      weights_b: Optional[Sequence[float]] = None, *,
                      confidence: float = CONFIDENCE) -> tuple[float, float]:
    """``(low, high)`` of ``mean(a) - mean(b)`` where ``a[i]`` and ``b[i]`` score the same example ``i``:
    the paired t interval (``scipy.stats.t``) on the per-example differences (for weighted means, on the
    differences of their linearised contributions).  Deterministic; every difference equal gives a point."""
    _check_confidence(confidence)
    va, wa = _arrays(a, weights_a)
    vb, wb = _arrays(b, weights_b)
    if len(va) != len(vb):
        raise ValueError(f"paired scores must cover the same examples: {len(va)} vs {len(vb)}")
    difference = weighted_mean(va, wa) - weighted_mean(vb, wb)
    n = len(va)
    if n < 2:
        return difference, difference
    spread = float(np.std(_contributions(va, wa) - _contributions(vb, wb), ddof=1))
    if not math.isfinite(spread) or spread == 0.0:
        return difference, difference
    from scipy.stats import t

    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * spread / math.sqrt(n)
    return difference - half, difference + half


def bca_interval(values: Sequence[float], weights: Optional[Sequence[float]] = None, *,
                 resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float]:
    """``(low, high)``: the BCa bootstrap interval of the weighted mean (``scipy.stats.bootstrap``).

    Every value equal gives that point; scipy's degenerate cases fall back to
    the percentile interval."""
    _check_confidence(confidence)
    v, w = _arrays(values, weights)
    if len(v) < 2 or np.all(v == v[0]):
        m = weighted_mean(v, w)
        return m, m
    import warnings

    from scipy.stats import bootstrap

    def statistic(x, y, axis=-1):
        return (x * y).sum(axis=axis) / y.sum(axis=axis)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = bootstrap((v, w), statistic, paired=True, vectorized=True, n_resamples=int(resamples),
                           confidence_level=confidence, method="BCa", random_state=np.random.default_rng(seed))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        return bootstrap_interval(v, w, resamples=resamples, confidence=confidence, seed=seed)
    return low, high


#: names of the methods, as the report prints them
WILSON, NEWCOMBE, PAIRED_T, BCA = ("Wilson score", "Newcombe paired score (method 10)", "paired t",
                                   "BCa bootstrap")


def p_value_test(method) -> str:
    """The short name of the test behind a change's ``p_value``, read from its ``method`` (as
    :func:`paired_difference` writes it and ``metrics.json`` keeps it): ``"McNemar"``, ``"paired t"``,
    or ``""`` when the method names neither."""
    method = method or ""
    if "McNemar" in method:
        return "McNemar"
    return "paired t" if method.startswith(PAIRED_T) else ""


def column_interval(values: Sequence[float], weights: Optional[Sequence[float]] = None, *,
                    confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """``{"low", "high", "n", "method"}`` of one column's metric: Wilson for unweighted 0/1 scores, else BCa."""
    v, w = _arrays(values, weights)
    if weights is None and is_binary(v):
        low, high = wilson_interval(int(v.sum()), len(v), confidence)
        return {"low": low, "high": high, "n": len(v), "method": WILSON}
    low, high = bca_interval(v, w, resamples=resamples, confidence=confidence, seed=seed)
    return {"low": low, "high": high, "n": len(v), "method": BCA}


def paired_difference(a: Sequence[float], b: Sequence[float], weights_a: Optional[Sequence[float]] = None,
                      weights_b: Optional[Sequence[float]] = None, *, confidence: float = CONFIDENCE) -> dict:
    """``mean(a) - mean(b)`` over the same examples with its interval and test, by the kind of score.

    Unweighted 0/1 scores: Newcombe's paired interval and McNemar's exact
    test (``gained``, ``lost``, ``p_value``).  Otherwise: the paired t
    interval and the paired t test's ``p_value``.  Always ``value``, ``low``,
    ``high``, ``n``, ``method`` and ``spread`` (the standard deviation of the
    per-example differences, for sample-size estimates).  Deterministic.
    """
    va, wa = _arrays(a, weights_a)
    vb, wb = _arrays(b, weights_b)
    if len(va) != len(vb):
        raise ValueError(f"paired scores must cover the same examples: {len(va)} vs {len(vb)}")
    n = len(va)
    value = weighted_mean(va, wa) - weighted_mean(vb, wb)
    differences = _contributions(va, wa) - _contributions(vb, wb)
    spread = float(np.std(differences, ddof=1)) if n > 1 else 0.0
    if weights_a is None and weights_b is None and is_binary(va) and is_binary(vb):
        low, high = newcombe_paired_interval(va, vb, confidence)
        return {"value": value, "low": low, "high": high, "n": n, "method": NEWCOMBE + "; McNemar exact test",
                "spread": spread, **mcnemar_exact(va, vb)}
    low, high = paired_t_interval(va, vb, wa, wb, confidence=confidence)
    p_value = 1.0 if value == 0 else 0.0
    if n > 1 and spread > 0:
        from scipy.stats import t

        p_value = float(2 * t.sf(abs(value) / (spread / math.sqrt(n)), n - 1))
    return {"value": value, "low": low, "high": high, "n": n, "method": PAIRED_T + " (interval and test)",
            "spread": spread, "p_value": p_value}
