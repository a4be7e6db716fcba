"""`tff.aggregators` factories for client updates.

Everything here is TFF's own aggregation machinery, configured for GAN training; this module
only chooses and checks the parameters.
"""

from __future__ import annotations

import tensorflow_federated as tff

from tff_gan.process import default_aggregator

__all__ = ['AGGREGATORS', 'build_aggregator', 'default_aggregator', 'dp_aggregator']

AGGREGATORS = ('mean', 'unweighted_mean', 'robust')


def build_aggregator(name: str):
  """A non-private aggregator by name.

  Args:
    name: `mean` (weighted by each client's example count: FedAvg), `unweighted_mean` (every
      client counts the same), or `robust` (TFF's `tff.learning.robust_aggregator`: updates
      with a non-finite value or a norm far above the recent ones are zeroed, and norms are
      clipped to an adaptive estimate of their 80th percentile, starting at 1).
  """
  if name == 'mean':
    return default_aggregator()
  if name == 'unweighted_mean':
    return tff.aggregators.UnweightedMeanFactory()
  if name == 'robust':
    return tff.learning.robust_aggregator(zeroing=True, clipping=True, weighted=True)
  raise ValueError(f"unknown aggregator '{name}'; choose one of: {', '.join(AGGREGATORS)}.")


def dp_aggregator(
    *,
    noise_multiplier: float,
    clients_per_round: float,
    clip: float,
    adaptive_clip_quantile: float | None = None,
) -> tff.aggregators.UnweightedAggregationFactory:
  """DP-FedAvg aggregation: clip each client update, sum, add Gaussian noise, average.

  Each client's whole update (every tensor of every network it trained) is one record: it is
  scaled to L2 norm at most the clip C, the clipped updates are summed, Gaussian noise of
  standard deviation z·C is added and the sum is divided by `clients_per_round` — a fixed
  denominator, which keeps the sensitivity bounded under Poisson sampling too. Clients weigh
  equally (weighting by example counts would let one client's count leak).

  Args:
    noise_multiplier: z ≥ 0 (0 clips without noise).
    clients_per_round: The expected number of clients per round.
    clip: The clip norm C > 0; with adaptive clipping, its initial value.
    adaptive_clip_quantile: If set, C adapts toward this quantile (in (0, 1)) of the client
      update norms (Andrew et al. 2021); part of the privacy budget pays for the noised
      quantile estimate, and the aggregator's DP event accounts for it.

  Returns:
    A `tff.aggregators.DifferentiallyPrivateFactory`.

  Raises:
    ValueError: On out-of-range arguments, or when adaptive clipping cannot reach
      `noise_multiplier` with this few clients per round.
  """
  if not noise_multiplier >= 0:
    raise ValueError(f'--dp_noise_multiplier must be >= 0, got {noise_multiplier}.')
  if not clip > 0:
    raise ValueError(f'--dp_clip must be positive, got {clip}.')
  if adaptive_clip_quantile is None:
    return tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
        noise_multiplier=float(noise_multiplier),
        clients_per_round=float(clients_per_round),
        clip=float(clip),
    )
  if not 0 < adaptive_clip_quantile < 1:
    raise ValueError(
        f'--dp_adaptive_clip_quantile must be in (0, 1), got {adaptive_clip_quantile}.')
  try:
    return tff.aggregators.DifferentiallyPrivateFactory.gaussian_adaptive(
        noise_multiplier=float(noise_multiplier),
        clients_per_round=float(clients_per_round),
        initial_l2_norm_clip=float(clip),
        target_unclipped_quantile=float(adaptive_clip_quantile),
    )
  except ValueError as e:
    raise ValueError(
        f'adaptive clipping cannot reach noise multiplier {noise_multiplier} with '
        f'{clients_per_round:g} clients per round (the clipped-count noise would need more '
        f'budget than there is): it needs more than {10 * noise_multiplier:g} clients per '
        'round; sample more clients, lower the noise multiplier, or use fixed clipping.') from e
