"""`tff.aggregators` factories for client updates.

Everything here is TFF's own aggregation machinery, configured for GAN training; this module
only chooses and checks the parameters.
"""

from __future__ import annotations

import collections
import logging

import dp_accounting
import tensorflow as tf
import tensorflow_federated as tff
import tensorflow_privacy as tfp
from tensorflow_model_optimization.python.core.internal import tensor_encoding

from tff_gan.algorithms.composition import default_aggregator
from tff_gan.choices import AGGREGATORS, DEFAULT_BITS, MAX_BITS
from tff_gan.core import seeds

__all__ = [
    'AGGREGATORS', 'DEFAULT_BITS', 'MAX_BITS', 'MIN_QUANTIZED_ELEMENTS', 'build_aggregator',
    'default_aggregator', 'dp_aggregator',
]


# Tensors with fewer elements are sent as float32: for them the quantizer's per-tensor range
# header (two float32s) and bit-packing padding would eat most of the saving.
MIN_QUANTIZED_ELEMENTS = 64


def build_aggregator(name: str, *, bits: int = DEFAULT_BITS, hadamard: bool = False):
  """A non-private aggregator by name.

  Args:
    name: One of `AGGREGATORS`:

      * `mean`: weighted by each client's example count (FedAvg).
      * `unweighted_mean`: every client counts the same.
      * `robust`: TFF's `tff.learning.robust_aggregator`. Updates with a non-finite value or
        a norm far above the recent ones are zeroed, and norms are clipped to an adaptive
        estimate of their 80th percentile, starting at 1.
      * `secure`: TFF's `tff.learning.secure_aggregator`, zeroing and clipping as `robust`,
        then a weighted mean whose sums go through `tff.federated_secure_sum_bitwidth`: each
        value is clipped to an adaptive range (twice a 95th-percentile estimate of the largest
        magnitude, starting at ±100) and quantized to 32-bit integers, the example counts to
        20 bits. The simulation runtime executes the secure sums as plain sums (see
        `contexts`): the bit widths, clipping and rounding are real, the cryptography is not.
      * `compressed`: a weighted mean of uniformly quantized updates
        (`tff.aggregators.EncodedSumFactory`): every tensor with at least
        `MIN_QUANTIZED_ELEMENTS` elements is sent as `bits`-bit integers between its own
        minimum and maximum, with stochastic rounding (unbiased, from TF's unseeded random
        numbers: runs are not bitwise reproducible).
    bits: Quantization bits for `compressed`, 1 to `MAX_BITS`.
    hadamard: For `compressed`, rotate each tensor by a randomized Hadamard transform before
      quantizing, which spreads outlying coordinates and narrows the quantization range.

  Raises:
    ValueError: For an unknown name or out-of-range `bits`.
  """
  if name == 'mean':
    return default_aggregator()
  if name == 'unweighted_mean':
    return tff.aggregators.UnweightedMeanFactory()
  if name == 'robust':
    return tff.learning.robust_aggregator(zeroing=True, clipping=True, weighted=True)
  if name == 'secure':
    _hide_library_notice('tensorflow', 'Object was never used')
    return tff.learning.secure_aggregator(zeroing=True, clipping=True, weighted=True)
  if name == 'compressed':
    return tff.aggregators.MeanFactory(
        value_sum_factory=quantized_sum(bits=bits, hadamard=hadamard), no_nan_division=True)
  raise ValueError(f"unknown aggregator '{name}'; choose one of: {', '.join(AGGREGATORS)}.")


class _DropMessage(logging.Filter):
  """Drops log records whose message contains `text`."""

  def __init__(self, text: str):
    super().__init__()
    self.text = text

  def filter(self, record: logging.LogRecord) -> bool:
    return self.text not in record.getMessage()


def _hide_library_notice(logger_name: str, text: str) -> None:
  """Hides a notice a library logs about its own internals, which says nothing actionable.

  TFF's secure sum builds a bounds assert it never runs, and TF logs a page about each one;
  tensor_encoding's bit-packing warns at every build that it may use extra memory. Left in,
  they would bury our output. Other messages of those loggers still show.
  """
  logger = logging.getLogger(logger_name)
  if not any(isinstance(f, _DropMessage) and f.text == text for f in logger.filters):
    logger.addFilter(_DropMessage(text))


def quantized_sum(*, bits: int, hadamard: bool) -> tff.aggregators.EncodedSumFactory:
  """A sum of uniformly quantized (optionally Hadamard-rotated) tensors, bit-packed."""
  if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
    raise ValueError(f'--bits must be an integer from 1 to {MAX_BITS}, got {bits!r}.')
  _hide_library_notice('root', 'consider different bitpacking method')
  encoders = tensor_encoding.encoders
  quantizer = encoders.hadamard_quantization if hadamard else encoders.uniform_quantization

  def encoder_for(spec):
    if spec.shape.num_elements() >= MIN_QUANTIZED_ELEMENTS:
      return encoders.as_gather_encoder(quantizer(bits), spec)
    return encoders.as_gather_encoder(encoders.identity(), spec)

  return tff.aggregators.EncodedSumFactory(encoder_for)


class KeyedGaussianSumQuery(tfp.GaussianSumQuery):
  """TF Privacy's Gaussian sum query, its noise drawn from a key instead of TF's unseeded
  generator.

  The noise of the i-th release is `stateless_normal` under `seeds.keyed_seed(key, i)`; i
  is counted in the query's global state (`draws`), which the aggregator keeps in the server
  state, so a checkpoint holds how many draws were made and never the key. Clipping, the
  noise's standard deviation and the DP event are TF Privacy's.
  """

  _GlobalState = collections.namedtuple('_GlobalState', ['l2_norm_clip', 'stddev', 'draws'])

  def __init__(self, l2_norm_clip: float, stddev: float, key: tuple[int, int]):
    super().__init__(l2_norm_clip, stddev)
    self._key = tuple(int(k) for k in key)

  def make_global_state(self, l2_norm_clip, stddev, draws=0):
    return self._GlobalState(tf.cast(l2_norm_clip, tf.float32), tf.cast(stddev, tf.float32),
                             tf.cast(draws, tf.int64))

  def get_noised_result(self, sample_state, global_state):
    leaves = tf.nest.flatten(sample_state)
    leaf_seeds = tf.random.experimental.stateless_split(
        seeds.keyed_seed(self._key, global_state.draws), len(leaves))
    noised = [leaf + tf.random.stateless_normal(tf.shape(leaf), leaf_seeds[i],
                                                stddev=global_state.stddev, dtype=leaf.dtype)
              for i, leaf in enumerate(leaves)]
    event = dp_accounting.GaussianDpEvent(global_state.stddev / global_state.l2_norm_clip)
    return (tf.nest.pack_sequence_as(sample_state, noised),
            global_state._replace(draws=global_state.draws + 1), event)


def dp_aggregator(
    *,
    noise_multiplier: float,
    clients_per_round: float,
    clip: float,
    noise_key: tuple[int, int],
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
    noise_key: The key of the update noise (`seeds.noise_key`; `KeyedGaussianSumQuery`).
    adaptive_clip_quantile: If set, C adapts toward this quantile (in (0, 1)) of the client
      update norms (Andrew et al. 2021); part of the privacy budget pays for the noised
      quantile estimate, and the aggregator's DP event accounts for it. This is TFF's
      `gaussian_adaptive` as it stands: its two noises come from TF's unseeded generator,
      not from `noise_key`.

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
  if not clients_per_round > 0:
    raise ValueError(f'clients_per_round must be positive, got {clients_per_round}.')
  if adaptive_clip_quantile is None:
    return tff.aggregators.DifferentiallyPrivateFactory(tfp.NormalizedQuery(
        KeyedGaussianSumQuery(float(clip), float(clip * noise_multiplier), noise_key),
        denominator=float(clients_per_round)))
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
