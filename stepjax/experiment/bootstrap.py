"""Hierarchical bootstrap of ratio metrics over seeds, then eval records.

Input: for each key (a group x metric, e.g. ("mrpo", "accuracy")) and each
of the S seeds, the per-record numerators and denominators of the metric
over that seed's N_s eval records (record_terms.py). Every key of a seed
must have the same N_s records in the same order: all groups of a seed are
scored on that seed's eval set, record i being the same scan.

One replicate draws S seed slots with replacement, then, per slot, N_s
records of that seed with replacement, as counts c_i. The SAME counts serve
every key, so a paired difference between two groups compares them on the
same resampled scans (their shared per-scan variation cancels). The metric
of a key in a slot is sum(c_i num_i) / sum(c_i den_i), NaN when the
denominator is 0. Callers reduce the float[B, S] replicates: the mean over
slots is the bootstrap distribution of the mean over seeds; its 2.5 and
97.5 percentiles are the 95% interval (`estimate`, `difference`,
`relative_difference`). One `seed` gives the same replicates every time.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

Terms = Sequence[tuple[np.ndarray, np.ndarray]]  # per seed: (num_N, den_N)


def replicates(
  terms_by_key: Mapping[Hashable, Terms],
  samples: int,
  seed: int,
  chunk: int = 256,
) -> dict[Hashable, np.ndarray]:
  """key -> float[samples, S]: each replicate's metric per seed slot."""
  keys = list(terms_by_key)
  sizes = _sizes(terms_by_key)
  num_seeds = len(sizes)
  num_SxNxK = [
    np.stack([terms_by_key[k][s][0] for k in keys], axis=1)
    for s in range(num_seeds)
  ]
  den_SxNxK = [
    np.stack([terms_by_key[k][s][1] for k in keys], axis=1)
    for s in range(num_seeds)
  ]
  rng = np.random.default_rng(seed)
  num_BxSxK = np.zeros((samples, num_seeds, len(keys)))
  den_BxSxK = np.zeros_like(num_BxSxK)
  for start in range(0, samples, chunk):
    rows = min(chunk, samples - start)
    seed_of_slot = rng.integers(0, num_seeds, size=(rows, num_seeds))
    for s, n in enumerate(sizes):
      b_idx, slot_idx = np.nonzero(seed_of_slot == s)
      if b_idx.size == 0:
        continue
      counts_MxN = rng.multinomial(n, np.full(n, 1.0 / n), size=b_idx.size)
      counts_MxN = counts_MxN.astype(np.float64)
      num_BxSxK[start + b_idx, slot_idx] = counts_MxN @ num_SxNxK[s]
      den_BxSxK[start + b_idx, slot_idx] = counts_MxN @ den_SxNxK[s]
  ratio_BxSxK = _divide(num_BxSxK, den_BxSxK)
  return {k: ratio_BxSxK[:, :, i] for i, k in enumerate(keys)}


def point(terms_by_key: Mapping[Hashable, Terms]) -> dict[Hashable, np.ndarray]:
  """key -> float[S]: the metric of each seed on all its records."""
  _sizes(terms_by_key)
  return {
    k: _divide(
      np.array([num.sum() for num, _ in per_seed]),
      np.array([den.sum() for _, den in per_seed]),
    )
    for k, per_seed in terms_by_key.items()
  }


def seed_mean(values: np.ndarray) -> np.ndarray | float:
  """Mean over the last (seed) axis, ignoring NaN; NaN if all are."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    return np.nanmean(values, axis=-1)


def interval(values_B: np.ndarray, level: float = 0.95) -> list[float] | None:
  """Percentile interval of the finite replicates; None if there are none."""
  finite = values_B[np.isfinite(values_B)]
  if finite.size == 0:
    return None
  tail = 100 * (1 - level) / 2
  lo, hi = np.percentile(finite, [tail, 100 - tail])
  return [float(lo), float(hi)]


def estimate(point_S: np.ndarray, reps_BxS: np.ndarray) -> dict[str, Any]:
  """{"value": mean over seeds, "ci": [lo, hi] or None}."""
  return _summary(seed_mean(point_S), seed_mean(reps_BxS))


def difference(
  point_a: np.ndarray,
  point_b: np.ndarray,
  reps_a: np.ndarray,
  reps_b: np.ndarray,
) -> dict[str, Any]:
  """Mean over seeds of a - b (paired by seed and by record)."""
  return estimate(point_a - point_b, reps_a - reps_b)


def relative_difference(
  point_a: np.ndarray,
  point_b: np.ndarray,
  reps_a: np.ndarray,
  reps_b: np.ndarray,
) -> dict[str, Any]:
  """(mean_a - mean_b) / mean_b, means over seeds (e.g. -0.39 = 39% less)."""
  mean_a, mean_b = seed_mean(point_a), seed_mean(point_b)
  reps = _divide(seed_mean(reps_a) - seed_mean(reps_b), seed_mean(reps_b))
  return _summary(_divide(mean_a - mean_b, mean_b), reps)


def _summary(value: float, reps_B: np.ndarray) -> dict[str, Any]:
  value = float(value)
  return {
    "value": value if np.isfinite(value) else None,
    "ci": interval(np.asarray(reps_B)),
  }


def _divide(num, den):
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)


def _sizes(terms_by_key: Mapping[Hashable, Terms]) -> list[int]:
  if not terms_by_key:
    raise ValueError("bootstrap: no metrics given")
  sizes = None
  for key, per_seed in terms_by_key.items():
    these = [len(num) for num, _ in per_seed]
    if any(len(num) != len(den) for num, den in per_seed):
      raise ValueError(f"bootstrap: {key}: numerator and denominator differ")
    if sizes is None:
      sizes = these
    elif these != sizes:
      raise ValueError(
        f"bootstrap: {key} has {these} records per seed, other keys "
        f"{sizes}; every key of a seed must use that seed's eval records"
      )
  if not sizes or min(sizes) == 0:
    raise ValueError("bootstrap: every seed needs at least one eval record")
  return sizes
