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

Client work and server steps remain TFF computations (`GanProcess.client_work` and
`GanProcess.server_step`): a client's
update is computed when it is dispatched, from the model it downloads, and held until its
simulated arrival. Only the event loop is Python.

Differential privacy (`--dp_unit=client`): each server step aggregates its buffer with the
run's DP aggregator: each report clipped to C, Gaussian noise of std z·C added once to the
buffer's sum. Nothing here is a secret random sample, so ε credits no amplification by
sampling: who is asked is drawn from the seed in config.json, and who fills a buffer depends
on the clients' speed (stragglers are fixed per client). That schedule does not depend on the
data, so neighbouring runs share it and differ in one client's data, whose reports turn into
zero updates. A client that reported c times into a buffer (a fast client can report twice:
it leaves work when it reports and may be sent the model again before the buffer fills)
moves the buffer's sum by up to c·C. Client k's steps
compose into one Gaussian mechanism of noise multiplier z/√S_k, S_k = Σ_steps c², so its ε is
that Gaussian's at δ (`ledgers.AsyncClientLedger`, the run's accountant; FedAsync: S_k is
k's count of reports). `metrics.csv`'s `epsilon` is the largest over clients and
`client_epsilon.csv` lists every client's. Each step's reports, with multiplicity, are
appended to `checkpoints/async_reports.csv` (`ledgers.AsyncReports`) as the step is applied;
a resumed run continues that record (and refuses to resume without it), so its ε counts
every step applied in the run directory.

Resuming: the checkpointed state is the model after a server step; work in flight at the
interruption is lost (as when a server restarts), so a resumed async run continues
deterministically but does not repeat an uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import heapq
import time
from typing import Any

import numpy as np
from absl import logging

from tff_gan.clients import populations, sampling
from tff_gan.clients.clock import ClientClock
from tff_gan.core import seeds
from tff_gan.run import secure_rounds
from tff_gan.run.config import ConfigError
from tff_gan.run.ledgers import AsyncReports
from tff_gan.run.persistence import CheckpointError
from tff_gan.run.recorder import round_row
from tff_gan.runtime import signals

_SUB_ROUND = 1 << 40  # Separates the key seeds of several dispatches at one model version.


def staleness_weight(staleness, exponent: float):
  """s(τ) = (1 + τ)^(−a): 1 for a fresh update, smaller the staler it is (a ≥ 0)."""
  return (1.0 + np.asarray(staleness, np.float64)) ** (-exponent)


@dataclasses.dataclass
class _Task:
  client_id: int
  version: int  # The model version the client downloaded.
  key: np.ndarray  # Its dataset key (`populations.round_keys`).
  output: Any = None  # Its `ClientOutput` and discarded flag, once computed.
  discarded: Any = None


def train_async(config, process, num_clients: int, state, *, start_round: int,
                start_time: float, recorder, traffic, secure_round=None):
  """Runs server steps `start_round + 1 .. config.rounds` asynchronously (module docstring).

  Args:
    config: The run's `TrainConfig` (`mode='async'`).
    process: The run's `GanProcess`, taking clients' dataset keys
      (`GanProcess.with_client_data`); its `client_work` and `server_step` are the round's
      two halves.
    num_clients: The population's size.
    state: The `ServerState` to start from (version `start_round`).
    start_round: Server steps already taken.
    start_time: Simulated seconds already elapsed.
    recorder: The run's `recorder.RoundRecorder`, which evaluates, releases and saves.
    traffic: The run's `communication.RoundTraffic` (bytes per client, each way).
    secure_round: Under `--aggregator=he`, the run's `secure_rounds.SecureRounds`: each
      buffer is summed encrypted, its staleness weights as integer multipliers (under DP,
      each client scales its update before it clips it, and the key holder adds the noise).

  Returns:
    `(state, last_row)`.

  Raises:
    config.ConfigError: If the buffer is larger than the population.
    persistence.CheckpointError: If, under differential privacy, the record of the
      checkpointed steps' reports (`ledgers.AsyncReports`) is missing or damaged.
  """
  client_work, server_step = process.client_work, process.server_step
  clock = ClientClock.from_config(config)
  capacity = min(config.max_concurrent_clients, num_clients)
  if config.async_rule == 'fedbuff' and capacity < config.buffer_size:
    raise ConfigError(f'--buffer_size={config.buffer_size} exceeds the {num_clients} '
                                 'clients of the data; lower it.')
  reports = None
  if config.dp_enabled:  # The record the run's ε counts (`ledgers.AsyncClientLedger`).
    reports = AsyncReports(config.output_dir)
    problem = reports.resume_problem(start_round)
    if problem:
      raise CheckpointError(f'{problem}, so ε cannot be accounted; rerun with --overwrite to '
                            'start over.')
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
    rng = np.random.default_rng([config.seed, seeds.ASYNC_CHOICE_SALT, version, sub])
    idle = np.setdiff1d(np.arange(num_clients), np.fromiter(in_flight, np.int64))
    chosen = np.sort(rng.choice(idle, min(free, len(idle)), replace=False))
    # Sub-dispatch 0 of version v uses the keys of synchronous round v + 1.
    round_num = version + 1 + sub * _SUB_ROUND
    keys = populations.round_keys(chosen, round_num=round_num, seed=config.seed)
    durations = clock.durations(chosen, round_num)
    survivors = set(sampling.surviving_clients(chosen, config.dropout_rate, round_num=round_num,
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
    staleness = np.array([tau for _, tau in buffer])
    scales = staleness_weight(staleness, config.staleness_exponent)
    if config.async_rule == 'fedasync':
      scales = config.fedasync_mixing * scales
    with recorder.kept_if_a_worker_fails(state, version):
      compute_pending()
      if secure_round is None:
        state, metrics = server_step(
            state, [task.output for task, _ in buffer], [task.discarded for task, _ in buffer],
            [np.float32(scale) for scale in scales])
      else:
        state, metrics, secure_bytes = secure_round.apply(
            state, [(task.client_id, task.output, task.discarded) for task, _ in buffer],
            [task.client_id for task, _ in buffer], version + 1, scales=scales)
    if reports is not None:  # What the ledger counts, recorded with the step it counts.
      reports.append(version + 1, [task.client_id for task, _ in buffer])
    version += 1
    dispatches_at_version = 0
    row = round_row(version, time.perf_counter() - wall_start, len(buffer),
                             len(buffer), metrics, traffic)
    row['bytes_down'] = traffic.bytes_down(dispatched_since_step)
    if secure_round is not None:
      secure_rounds.update_row(row, metrics, secure_bytes)
    row.update(simulated_time=now, mean_staleness=float(staleness.mean()),
               max_staleness=int(staleness.max()))
    recorder.finish(row, state, version)
    recorder.advance()
    buffer = []
    dispatched_since_step = 0
    wall_start = time.perf_counter()

  needed = config.buffer_size if config.async_rule == 'fedbuff' else 1
  while version < config.rounds:
    # A signal stops the run after this instant's events, with the model checkpointed.
    with signals.deferred():
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
      recorder.save_if_stopping(state, version)
  return state, row
