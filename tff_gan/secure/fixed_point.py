"""Weighted fixed point: float updates as integers whose sums are exact (`he`, `secagg`).

A client clips its update to a public L2 bound, scales it by 2^f, rounds it stochastically
(unbiased) and multiplies it by its integer weight n_k. The sum of such integers divided by
Σ n_k·2^f is the weighted mean of the clipped updates within 2^-f per coordinate, provided no
sum leaves the signed range of the modulus it is taken in; `most_fraction_bits` picks the
largest f for which that holds. Each aggregator wraps these with its own modulus and flag:
`he.choose_params` (t ≈ 2^30) and `secagg.choose_fraction_bits` (2^32).
"""

from __future__ import annotations

import math
import secrets

import numpy as np

MIN_FRACTION_BITS = 8  # With fewer, rounding errors (up to 2^-f per coordinate) swamp updates.
MAX_FRACTION_BITS = 62


def check_count(name: str, value) -> None:
  """Raises a one-line ValueError unless `value` is an integer ≥ 1."""
  if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
    raise ValueError(f'{name} must be an integer >= 1, got {value!r}.')


def check_clip(clip: float) -> None:
  """Raises a one-line ValueError unless `clip` is positive and finite."""
  if not (math.isfinite(clip) and clip > 0):
    raise ValueError(f'clip must be positive and finite, got {clip}.')


def coordinate_bound(clip: float, fraction_bits: int) -> int:
  """The largest |integer| one coordinate of a clipped update encodes to, before weighting.

  |x| ≤ clip, and stochastic rounding picks floor(x·2^f) or the integer above it.
  """
  return math.floor(clip * 2.0**fraction_bits) + 1


def most_fraction_bits(clip: float, scale: int, limit: int,
                       min_fraction_bits: int = MIN_FRACTION_BITS) -> int | None:
  """The largest f in [min_fraction_bits, 62] with scale·coordinate_bound(clip, f) ≤ limit.

  Args:
    clip: The L2 bound every update is clipped to.
    scale: The most one coordinate of a sum adds up: clients × weight × multiplier.
    limit: The largest |value| a sum may reach in the modulus it is taken in.
    min_fraction_bits: The fewest bits worth having.

  Returns:
    f, or None when even `min_fraction_bits` would leave the range (the caller says why).
  """
  for fraction_bits in range(MAX_FRACTION_BITS, min_fraction_bits - 1, -1):
    if scale * coordinate_bound(clip, fraction_bits) <= limit:
      return fraction_bits
  return None


def encode(update: np.ndarray, clip: float, weight: int, fraction_bits: int,
           rng: np.random.Generator | None = None, *,
           aggregator: str | None = None) -> tuple[np.ndarray, bool]:
  """A client's update in weighted fixed point: round(clip_to_norm(x, clip)·2^f)·n_k.

  Rounding is stochastic and unbiased: floor(y) plus one with probability y - floor(y).

  Args:
    update: The flat float update.
    clip: Its L2 bound; a longer update is scaled down to it.
    weight: The client's integer weight n_k ≥ 1.
    fraction_bits: f.
    rng: The rounding's random numbers; by default seeded from the OS's entropy.
    aggregator: The `--aggregator` value to name in errors, if any.

  Returns:
    The signed int64 vector, and whether the update was clipped.
  """
  check_count('weight', weight)
  check_clip(clip)
  rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
  values = np.asarray(update, np.float64).ravel()
  norm = float(np.linalg.norm(values))
  if not math.isfinite(norm):
    flag = f'--aggregator={aggregator}: ' if aggregator else ''
    raise ValueError(f'{flag}an update has a non-finite value; it cannot be encoded.')
  clipped = norm > clip
  if clipped:
    values = values * (clip / norm)
  scaled = values * 2.0**fraction_bits
  rounded = np.floor(scaled)
  rounded += rng.random(scaled.shape) < scaled - rounded
  bound = coordinate_bound(clip, fraction_bits)  # Guards the headroom against float error.
  return np.clip(rounded, -bound, bound).astype(np.int64) * int(weight), clipped


def decode(sums: np.ndarray, total_weight: int, fraction_bits: int) -> np.ndarray:
  """The weighted mean Σ_k n_k·x_k / Σ_k n_k (float64) from the integer sums."""
  if total_weight < 1:
    raise ValueError(f'total_weight must be >= 1, got {total_weight}.')
  return np.asarray(sums, np.float64) / (float(total_weight) * 2.0**fraction_bits)
