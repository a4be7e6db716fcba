"""Rounds whose sum is computed securely: `--aggregator=he` and `secagg`.

A round (or an asynchronous server step, `apply`; `he` only) runs the process's two halves
(`GanProcess.client_work`, `GanProcess.server_step`) with a secure sum between them:

1. Every sampled client that did not drop out does its local work (TFF, as in any round).
2. Each flattens its update, clips it to the public L2 bound `--secure_clip`, encodes it in
   fixed point with stochastic rounding and multiplies it by its example count n_k
   (`secure.fixed_point`); its losses (mapped into the same range), whether it was clipped,
   and n_k go in slots after the update.
3. The sum:
   * `he` (`secure.he`): each client encrypts its vector under the key holder's public BFV
     key; the aggregator, a separate process that holds only the public context
     (`secure.he_process`), adds the ciphertexts; the key holder decrypts the sum only.
   * `secagg` (`secure.secagg`): SecAgg+ pairwise masking. Every sampled client takes part
     in the key agreement and secret sharing; those that dropped out after the broadcast
     send no masked input, and the survivors' shares let the server take their masks out.
     The server sees masked vectors and the unmasked sum. A round with too many dropouts
     for the threshold aborts (`secagg.SecAggAborted`): the model stays as it is.
4. Σ n_k·x_k / Σ n_k is released: the weighted mean update, mean losses and clipped
   fraction. The server half applies it with the server optimizer, as the update of one
   client of weight Σ n_k.

The client-resident schemes (`algorithms.multi_d`, mean mixture) work the same way: the
"update" is a client's feedback on the round's samples (its per-sample weighted gradients),
the server half trains the generator on the released mean, and each client's discriminator
state goes into its work and is stored back as in a plain round (`next`'s `client_states`).
GS-WGAN's clients clip and noise their feedback before it leaves and send a weight of 1, so
the sum adds no noise of its own (`dp` stays None) and is an unweighted mean, as with `mean`.

SIMULATED: every party runs on this machine. Each client's encoding, encryption or masking
runs in the trainer process on the client's behalf. The HE key holder is an object of the
trainer process, and the HE aggregator is a process of its own that holds no secret key
(it cannot decrypt, and the tests show it). SecAgg+'s clients and server are objects of the
trainer process, whose messages pass through the server object. So the code computes the sum
from ciphertexts or masked vectors alone, yet in this simulation the trainer process also
saw every update in the clear.

In an asynchronous step (FedBuff, FedAsync) each report comes with its public staleness
weight s_k. Without DP the aggregator multiplies report k's ciphertext by the integer
m_k = round(s_k · `STALENESS_STEPS`), and n_k travels alone in a second ciphertext, so
Σ n_k·(m_k / STALENESS_STEPS)·x_k / Σ n_k is released: `--aggregator=mean`'s asynchronous
rule.

With user-level differential privacy (`SecureDp`, `he` only), clipping moves to the
clients: each clips its whole update to the DP clip C (less the most that rounding can add,
so the encoded update is within C too) and sends it unweighted, with nothing else. The key
holder, the trusted curator, decrypts the sum of the clipped updates, adds Gaussian noise of
standard deviation z·C drawn under the run's DP noise key (`core.seeds.noise_key`) and the
release's number (the round, or the server step), and releases the sum divided by the
expected clients per aggregation: DP-FedAvg's fixed-denominator mean, accounted as
`--aggregator=mean`'s. No loss, count or clipping flag is released. In an asynchronous step
this is what `GanProcess.server_step` computes with the DP aggregator, which scales each
update by s_k (FedAsync: α·s_k) before it clips it. Nobody can take the norm of a
ciphertext, so a client is told its s_k, public as its staleness is, when its report is
taken into the buffer, and clips s_k·Δ_k to C: the release is
(Σ_k clip(s_k·Δ_k, C) + N(0, (z·C)²)) / K, K the buffer size (1 under FedAsync), s_k exact.
No multiplier is needed then, and the synchronous BFV format serves.

The stochastic rounding draws from (seed, round, client, and the client's earlier reports
in the sum if any), so a run, and a resumed run, is repeatable. Keys are new in every
process (`he`) or every round (`secagg`).
"""

from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np
import tensorflow as tf
from absl import logging

from tff_gan.core import seeds
from tff_gan.run import secure_sums
from tff_gan.secure import fixed_point, he, secagg

# Losses beyond ±METRIC_RANGE are clipped before they are encoded.
METRIC_RANGE = 64.0
CLIPPED_METRIC = 'clipped_fraction'
_ROUNDING_SALT = 0x6865  # Separates the rounding's random numbers from every other stream.
_NOISE_SALT = 0x68654450  # Separates the key holder's DP noise from the key's other draws.
# Asynchronous staleness weights in (0, 1] travel as integer multipliers of this many steps.
STALENESS_STEPS = 256


@dataclasses.dataclass(frozen=True)
class SecureDp:
  """User-level DP with `--aggregator=he` (module docstring).

  Attributes:
    noise_multiplier: z ≥ 0.
    clip: C > 0, the L2 bound of a client's update.
    clients_per_round: The mean's fixed denominator: the expected clients per round, or an
      asynchronous step's reports (`TrainConfig.clients_per_aggregation`).
    noise_key: The key the key holder's noise descends from (`core.seeds.noise_key`).
  """

  noise_multiplier: float
  clip: float
  clients_per_round: float
  noise_key: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class SecureSettings:
  """What a run's secure sum needs (`training` fills it from the configuration).

  Attributes:
    aggregator: `he` or `secagg`.
    clip: The public L2 bound of a client's update (unused under `dp`).
    max_weight: The largest n_k a client can report (`max_client_weight`).
    max_clients: The most clients one round can sum.
    seed: The run seed; the stochastic rounding and SecAgg+'s public graph descend from it.
    dp: User-level DP (`he` only).
    neighbours: SecAgg+'s k (None: `secagg.check_params`' default).
    threshold: SecAgg+'s t (None: the default).
    asynchronous: Whether updates come with staleness weights (`he` only). Without DP each
      is sent as the integer multiplier round(weight · `STALENESS_STEPS`) of its ciphertext,
      and the wide BFV format (`he.WIDE_PLAIN_MODULUS`) makes room for it; under DP the
      client scales its update before it clips it (module docstring).
    wide: Use the wide BFV format in synchronous rounds too (`he`): room for a large clip,
      e.g. for `multi_d`'s feedback, whose few thousand numbers fit one ciphertext anyway.
  """

  aggregator: str
  clip: float
  max_weight: int
  max_clients: int
  seed: int
  dp: SecureDp | None = None
  neighbours: int | None = None
  threshold: int | None = None
  asynchronous: bool = False
  wide: bool = False

  @property
  def multiplied(self) -> bool:
    """Whether the aggregator multiplies ciphertexts by staleness weights (async, no DP)."""
    return self.asynchronous and self.dp is None

  def _clip_and_weight(self) -> tuple[float, int]:
    return (self.dp.clip, 1) if self.dp is not None else (self.clip, self.max_weight)

  def he_params(self) -> he.HeParams:
    """The BFV parameters for these bounds (`he.choose_params`)."""
    multiplier = STALENESS_STEPS if self.multiplied else 1
    return he.choose_params(*self._clip_and_weight(), self.max_clients,
                            max_multiplier=multiplier, wide=self.multiplied or self.wide)

  def largest_clip(self, most: float) -> float:
    """The largest clip, up to `most`, whose sums cannot wrap at `fixed_point`'s fewest
    fraction bits (synchronous, without DP); 0 if even a tiny one could."""
    plain_modulus = he.WIDE_PLAIN_MODULUS if self.wide else he.HeParams(0).plain_modulus
    limit = (plain_modulus - 1) // 2 if self.aggregator == 'he' else secagg.MAX_CENTERED
    room = (limit / (self.max_clients * self.max_weight) - 1) / 2.0**fixed_point.MIN_FRACTION_BITS
    return max(0.0, min(most, math.floor(room)))

  def fraction_bits(self) -> int:
    """f for these bounds; raises `ValueError` (one line naming the limit) if none fits."""
    if self.aggregator == 'he':
      return self.he_params().fraction_bits
    secagg.check_params(self.max_clients, self.neighbours, self.threshold)
    return secagg.choose_fraction_bits(*self._clip_and_weight(), self.max_clients)


def update_row(row: dict, metrics, traffic: dict) -> None:
  """Puts a secure round's bytes (beyond the model's broadcast) and clipped fraction in its
  `metrics.csv` row."""
  row['bytes_up'] = traffic['up']
  row['bytes_down'] += traffic['down']
  if CLIPPED_METRIC in metrics:  # Not released under DP.
    row[CLIPPED_METRIC] = metrics[CLIPPED_METRIC]


def max_client_weight(client_sizes, local_epochs: int, batch_size: int,
                      local_steps: int | None) -> int:
  """The largest example count n_k a client can report in a round (its `num_examples`)."""
  most = int(max(client_sizes)) * local_epochs
  if local_steps:
    most = min(most, local_steps * batch_size)
  return max(most, 1)


def sanitized_bound(dp_clip: float, noise_multiplier: float, samples: int,
                    sample_size: int) -> float:
  """An L2 bound a GS-WGAN client's message (`core.feedback.sanitize`) passes with probability
  below 1e-8: its `samples` clipped gradients have norm at most C·√samples, and its noise,
  N(0, (σ·C)²) in each of samples·sample_size coordinates, has norm at least
  σ·C·(√(samples·sample_size) + 6) with probability at most e^-18 (Gaussian concentration)."""
  return dp_clip * (math.sqrt(samples)
                    + noise_multiplier * (math.sqrt(samples * sample_size) + 6.0))


class SecureRounds:
  """Runs rounds of a `GanProcess` with a secure sum (module docstring).

  Use as a context manager, or call `close`: with `he` it owns the aggregator process.
  """

  def __init__(self, process, settings: SecureSettings):
    """Sets up the sum (for `he`: the key holder, public context and aggregator process).

    Args:
      process: A `GanProcess` taking dataset keys (`GanProcess.with_client_data`).
      settings: The `SecureSettings`.

    Raises:
      ValueError: If no fixed-point format fits the bounds (one line naming the limit).
    """
    self.fraction_bits = settings.fraction_bits()
    self._process, self._settings, self._dp = process, settings, settings.dp
    self._clip = settings.clip if settings.dp is None else settings.dp.clip
    self._sum = (secure_sums.HeSum(settings.he_params(), settings.multiplied)
                 if settings.aggregator == 'he' else
                 secure_sums.SecAggSum(settings.seed, settings.neighbours, settings.threshold))

  def close(self) -> None:
    self._sum.close()

  def __enter__(self) -> SecureRounds:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def next(self, state, keys, sampled, completed, round_num: int, client_states=None):
    """One round from `state`: the `completed` clients (with these dataset keys) work.

    Args:
      state: The server state.
      keys: The completed clients' dataset keys (`populations.round_keys`).
      sampled: The ids of the round's sampled clients (they receive the model).
      completed: The ids of those that did not drop out, in the order of `keys`.
      round_num: The round.
      client_states: For a process whose clients keep state (`GanProcess.initial_client_state`,
        e.g. `algorithms.multi_d`), the `client_states.ClientStates` held for them: the
        completed clients' states go into their work, and their new states are stored once
        the sum is through, as in a plain round (a client keeps what it trained even if
        SecAgg+ aborts the round; if the sum fails, no state has moved on).

    Returns:
      `(new_state, metrics, traffic)`: the server half's metrics (the released means as the
      clients' metrics, plus `CLIPPED_METRIC` unless under DP), or None and the state
      unchanged when SecAgg+ aborted the round; `traffic` the bytes that travelled beyond
      the model: `{'up': ..., 'down': ...}` (ciphertexts and the public key; masked vectors,
      keys and shares).
    """
    if client_states is None:
      outputs = self._process.client_work(state, keys)
    else:
      results = self._process.client_work(state, keys, client_states.gather(completed))
      outputs = [(output, discarded) for output, discarded, _ in results]
    result = self.apply(state, [(client_id, output, discarded) for client_id, (output, discarded)
                                in zip(completed, outputs, strict=True)], sampled, round_num)
    if client_states is not None:  # Once the round is through (aborted or not), not before.
      client_states.scatter(completed, [new_state for _, _, new_state in results])
    return result

  def apply(self, state, outputs, sampled, round_num: int, scales=None):
    """The server half of a round (or of an asynchronous step) on the clients' outputs.

    Args:
      state: The server state.
      outputs: `(client_id, ClientOutput, discarded)` of every client that reported.
      sampled: The ids of the clients that received the model.
      round_num: The round (or server step) the outputs are applied as.
      scales: Asynchronous staleness weights in (0, 1], one per output (`he` with
        `asynchronous` only). Without DP output k's ciphertext is multiplied by
        m_k = max(1, round(scale_k · STALENESS_STEPS)), and the update applied is
        Σ n_k·(m_k / STALENESS_STEPS)·x_k / Σ n_k, as `--aggregator=mean`'s asynchronous
        rule; the losses are then means weighted by n_k·m_k. Under DP client k clips
        scale_k·Δ_k to C, and the update applied is the noised sum over the fixed
        denominator, as the DP aggregator's (module docstring). A client may report more than
        once: each report counts.

    Returns:
      As `next`.
    """
    vectors, weights, total_discarded, template = {}, {}, 0, None
    multipliers = {} if scales is not None and self._dp is None else None
    occurrences = collections.Counter()
    for k, (client_id, output, discarded) in enumerate(outputs):
      client_id, template = int(client_id), output
      report = (client_id, occurrences[client_id])  # `secure_sums.ReportKey`.
      occurrences[client_id] += 1
      total_discarded += int(discarded)
      weight = round(float(output.num_examples))
      if discarded or weight < 1:  # Non-finite, or no data: it sends nothing.
        continue
      scale = 1.0 if scales is None else float(scales[k])
      if self._dp is not None:
        weight = 1  # DP-FedAvg: every client counts the same.
      elif weight > self._settings.max_weight:
        raise RuntimeError(f'client {client_id} reports {weight} examples, above the bound '
                           f'{self._settings.max_weight} the fixed point was chosen for.')
      vectors[report] = self._encode(output, weight, report, round_num, scale)
      weights[report] = weight
      if multipliers is not None:
        multipliers[report] = max(1, round(scale * STALENESS_STEPS))
    try:
      total = self._sum.sum(vectors, weights, sampled, round_num, multipliers)
    except secagg.SecAggAborted as aborted:
      logging.warning('round %d: %s; the model stays as it is.', round_num,
                      str(aborted).rstrip('.'))
      return state, None, {'up': 0, 'down': 0}
    if self._dp is None:
      mean_output, clipped = self._released_mean(
          template, total, (STALENESS_STEPS if multipliers is not None else 1) * total.examples)
    else:
      mean_output, clipped = self._noised_mean(template, total.sums, round_num), None
    state, metrics = self._process.server_step(
        state, [mean_output], [np.int32(total_discarded)], [np.float32(1.0)])
    metrics = collections.OrderedDict(metrics)
    if clipped is not None:
      metrics[CLIPPED_METRIC] = clipped
    return state, metrics, {'up': total.bytes_up, 'down': total.bytes_down}

  def _encode(self, output, weight: int, report: tuple[int, int], round_num: int,
              scale: float) -> np.ndarray:
    """A report's signed integers: its update and, unless under DP, its extras; under DP the
    update is first multiplied by its staleness weight `scale` (then clipped)."""
    client_id, occurrence = report  # A second report in one buffer draws its own rounding.
    rng = np.random.default_rng([self._settings.seed, _ROUNDING_SALT, round_num, client_id]
                                + ([occurrence] if occurrence else []))
    update = _flatten(output.delta)
    encode = dict(fraction_bits=self.fraction_bits, rng=rng,
                  aggregator=self._settings.aggregator)
    if self._dp is not None:  # Within C after rounding too: it adds at most 2^-f a coordinate.
      clip = self._clip - math.sqrt(update.size) * 2.0**-self.fraction_bits
      return fixed_point.encode(scale * update, clip, 1, **encode)[0]
    encoded, clipped = fixed_point.encode(update, self._clip, weight, **encode)
    extras, _ = fixed_point.encode(self._extras_to_slots(output.metrics, clipped), self._clip,
                                   weight, **encode)
    return np.concatenate([encoded, extras])

  def _extras_to_slots(self, metrics, clipped: bool) -> np.ndarray:
    """The losses (clipped to ±METRIC_RANGE) and the clipped flag, scaled so that their
    vector's L2 norm is at most the clip (`encode` then leaves them as they are)."""
    values = [float(np.clip(v, -METRIC_RANGE, METRIC_RANGE)) / METRIC_RANGE
              for v in metrics.values()] + [float(clipped)]
    return np.asarray(values) * self._clip / math.sqrt(len(values))

  def _released_mean(self, template, total: secure_sums.Total, update_weight: int):
    """The server half's input (one output of weight Σ n_k) and the clipped fraction: the
    update is the summed update over `update_weight`, the losses and the flag the summed
    ones over the weight slot."""
    if template is None:
      raise ValueError('a secure round needs at least one client.')
    num_metrics = len(template.metrics)
    sums = total.sums
    if sums is None:  # Nobody sent anything: a zero update of weight 0, as the plain mean.
      update = np.zeros(_flatten(template.delta).size)
      extras = np.zeros(num_metrics + 1)
    else:
      update = fixed_point.decode(sums[:-num_metrics - 1], update_weight, self.fraction_bits)
      extras = fixed_point.decode(sums[-num_metrics - 1:], total.weight_slot,
                                  self.fraction_bits)
    extras = extras * math.sqrt(num_metrics + 1) / self._clip
    metrics = collections.OrderedDict(
        (name, np.float32(value * METRIC_RANGE))
        for name, value in zip(template.metrics, extras[:-1], strict=True))
    output = template._replace(delta=_unflatten(update, template.delta),
                               num_examples=np.float32(total.examples), metrics=metrics)
    return output, float(np.clip(extras[-1], 0.0, 1.0))

  def _noised_mean(self, template, sums, round_num: int):
    """Under DP: (Σ clipped updates + N(0, (z·C)²)) / clients per aggregation, as one output;
    the noise is draw `round_num` (the round, or the server step) under the DP noise key."""
    size = _flatten(template.delta).size
    total = np.zeros(size) if sums is None else sums / 2.0**self.fraction_bits
    noise_seed = tf.random.experimental.stateless_fold_in(
        seeds.keyed_seed(self._dp.noise_key, _NOISE_SALT), round_num)
    noise = tf.random.stateless_normal(
        [size], noise_seed, stddev=self._dp.noise_multiplier * self._dp.clip, dtype=tf.float64)
    mean = (total + noise.numpy()) / self._dp.clients_per_round
    return template._replace(delta=_unflatten(mean, template.delta),
                             num_examples=np.float32(1.0),
                             metrics=tf.nest.map_structure(np.zeros_like, template.metrics))


def _flatten(structure) -> np.ndarray:
  return np.concatenate([np.asarray(t, np.float64).ravel() for t in tf.nest.flatten(structure)])


def _unflatten(flat: np.ndarray, like):
  parts, start = [], 0
  for tensor in tf.nest.flatten(like):
    tensor = np.asarray(tensor)
    parts.append(flat[start:start + tensor.size].reshape(tensor.shape).astype(tensor.dtype))
    start += tensor.size
  return tf.nest.pack_sequence_as(like, parts)
