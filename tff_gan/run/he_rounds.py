"""Synchronous rounds under `--aggregator=he`: the clients' updates summed encrypted (BFV).

A round runs the process's two halves (`GanProcess.client_work`, `GanProcess.server_step`)
with the encrypted sum between them:

1. Every sampled client does its local work (TFF, as in any round).
2. Each client flattens its update, clips it to the public L2 bound `--he_clip`, encodes it
   in fixed point with stochastic rounding, multiplies it by its example count n_k and
   encrypts it under the key holder's public key (`secure.he`), with its losses (mapped into
   the same range), whether it was clipped, and n_k in slots after the update.
3. The aggregator, a separate process that holds only the public context
   (`secure.he_process`), adds the ciphertexts.
4. The key holder decrypts the sum only, and releases Σ n_k·x_k / Σ n_k: the clients'
   weighted mean update, mean losses and clipped fraction.
5. The server half applies that mean with the server optimizer, as the update of one client
   of weight Σ n_k.

SIMULATED: every role runs on this machine. Each client's encoding and encryption run in the
trainer process on the client's behalf, and the key holder is an object of the trainer
process; the aggregator runs in its own process, which holds no secret key (it cannot
decrypt, and the test suite shows that it cannot). So the code computes the sum from
ciphertexts alone and decrypts nothing but the sum, yet in this simulation the trainer
process also saw every update in the clear.

With user-level differential privacy (`HeDp`), clipping moves to the clients: each clips
its whole update to the DP clip C (less the most that rounding can add, so the encoded update
is within C too) and sends it unweighted, with nothing else. The key holder, the trusted
curator, decrypts the sum of the clipped updates, adds Gaussian noise of standard deviation
z·C drawn under the run's DP noise key (`core.seeds.noise_key`), and releases the sum
divided by the expected clients per round: DP-FedAvg's fixed-denominator mean, accounted as
`--aggregator=mean`'s. No loss, count or clipping flag is released.

The stochastic rounding draws from (seed, round, client), so a run, and a resumed run, is
repeatable. The key is new in every process: nothing encrypted outlives a round.
"""

from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np
import tensorflow as tf

from tff_gan.core import seeds
from tff_gan.secure import he, he_process

# Losses beyond ±METRIC_RANGE are clipped before they are encrypted.
METRIC_RANGE = 64.0
CLIPPED_METRIC = 'clipped_fraction'
_ROUNDING_SALT = 0x6865  # Separates the rounding's random numbers from every other stream.
_NOISE_SALT = 0x68654450  # Separates the key holder's DP noise from the key's other draws.


@dataclasses.dataclass(frozen=True)
class HeDp:
  """User-level DP with `--aggregator=he` (module docstring).

  Attributes:
    noise_multiplier: z ≥ 0.
    clip: C > 0, the L2 bound of a client's update.
    clients_per_round: The expected clients per round, the mean's fixed denominator.
    noise_key: The key the key holder's noise descends from (`core.seeds.noise_key`).
  """

  noise_multiplier: float
  clip: float
  clients_per_round: float
  noise_key: tuple[int, int]


def max_client_weight(client_sizes, local_epochs: int, batch_size: int,
                      local_steps: int | None) -> int:
  """The largest example count n_k a client can report in a round (its `num_examples`)."""
  most = int(max(client_sizes)) * local_epochs
  if local_steps:
    most = min(most, local_steps * batch_size)
  return max(most, 1)


def check_bounds(*, clip: float, max_weight: int, max_clients: int, seed: int,
                 dp: HeDp | None = None) -> None:
  """Raises `ValueError` (one line naming the limit) if `HeRounds` with these settings
  could not hold its sums in the plaintext modulus; builds no key."""
  del seed  # Rounding only.
  _params(clip, max_weight, max_clients, dp)


def _params(clip: float, max_weight: int, max_clients: int, dp: HeDp | None) -> he.HeParams:
  if dp is not None:  # Unweighted updates within the DP clip.
    return he.choose_params(dp.clip, 1, max_clients)
  return he.choose_params(clip, max_weight, max_clients)


class HeRounds:
  """Runs rounds of a `GanProcess` with the encrypted sum (module docstring).

  Use as a context manager, or call `close`: it owns the aggregator process.
  """

  def __init__(self, process, *, clip: float, max_weight: int, max_clients: int, seed: int,
               dp: HeDp | None = None):
    """Creates the key holder, the public context and the aggregator process.

    Args:
      process: A `GanProcess` taking dataset keys (`GanProcess.with_client_data`).
      clip: `--he_clip`, the public L2 bound of a client's update.
      max_weight: The largest n_k a client can report (`max_client_weight`).
      max_clients: The most clients one round can sum.
      seed: The run seed, which the stochastic rounding descends from.
      dp: User-level DP (`HeDp`): `clip` and `max_weight` are then unused.

    Raises:
      ValueError: If no fixed-point format fits these bounds in the plaintext modulus (one
        line naming the limit).
    """
    self.params = _params(clip, max_weight, max_clients, dp)
    self._process, self._max_weight, self._seed, self._dp = process, max_weight, seed, dp
    self._clip = clip if dp is None else dp.clip
    self._key_holder = he.KeyHolder(self.params)
    self.public_context = self._key_holder.public_context_bytes()
    self._encryptor = he.Encryptor(self.public_context, self.params)
    self._aggregator = he_process.AggregatorProcess(self.public_context)
    self._has_context: set[int] = set()  # Clients that downloaded this process's key.

  def close(self) -> None:
    """Stops the aggregator process."""
    self._aggregator.close()

  def __enter__(self) -> HeRounds:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def next(self, state, keys, client_ids, round_num: int):
    """One round from `state` on the clients with these dataset keys.

    Returns:
      `(new_state, metrics, traffic)`: the server half's metrics (the decrypted means as the
      clients' metrics, plus `CLIPPED_METRIC`), and `traffic` the bytes that travelled:
      `{'up': ciphertexts, 'context_down': public contexts sent to clients new to the key}`.
    """
    outputs = self._process.client_work(state, keys)
    self._aggregator.reset()
    bytes_up, total_discarded, template = 0, 0, None
    for client_id, (output, discarded) in zip(client_ids, outputs, strict=True):
      template = output
      total_discarded += int(discarded)
      weight = round(float(output.num_examples))
      if discarded or weight < 1:  # Non-finite, or no data: it sends nothing.
        continue
      if self._dp is not None:
        weight = 1  # DP-FedAvg: every client counts the same.
      elif weight > self._max_weight:
        raise RuntimeError(f'client {client_id} reports {weight} examples, above the bound '
                           f'{self._max_weight} the HE parameters were chosen for.')
      encrypted = self._encrypt(output, weight, client_id, round_num)
      self._aggregator.add(encrypted)
      bytes_up += encrypted.nbytes
    new_clients = set(int(c) for c in client_ids) - self._has_context
    self._has_context |= new_clients
    traffic = {'up': bytes_up, 'context_down': len(new_clients) * len(self.public_context)}
    if self._dp is None:
      mean_output, clipped = self._decrypted_mean(template, summed=bytes_up > 0)
    else:
      mean_output, clipped = self._noised_mean(template, round_num, summed=bytes_up > 0), None
    state, metrics = self._process.server_step(
        state, [mean_output], [np.int32(total_discarded)], [np.float32(1.0)])
    metrics = collections.OrderedDict(metrics)
    if clipped is not None:
      metrics[CLIPPED_METRIC] = clipped
    return state, metrics, traffic

  def _encrypt(self, output, weight: int, client_id: int, round_num: int) -> he.EncryptedUpdate:
    rng = np.random.default_rng([self._seed, _ROUNDING_SALT, round_num, int(client_id)])
    update = _flatten(output.delta)
    if self._dp is not None:  # Within C after rounding too: it adds at most 2^-f a coordinate.
      clip = self._clip - math.sqrt(update.size) * 2.0**-self.params.fraction_bits
      encoded, _ = he.encode(update, clip, 1, self.params.fraction_bits, rng)
      return self._encryptor.encrypt(encoded, 1)
    encoded, clipped = he.encode(update, self._clip, weight, self.params.fraction_bits, rng)
    extras, _ = he.encode(self._extras_to_slots(output.metrics, clipped), self._clip, weight,
                          self.params.fraction_bits, rng)
    return self._encryptor.encrypt(np.concatenate([encoded, extras]), weight)

  def _noised_mean(self, template, round_num: int, *, summed: bool):
    """Under DP: (Σ clipped updates + N(0, (z·C)²)) / clients per round, as one output."""
    size = _flatten(template.delta).size
    total = np.zeros(size)
    if summed:
      sums, _ = self._key_holder.decrypt(self._aggregator.result())
      total = sums / 2.0**self.params.fraction_bits
    noise_seed = tf.random.experimental.stateless_fold_in(
        seeds.keyed_seed(self._dp.noise_key, _NOISE_SALT), round_num)
    noise = tf.random.stateless_normal(
        [size], noise_seed, stddev=self._dp.noise_multiplier * self._dp.clip, dtype=tf.float64)
    mean = (total + noise.numpy()) / self._dp.clients_per_round
    return template._replace(delta=_unflatten(mean, template.delta),
                             num_examples=np.float32(1.0),
                             metrics=tf.nest.map_structure(np.zeros_like, template.metrics))

  def _extras_to_slots(self, metrics, clipped: bool) -> np.ndarray:
    """The losses (clipped to ±METRIC_RANGE) and the clipped flag, scaled so that their
    vector's L2 norm is at most the clip (`encode` then leaves them as they are)."""
    values = [float(np.clip(v, -METRIC_RANGE, METRIC_RANGE)) / METRIC_RANGE
              for v in metrics.values()] + [float(clipped)]
    return np.asarray(values) * self._clip / math.sqrt(len(values))

  def _decrypted_mean(self, template, *, summed: bool):
    """The server half's input (one output of weight Σ n_k) and the clipped fraction."""
    if template is None:
      raise ValueError('an --aggregator=he round needs at least one client.')
    num_metrics = len(template.metrics)
    if summed:
      sums, total_weight = self._key_holder.decrypt(self._aggregator.result())
      mean = he.decode(sums, total_weight, self.params.fraction_bits)
    else:  # Nobody sent anything: a zero update of weight 0, as the plain mean gives.
      mean = np.zeros(_flatten(template.delta).size + num_metrics + 1)
      total_weight = 0
    update, extras = mean[:-num_metrics - 1], mean[-num_metrics - 1:]
    extras = extras * math.sqrt(num_metrics + 1) / self._clip
    metrics = collections.OrderedDict(
        (name, np.float32(value * METRIC_RANGE))
        for name, value in zip(template.metrics, extras[:-1], strict=True))
    output = template._replace(delta=_unflatten(update, template.delta),
                               num_examples=np.float32(total_weight), metrics=metrics)
    return output, float(np.clip(extras[-1], 0.0, 1.0))


def _flatten(structure) -> np.ndarray:
  return np.concatenate([np.asarray(t, np.float64).ravel() for t in tf.nest.flatten(structure)])


def _unflatten(flat: np.ndarray, like):
  parts, start = [], 0
  for tensor in tf.nest.flatten(like):
    tensor = np.asarray(tensor)
    parts.append(flat[start:start + tensor.size].reshape(tensor.shape).astype(tensor.dtype))
    start += tensor.size
  return tf.nest.pack_sequence_as(like, parts)
