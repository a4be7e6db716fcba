"""ε spent so far, as metrics.csv reports it: per run (client-level DP), per client (example).

* `--dp_unit=client` (DP-FedAvg): every round is the aggregator's Gaussian mechanism on a
  sample of clients; ε follows from the round count and the DP event kept in the server state
  (`ClientLevelLedger`; under `--aggregator=he`, the key holder's Gaussian mechanism).
* `--dp_unit=example` (DP-SGD in each client): each client protects its own examples, and its
  ε follows from its own Poisson rate B / n_k and the DP-SGD steps it has taken: ⌈E·n_k / B⌉
  (capped by `--local_steps`) in every round that sampled it, dropped out or not (it may have
  trained before failing). A client never sampled has spent nothing. The run reports the
  largest ε over its clients, and `client_epsilon.csv` lists every client's
  (`ExampleLevelLedger`). Nothing is amplified by client sampling: the server knows which
  clients it asked.

* `--scheme=gs_wgan`: each sampled client sends one sanitized message a round, a Gaussian
  mechanism of noise multiplier σ / (2·√(steps·batch)) (`feedback.GsSanitizer`) on the one
  discriminator that answered. `--dp_unit=client`: that discriminator may hold any of the
  client's data, so a client's ε composes the rounds that sampled it, unamplified.
  `--dp_unit=example` with K shards: an example's discriminator answers with probability 1/K
  (one of K drawn, secretly), so each round is that mechanism sampled without replacement,
  1 of K, replace-one neighbours (GS-WGAN's analysis). `GsWganLedger`; the per-client file
  as above.

All are computed from the run's seed and round alone (the sample of each round is a function
of them), so a resumed run reports the ε an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable

import dp_accounting
import numpy as np
from absl import logging

from tff_gan import choices
from tff_gan.core import dp_sgd, feedback
from tff_gan.core.state import ServerState
from tff_gan.privacy import accounting
from tff_gan.run.config import TrainConfig


class ClientLevelLedger:
  """ε of DP-FedAvg from the round count and the DP event kept in the server state."""

  def __init__(self, config: TrainConfig, num_clients: int):
    self._sampling = accounting.Sampling(config.client_sampling, num_clients,
                                         config.clients_per_aggregation)
    self._delta = config.effective_dp_delta
    self._accountant = config.dp_accountant
    self._curve = None
    # Under --aggregator=he the key holder adds the noise outside TFF (`run.secure_rounds`): the
    # same Gaussian mechanism, whose event no aggregator state records.
    self._event = (dp_accounting.GaussianDpEvent(float(config.dp_noise_multiplier))
                   if config.aggregator in choices.SECURE_AGGREGATORS else None)

  def epsilon(self, state: ServerState) -> float:
    if self._curve is None:  # The same mechanism every round: account for it once.
      self._curve = accounting.EpsilonCurve(
          self._event or accounting.round_event_from_aggregator_state(state.aggregator_state),
          self._sampling, self._delta, self._accountant)
    return self._curve(int(state.round_num))


class ExampleLevelLedger:
  """Each client's ε under DP-SGD (module docstring); `epsilon` is the largest.

  Args:
    config: The run's configuration (`--dp_unit=example`).
    client_sizes: n_k of every client.
    client_ids: `round_num -> ids` of the clients that round sampled.
  """

  def __init__(self, config: TrainConfig, client_sizes, client_ids: Callable[[int], np.ndarray]):
    self.client_sizes = np.asarray(client_sizes, np.int64)
    # The steps the clients' Poisson datasets take (`populations.client_dataset`).
    self.steps_per_round = np.asarray(dp_sgd.poisson_steps(
        self.client_sizes, batch_size=config.batch_size, local_epochs=config.local_epochs,
        local_steps=config.local_steps or None))
    self._client_ids = client_ids
    self._event = dp_accounting.GaussianDpEvent(config.dp_noise_multiplier)
    self._batch_size, self._delta = config.batch_size, config.effective_dp_delta
    self._accountant = config.dp_accountant
    self._curves: dict[int, accounting.EpsilonCurve] = {}  # By client size.
    self._rounds_sampled = np.zeros(len(self.client_sizes), np.int64)
    self._counted_through = 0

  def rounds_sampled(self, round_num: int) -> np.ndarray:
    """How many of rounds 1..`round_num` sampled each client."""
    if round_num < self._counted_through:
      self._rounds_sampled[:], self._counted_through = 0, 0
    for past in range(self._counted_through + 1, round_num + 1):
      self._rounds_sampled[np.asarray(self._client_ids(past), np.int64)] += 1
    self._counted_through = round_num
    return self._rounds_sampled.copy()

  def client_epsilons(self, round_num: int) -> np.ndarray:
    """Each client's ε after round `round_num` (0 for a client never sampled)."""
    steps = self.rounds_sampled(round_num) * self.steps_per_round
    return np.array([self._curve(int(n))(int(s)) if s else 0.0
                     for n, s in zip(self.client_sizes, steps, strict=True)])

  def epsilon(self, state: ServerState) -> float:
    return float(np.max(self.client_epsilons(int(state.round_num))))

  def client_table(self, round_num: int) -> str:
    """`client_epsilon.csv`: client, examples, rounds sampled, DP-SGD steps, epsilon."""
    sampled = self.rounds_sampled(round_num)
    epsilons = self.client_epsilons(round_num)
    lines = ['client,examples,rounds_sampled,steps,epsilon']
    lines += [f'{k},{n},{r},{r * s},{e:.6g}' for k, (n, r, s, e) in enumerate(
        zip(self.client_sizes, sampled, self.steps_per_round, epsilons, strict=True))]
    return '\n'.join(lines) + '\n'

  def _curve(self, num_examples: int) -> accounting.EpsilonCurve:
    if num_examples not in self._curves:
      self._curves[num_examples] = accounting.EpsilonCurve(
          self._event, accounting.example_sampling(num_examples, self._batch_size),
          self._delta, self._accountant)
    return self._curves[num_examples]


class GsWganLedger(ExampleLevelLedger):
  """Each client's ε under GS-WGAN (module docstring): one Gaussian event per round that
  sampled it, unamplified; `steps` in `client_epsilon.csv` counts those messages."""

  def __init__(self, config: TrainConfig, client_sizes, client_ids: Callable[[int], np.ndarray]):
    super().__init__(config, client_sizes, client_ids)
    self.steps_per_round = np.ones(len(self.client_sizes), np.int64)
    per_round = feedback.message_noise_multiplier(config.dp_noise_multiplier,
                                                  config.server_gen_steps, config.batch_size)
    shards = config.discriminator_shards if config.dp_unit == 'example' else 1
    # The unamplified bound holds for any unit; with few rounds of little noise it is the
    # tighter of the two (Wang et al.'s bound for sampling 1 of K is loose there).
    self._curves_of_all = [accounting.EpsilonCurve(
        dp_accounting.GaussianDpEvent(per_round), accounting.Sampling('fixed', k, 1),
        self._delta, self._accountant) for k in sorted({1, shards})]

  def _curve(self, num_examples: int) -> Callable[[int], float]:
    del num_examples  # The bound depends on the rounds alone.
    return lambda rounds: min(curve(rounds) for curve in self._curves_of_all)


def epsilon_ledger(config: TrainConfig, client_sizes,
                   client_ids: Callable[[int], np.ndarray]):
  """The run's ledger under differential privacy (warning about a large δ), else None."""
  if not config.dp_enabled:
    return None
  if config.scheme == 'gs_wgan' and not config.example_dp:
    ledger = GsWganLedger(config, client_sizes, client_ids)
    message = accounting.delta_warning(config.effective_dp_delta, len(client_sizes))
  elif config.example_dp:
    ledger = (GsWganLedger if config.scheme == 'gs_wgan' else ExampleLevelLedger)(
        config, client_sizes, client_ids)
    message = accounting.delta_warning(config.effective_dp_delta, int(np.min(client_sizes)),
                                       "(the smallest client's examples)", 'example')
  else:
    ledger = ClientLevelLedger(config, len(client_sizes))
    message = accounting.delta_warning(config.effective_dp_delta, len(client_sizes))
  if message:
    logging.warning(message)
  return ledger
