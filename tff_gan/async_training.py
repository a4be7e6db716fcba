"""Asynchronous federated training: FedBuff and FedAsync, on a simulated clock.

Real fleets have stragglers: a synchronous round lasts as long as its slowest client. In
asynchronous training the server keeps up to `max_concurrent_clients` clients at work; each
downloads the current model, trains, and reports back when it is done, and a new client
takes its place. Two server rules (`async_rule`):

* **FedBuff** (Nguyen et al., AISTATS 2022): reports go to a buffer; once it holds K
  (`buffer_size`) updates the server applies their staleness-weighted mean and the model
  version advances by one. Update i, computed from version v_i and arriving at version v,
  has staleness τ_i = v − v_i and weight s(τ_i) = (1 + τ_i)^(−a) (`staleness_exponent` a):
  the server applies Σ n_i s(τ_i) Δ_i / Σ n_i, with n_i the examples client i trained on,
  through the run's aggregator and server optimizer (so a = 0 with every update fresh is
  exactly FedAvg's weighted mean).
* **FedAsync** (Xie et al., 2019): every report is applied at once, scaled by α s(τ)
  (`fedasync_mixing` α): with the default server optimizer (SGD, learning rate 1) that is
  w ← w + α s(τ) Δ, i.e. w ← (1 − α s) w + α s w_client.

Each server step is one row of `metrics.csv` (`round` is the model version) with
`simulated_time`, `mean_staleness` and `max_staleness`.

Time is simulated (`ClientClock`): a client's work takes exp(N(μ, σ²)) seconds
(`client_latency='lognormal:MU,SIGMA'`), `straggler_slowdown` times longer for the fixed
`straggler_fraction` of clients that are stragglers; a client that drops out
(`dropout_rate`) never reports, and the server stops waiting for any client after
`client_timeout` seconds and sends another in its place, so lost clients never stall it.

Client work and server steps remain TFF computations (`process.AsyncParts`): a client's
update is computed when it is dispatched, from the model it downloads, and held until its
simulated arrival. Only the event loop is Python.

Differential privacy: each server step aggregates its buffer with the run's DP aggregator
(clip each update, add Gaussian noise once to the buffer's sum), so every buffer is one DP
aggregation; ε is accounted as `rounds` such aggregations of `buffer_size` clients sampled
uniformly from the population (FedAsync: of 1 client). The uniform-sampling amplification is
an assumption here: which clients fill a buffer depends on their speed.

Resuming: the checkpointed state is the model after a server step; work in flight at the
interruption is lost (as when a server restarts), so a resumed async run continues
deterministically but does not repeat an uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import time
from typing import Any

import numpy as np
import tensorflow_federated as tff
from absl import logging

from tff_gan import config as config_lib
from tff_gan import data
from tff_gan import process as process_lib

_CHOICE_SALT = 0xA5C
_STRAGGLER_SALT = 0x5716
_LATENCY_SALT = 0x1A7
_DROPOUT_SALT = 0xD70
_SUB_ROUND = 1 << 40  # Separates the key seeds of several dispatches at one model version.


def staleness_weight(staleness, exponent: float):
  """s(τ) = (1 + τ)^(−a): 1 for a fresh update, smaller the staler it is (a ≥ 0)."""
  return (1.0 + np.asarray(staleness, np.float64)) ** (-exponent)


@dataclasses.dataclass(frozen=True)
class ClientClock:
  """Simulated seconds a client's local work takes.

  Task `j` of client `k` takes exp(mu + sigma·ε), ε ~ N(0, 1) drawn from (seed, j, k), times
  `straggler_slowdown` if `k` is a straggler; a fixed `straggler_fraction` of clients are,
  drawn from (seed, k). `timeout` is how long the server waits for a report before giving up
  on it: `client_timeout`, or by default the time a straggler takes at the 99.9th percentile
  (mu + 3.09 sigma), so it cuts off only clients that will never report.
  """

  mu: float
  sigma: float
  straggler_fraction: float
  straggler_slowdown: float
  timeout: float
  seed: int

  @classmethod
  def from_config(cls, config) -> ClientClock:
    mu, sigma = config.latency
    timeout = config.client_timeout or (
        config.straggler_slowdown * math.exp(mu + 3.09 * sigma))
    return cls(mu, sigma, config.straggler_fraction, config.straggler_slowdown, timeout,
               config.seed)

  def is_straggler(self, client_ids) -> np.ndarray:
    return np.array([np.random.default_rng([self.seed, _STRAGGLER_SALT, int(k)]).random()
                     < self.straggler_fraction for k in client_ids], bool)

  def durations(self, client_ids, task_index: int) -> np.ndarray:
    """Seconds each of `client_ids` takes for its task number `task_index`."""
    client_ids = np.asarray(client_ids, np.int64)
    noise = np.array([np.random.default_rng([self.seed, _LATENCY_SALT, task_index, int(k)])
                      .standard_normal() for k in client_ids])
    seconds = np.exp(self.mu + self.sigma * noise) if len(client_ids) else np.zeros(0)
    return np.where(self.is_straggler(client_ids), self.straggler_slowdown, 1.0) * seconds

  def sync_round_seconds(self, client_ids, completed, round_num: int) -> float:
    """How long a synchronous round waits: for its slowest client, or the timeout when a
    sampled client never reports."""
    if len(completed) < len(client_ids):
      return self.timeout
    if not len(client_ids):
      return 0.0
    return float(min(self.durations(client_ids, round_num).max(), self.timeout))


@dataclasses.dataclass
class _Task:
  client_id: int
  version: int  # The model version the client downloaded.
  key: np.ndarray  # Its dataset key (`data.round_keys`).
  output: Any = None  # Its `ClientOutput` and discarded flag, once computed.
  discarded: Any = None


def _client_work_on_keys(process, population: data.ClientData, work: data.LocalWork):
  """The process's client half, taking each client's dataset key instead of its data."""
  return tff.simulation.compose_dataset_computation_with_computation(
      process_lib.keyed_dataset_computation(population, work), process.async_parts.client_work)


def train_async(config, process, population: data.ClientData, work: data.LocalWork, state, *,
                start_round: int, start_time: float, recorder, traffic):
  """Runs server steps `start_round + 1 .. config.rounds` asynchronously (module docstring).

  Args:
    config: The run's `TrainConfig` (`mode='async'`).
    process: The run's process (from `training.build_process`), whose `async_parts` hold
      its client and server halves.
    population: The run's `data.ClientData`.
    work: The clients' `data.LocalWork`.
    state: The `ServerState` to start from (version `start_round`).
    start_round: Server steps already taken.
    start_time: Simulated seconds already elapsed.
    recorder: The run's `training.RoundRecorder`, which evaluates, releases and saves.
    traffic: The run's `communication.RoundTraffic` (bytes per client, each way).

  Returns:
    `(state, last_row)`.

  Raises:
    config.ConfigError: If the buffer is larger than the population.
  """
  client_work = _client_work_on_keys(process, population, work)
  server_step = process.async_parts.server_step
  clock = ClientClock.from_config(config)
  num_clients = population.num_clients
  capacity = min(config.max_concurrent_clients, num_clients)
  if config.async_rule == 'fedbuff' and capacity < config.buffer_size:
    raise config_lib.ConfigError(f'--buffer_size={config.buffer_size} exceeds the {num_clients} '
                                 'clients of the data; lower it.')
  version, now = start_round, start_time
  in_flight: dict[int, _Task] = {}
  events: list[tuple[float, int, str, int]] = []  # (time, sequence, kind, client id)
  sequence = 0
  dispatches_at_version = 0
  dispatched_since_step = 0
  buffer: list[tuple[_Task, int]] = []
  pending: list[_Task] = []  # Dispatched at the current version, not yet computed.
  row: dict[str, Any] = {}
  wall_start = time.perf_counter()

  def dispatch() -> None:
    """Sends the current model to clients until `capacity` are at work."""
    nonlocal sequence, dispatches_at_version, dispatched_since_step
    free = capacity - len(in_flight)
    if free <= 0:
      return
    sub = dispatches_at_version
    dispatches_at_version += 1
    rng = np.random.default_rng([config.seed, _CHOICE_SALT, version, sub])
    idle = np.setdiff1d(np.arange(num_clients), np.fromiter(in_flight, np.int64))
    chosen = np.sort(rng.choice(idle, min(free, len(idle)), replace=False))
    # Sub-dispatch 0 of version v uses the keys of synchronous round v + 1.
    round_num = version + 1 + sub * _SUB_ROUND
    keys = data.round_keys(chosen, round_num=round_num, seed=config.seed)
    durations = clock.durations(chosen, round_num)
    survivors = set(data.surviving_clients(chosen, config.dropout_rate, round_num=round_num,
                                           seed=config.seed).tolist())
    for k, client_id in enumerate(chosen.tolist()):
      arrives = client_id in survivors and durations[k] <= clock.timeout
      task = _Task(client_id, version, keys[k])
      in_flight[client_id] = task
      if arrives:  # Work that will never be reported is not computed.
        pending.append(task)
      delay, kind = (durations[k], 'arrive') if arrives else (clock.timeout, 'timeout')
      heapq.heappush(events, (now + delay, sequence, kind, client_id))
      sequence += 1
    dispatched_since_step += len(chosen)

  def compute_pending() -> None:
    """Runs, in one TFF call, the work of every client sent the current model.

    A client's update depends only on the model it downloaded and its key, so it is computed
    lazily, just before that model changes: the clients dispatched at one version share a
    call, instead of one call per client.
    """
    if not pending:
      return
    outputs = client_work(state, [task.key for task in pending])
    for task, (output, discarded) in zip(pending, outputs, strict=True):
      task.output, task.discarded = output, discarded
    pending.clear()

  def step() -> None:
    """Applies the buffer as one server step and records it."""
    nonlocal state, version, buffer, dispatches_at_version, dispatched_since_step, row
    nonlocal wall_start
    compute_pending()
    staleness = np.array([tau for _, tau in buffer])
    scales = staleness_weight(staleness, config.staleness_exponent)
    if config.async_rule == 'fedasync':
      scales = config.fedasync_mixing * scales
    state, metrics = server_step(
        state, [task.output for task, _ in buffer], [task.discarded for task, _ in buffer],
        [np.float32(scale) for scale in scales])
    version += 1
    dispatches_at_version = 0
    from tff_gan import training  # noqa: PLC0415 (training imports this module at its top)

    row = training.round_row(version, time.perf_counter() - wall_start, len(buffer),
                             len(buffer), metrics, traffic)
    row['bytes_down'] = traffic.bytes_down(dispatched_since_step)
    row.update(simulated_time=now, mean_staleness=float(staleness.mean()),
               max_staleness=int(staleness.max()))
    recorder.finish(row, state, version)
    recorder.advance()
    buffer = []
    dispatched_since_step = 0
    wall_start = time.perf_counter()

  needed = config.buffer_size if config.async_rule == 'fedbuff' else 1
  while version < config.rounds:
    dispatch()
    if not events:
      raise RuntimeError('no client is at work; this is a bug in the event loop.')
    # Handle every event at this instant before sending the model out again, so clients
    # that report together are applied together (as a synchronous round would).
    now = events[0][0]
    while events and events[0][0] == now and version < config.rounds:
      _, _, kind, client_id = heapq.heappop(events)
      task = in_flight.pop(client_id)
      if kind == 'timeout':
        logging.info('client %d did not report within %.3g s; another takes its place.',
                     client_id, clock.timeout)
        continue
      buffer.append((task, version - task.version))
      if len(buffer) == needed:
        step()
  return state, row
