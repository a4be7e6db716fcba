"""ε spent so far, as metrics.csv reports it: per run (client-level DP), per client (example,
asynchronous).

* `--dp_unit=client` (DP-FedAvg), `--mode=sync`: every round is the aggregator's Gaussian
  mechanism on a sample of clients; ε follows from the round count and the DP event kept in
  the server state (`ClientLevelLedger`; under `--aggregator=he`, the key holder's Gaussian
  mechanism), at the replace-one sensitivity 2C under `fixed` sampling
  (`accounting.clipped_sum_event`).
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

* `--mode=async` (client level; `AsyncClientLedger`): no secret sample of clients, so
  nothing is amplified. Who is asked is drawn from the public seed, and who fills a buffer
  depends on the clients' (seeded) speed; this schedule does not depend on the data, so
  neighbouring runs share it and differ in one client's data, whose reports turn into zero
  updates (the zero-out relation). A client that reported c times into a step's buffer moves
  its clipped sum by at most c·C, noised with std z·C (by the DP aggregator, or under
  `--aggregator=he` by the key holder): a Gaussian mechanism of noise multiplier z / c
  (c = 2 happens: a fast client may report, be sent the model again and report before the
  buffer fills). Gaussian mechanisms compose into one Gaussian, so client
  k's steps amount to noise multiplier z / √S_k, S_k = Σ_steps c², and its ε is that
  Gaussian's at δ with the run's accountant (exactly so for RDP and PLD alike). FedAsync: one
  report a step, S_k is k's count of reports. The reports come from `AsyncReports`, which the
  event loop keeps under `checkpoints/`.

The synchronous ledgers are computed from the run's seed and round alone (the sample of each
round is a function of them), so a resumed run reports the ε an uninterrupted one would. The
asynchronous one counts every step ever applied in the run directory, including steps after
the last checkpoint that a crash abandoned (they were applied, and may have been released).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import dp_accounting
import numpy as np
from absl import logging

from tff_gan import choices
from tff_gan.core import dp_sgd, feedback
from tff_gan.core.state import ServerState
from tff_gan.privacy import accounting
from tff_gan.run.config import TrainConfig
from tff_gan.run.rundir import CHECKPOINT_DIR

ASYNC_REPORTS_FILE = 'async_reports.csv'  # Under checkpoints/, which --overwrite deletes.


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
      event = self._event or accounting.round_event_from_aggregator_state(
          state.aggregator_state)
      self._curve = accounting.EpsilonCurve(
          accounting.clipped_sum_event(event, self._sampling), self._sampling, self._delta,
          self._accountant)
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
    self._curves_of_all = [accounting.EpsilonCurve(
        dp_accounting.GaussianDpEvent(per_round), sampling, self._delta, self._accountant)
        for sampling in _gs_wgan_bounds(shards)]

  def _curve(self, num_examples: int) -> Callable[[int], float]:
    del num_examples  # The bound depends on the rounds alone.
    return lambda rounds: min(curve(rounds) for curve in self._curves_of_all)


def _gs_wgan_bounds(shards: int) -> list[accounting.Sampling]:
  """The samplings each of whose bounds holds for a GS-WGAN round: the unamplified one for any
  unit, and with K > 1 shards one of K drawn without replacement. The ledger reports the
  tighter; with few rounds of little noise that is the unamplified one (Wang et al.'s bound for
  sampling 1 of K is loose there)."""
  return [accounting.Sampling('fixed', k, 1) for k in sorted({1, shards})]


def gs_wgan_noise_multiplier(target_epsilon: float, shards: int, rounds: int,
                             generator_steps: int, batch_size: int, delta: float,
                             accountant: str = 'rdp') -> float:
  """The smallest `--dp_noise_multiplier` σ whose GS-WGAN run of `rounds` rounds (each client
  sampled in every one) `GsWganLedger` accounts at most `target_epsilon` per client.

  `accounting.noise_multiplier_for_epsilon` calibrates a clipped sum, which replace-one sees
  as a Gaussian of noise multiplier z / 2; a round's message is one of
  `feedback.message_noise_multiplier(σ, ...)`, linear in σ. So σ is the smaller z of the two
  bounds halved, over that function's value at σ = 1."""
  z = min(accounting.noise_multiplier_for_epsilon(target_epsilon, sampling, rounds, delta,
                                                  accountant)
          for sampling in _gs_wgan_bounds(shards))
  return z / 2 / feedback.message_noise_multiplier(1.0, generator_steps, batch_size)


class AsyncReports:
  """`checkpoints/async_reports.csv`: the clients whose reports each asynchronous server step
  aggregated, a line `round,clients` a step (ids space-separated, a client listed as many
  times as it reported into that buffer).

  The event loop appends a step's line as it applies the step, before the step's row is
  released or checkpointed, and never rewrites a line: a resumed run appends after the lines
  of every earlier attempt, so the steps a crash abandoned stay counted. The file lives with
  the checkpoints, which `--overwrite` deletes.
  """

  HEADER = 'round,clients\n'

  def __init__(self, output_dir: str):
    self.path = os.path.join(output_dir, CHECKPOINT_DIR, ASYNC_REPORTS_FILE)

  def append(self, round_num: int, client_ids) -> None:
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    line = f'{round_num},{" ".join(str(int(k)) for k in sorted(client_ids))}\n'
    with open(self.path, 'a') as f:
      f.write((self.HEADER if f.tell() == 0 else '') + line)  # One write: a whole line.

  def read(self, offset: int = 0) -> tuple[list[tuple[int, np.ndarray]], int]:
    """The steps recorded after byte `offset` (whole lines only) and the offset past them."""
    if not os.path.exists(self.path):
      return [], 0
    with open(self.path, 'rb') as f:
      f.seek(offset)
      data = f.read()
    data = data[:data.rfind(b'\n') + 1]
    steps = []
    for line in data.decode().splitlines():
      if line and line + '\n' != self.HEADER:
        round_num, clients = line.split(',')
        steps.append((int(round_num), np.array(clients.split(), np.int64)))
    return steps, offset + len(data)

  def resume_problem(self, start_round: int) -> str | None:
    """Why ε cannot be accounted when resuming after `start_round` steps, or None."""
    try:
      steps, offset = self.read()
    except ValueError as e:
      return f'{self.path} is damaged ({e})'
    if offset != (os.path.getsize(self.path) if os.path.exists(self.path) else 0):
      return f'{self.path} ends in a cut line'
    missing = sorted(set(range(1, start_round + 1)) - {r for r, _ in steps})
    if missing:
      return (f'{self.path} lacks the clients of {len(missing)} of the {start_round} '
              f'checkpointed steps (first: {missing[0]})')
    return None


def gaussian_noise_multiplier(event: dp_accounting.DpEvent) -> float:
  """The noise multiplier of the one Gaussian mechanism `event` amounts to.

  Gaussian mechanisms of noise multipliers z_i on the same data compose into one of
  (Σ z_i⁻²)^(−1/2) (e.g. adaptive clipping's value and clipped-count noises).

  Raises:
    ValueError: If `event` is not built of Gaussian mechanisms alone.
  """
  if isinstance(event, dp_accounting.GaussianDpEvent):
    return float(event.noise_multiplier)
  if isinstance(event, dp_accounting.ComposedDpEvent):
    parts = [(part, 1) for part in event.events]
  elif isinstance(event, dp_accounting.SelfComposedDpEvent):
    parts = [(event.event, event.count)]
  else:
    raise ValueError(f'asynchronous DP accounts for Gaussian mechanisms only, not {event}.')
  multipliers = [(gaussian_noise_multiplier(part), count) for part, count in parts]
  if any(z == 0 for z, _ in multipliers):
    return 0.0
  return sum(count / z**2 for z, count in multipliers) ** -0.5


def gaussian_epsilon(noise_multiplier: float, delta: float, accountant: str = 'rdp') -> float:
  """ε at `delta` of one Gaussian mechanism (add-or-remove-one), with `accountant`."""
  accounting.check_delta(delta)
  if accountant not in choices.DP_ACCOUNTANTS:
    raise ValueError(f"unknown accountant '{accountant}'; choose one of: "
                     f"{', '.join(choices.DP_ACCOUNTANTS)}.")
  ledger = (dp_accounting.rdp.RdpAccountant() if accountant == 'rdp'
            else dp_accounting.pld.PLDAccountant())
  ledger.compose(dp_accounting.GaussianDpEvent(noise_multiplier))
  return float(ledger.get_epsilon(delta))


class AsyncClientLedger:
  """Each client's ε in `--mode=async` (module docstring); `epsilon` is the largest.

  Args:
    config: The run's configuration (`--mode=async`, `--dp_unit=client`).
    num_clients: The population's size.
  """

  def __init__(self, config: TrainConfig, num_clients: int):
    self._record = AsyncReports(config.output_dir)
    self._offset = 0
    self.reports = np.zeros(num_clients, np.int64)
    self.squared_reports = np.zeros(num_clients, np.int64)  # S_k = Σ_steps c².
    self._delta, self._accountant = config.effective_dp_delta, config.dp_accountant
    # z of one report, from the DP event. Under --aggregator=he the key holder adds the noise
    # outside TFF (`run.secure_rounds`), and no aggregator state records its event.
    self.noise_multiplier: float | None = (
        float(config.dp_noise_multiplier)
        if config.aggregator in choices.SECURE_AGGREGATORS else None)
    self._epsilons: dict[int, float] = {}  # By S_k.

  def count(self) -> np.ndarray:
    """Reads the steps recorded since the last call; returns every client's S_k."""
    steps, self._offset = self._record.read(self._offset)
    for _, client_ids in steps:
      clients, reports = np.unique(client_ids, return_counts=True)
      self.reports[clients] += reports
      self.squared_reports[clients] += reports**2
    return self.squared_reports.copy()

  def client_epsilons(self) -> np.ndarray:
    """Each client's ε (0 for a client that never reported)."""
    if self.noise_multiplier is None:
      raise RuntimeError('call epsilon(state) first: the noise comes from its DP event.')
    return np.array([self._epsilon(int(s)) for s in self.count()])

  def epsilon(self, state: ServerState) -> float:
    if self.noise_multiplier is None:
      self.noise_multiplier = gaussian_noise_multiplier(
          accounting.round_event_from_aggregator_state(state.aggregator_state))
    return self._epsilon(int(np.max(self.count())))

  def client_table(self, round_num: int) -> str:
    """`client_epsilon.csv`: client, reports, S_k (Σ over steps of its reports²), epsilon."""
    del round_num  # Every step recorded so far.
    epsilons = self.client_epsilons()
    lines = ['client,reports,sum_squared_reports,epsilon']
    lines += [f'{k},{r},{s},{e:.6g}' for k, (r, s, e) in enumerate(
        zip(self.reports, self.squared_reports, epsilons, strict=True))]
    return '\n'.join(lines) + '\n'

  def _epsilon(self, squared_reports: int) -> float:
    if not squared_reports:
      return 0.0
    if squared_reports not in self._epsilons:
      self._epsilons[squared_reports] = gaussian_epsilon(
          float(self.noise_multiplier / np.sqrt(squared_reports)), self._delta,
          self._accountant)
    return self._epsilons[squared_reports]


def credits_client_sampling(config: TrainConfig) -> bool:
  """Whether the run's ε credits amplification by client sampling (`ClientLevelLedger`:
  client-level DP-FedAvg in synchronous rounds), which holds only for a secret sample."""
  return (config.dp_enabled and not config.example_dp and config.scheme != 'gs_wgan'
          and config.mode == 'sync')


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
    ledger = (AsyncClientLedger(config, len(client_sizes)) if config.mode == 'async'
              else ClientLevelLedger(config, len(client_sizes)))
    message = accounting.delta_warning(config.effective_dp_delta, len(client_sizes))
    if credits_client_sampling(config) and config.client_sampling == 'fixed':
      logging.warning('--client_sampling=fixed is accounted at the replace-one sensitivity '
                      '(twice the clip); --client_sampling=poisson spends far less epsilon '
                      'for the same noise.')
  if message:
    logging.warning(message)
  return ledger
