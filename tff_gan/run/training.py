"""A training run: prepare the run directory, then run its rounds (or resume them).

Writes to `config.output_dir` the files listed in `rundir`: `config.json`, `metrics.csv` (one
row per round: `round`, `round_seconds`, `clients` (sampled), `clients_completed` (those that
did not drop out), `bytes_down` and `bytes_up` (payload bytes the round sent to the sampled
clients and received from those that completed, sized from the types the round's
computation sends: see `algorithms.communication`), `d_loss`, `g_loss`, `num_examples`,
`non_finite_clients` (client updates with a NaN or Inf, given weight 0), `epsilon` (with
differential privacy), then the task's metric columns, empty on rounds not evaluated),
`samples/`, `checkpoints/`, `tb/`, `real_data_metrics.json` and `classifier/` (tasks with real
data) and `worker.log`. Under differential privacy the clients' losses and example counts are
not released, so `d_loss` and `num_examples` stay empty (and `g_loss` too in `fedgan`; in
`dp_fedavg_gan` it is the server generator's loss).

`train` runs synchronous rounds here; `--mode=async` hands the same process to
`async_training`. Both finish each round with a `recorder.RoundRecorder`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import time
from typing import Any

import numpy as np
from absl import logging
from tqdm import tqdm

from tff_gan import choices, files
from tff_gan.algorithms import communication
from tff_gan.clients import clock as clock_lib
from tff_gan.clients import populations, sampling
from tff_gan.core import seeds
from tff_gan.core.state import ServerState
from tff_gan.run import (
  async_training,
  builders,
  export,
  ledgers,
  persistence,
  pictures,
  recorder,
  rundir,
  schemes,
  secure_rounds,
)
from tff_gan.run.client_states import ClientStates, load_run_state, run_state
from tff_gan.run.config import ConfigError, TrainConfig
from tff_gan.runtime import remote, signals

# The most `--scheme=multi_d`'s default secure clip grows to (`_secure_settings`).
FEEDBACK_CLIP = 1e4


@dataclasses.dataclass
class TrainResult:
  """What a finished run returns.

  Attributes:
    state: The final server state.
    last_row: The last `metrics.csv` row.
    generator_weights: The final generator's trainable weights, in Keras variable order
      (`export.build_generator` turns them into a Keras model).
  """

  state: ServerState
  last_row: dict[str, Any]
  generator_weights: Any


def train(config: TrainConfig, task, *, show_progress: bool = True,
          overwrite: bool = False) -> TrainResult:
  """Runs `config.rounds` federated rounds of `config.scheme` on `task`, or resumes them.

  If `config.output_dir` holds checkpoints of the same configuration (see
  `rundir.check_same_run`), training continues after the latest one and ends exactly as an
  uninterrupted run would: the same weights and the same `metrics.csv` rows.

  Args:
    config: A `TrainConfig` (validated here).
    task: A task from `tasks.get_task` (examples, labels, `gan_models()`, `evaluate`,
      `render`, `metric_names`).
    show_progress: Whether to show a tqdm progress bar on stderr.
    overwrite: Delete the outputs of an earlier run in `config.output_dir` and start over.

  Returns:
    A `TrainResult`.

  Raises:
    ConfigError: For an invalid configuration, or one that differs from the run already in
      `config.output_dir`.
    persistence.CheckpointError: If the checkpoint to resume from cannot be read.
    workers.WorkerError: If a worker cannot be reached at start, or is lost mid-run
      (`--executor=remote`), or the local worker fails.
  """
  config.validate()
  rundir.check_output_dir_writable(config.output_dir)
  with rundir.run_lock(config.output_dir):
    try:
      return _train(config, task, show_progress=show_progress, overwrite=overwrite)
    except (signals.Interrupted, signals.Terminated) as stop:
      signals.handled()
      raise _stopped(stop.signum, config) from None
    except OSError as e:  # Writing metrics, samples or pictures: a full disk, permissions.
      raise persistence.StorageError(
          f'cannot write {e.filename or config.output_dir} ({e.strerror or e}); free space or '
          'fix permissions, then rerun the same command to resume from the last '
          'checkpoint.') from e


def _stopped(signum: int, config: TrainConfig) -> signals.RunStopped:
  """Where a signal stopped the run, what is kept, and how to resume, as one line."""
  rows = rundir.read_metrics(config.output_dir)
  try:
    saved = persistence.Checkpoints(config.output_dir, read_only=True).latest_round()
  except Exception:  # noqa: BLE001 (no readable checkpoint: say so, do not fail again)
    saved = None
  where = f'after round {rows[-1]["round"]}' if rows else 'before its first round'
  kept = (f'the checkpoint of round {saved} in {config.output_dir} is kept' if saved
          else 'no checkpoint was saved yet')
  return signals.RunStopped(f'stopped by {signal.Signals(signum).name} {where} of '
                            f'{config.rounds}; {kept}: rerun the same command to resume.',
                            signum)


def _train(config: TrainConfig, task, *, show_progress: bool, overwrite: bool) -> TrainResult:
  """`train` once the run directory is held: every check first, then the first write."""
  tls_settings = builders.client_tls(config)  # The TLS files, read once.
  if config.executor == 'remote':  # Before the minutes of preparation below.
    remote.check_workers_answer(config.worker_addresses, config.worker_timeout, tls_settings)
  if not overwrite:
    rundir.check_same_run(config)
  scheme = schemes.for_config(config)
  try:
    models = task.gan_models(config.conditional)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  population = scheme.population(config, task)
  config = config.with_population(population.num_clients).validate()
  scheme.check_population(config, population)
  work = scheme.local_work(config, task)
  secure_settings = _secure_settings(config, population, work, models)
  process = scheme.build_process(config, models)
  traffic = communication.round_traffic(process.next)
  keyed_process = process.with_client_data(population, work)
  sample = export.SampleGenerator(models)
  ledger = ledgers.epsilon_ledger(
      config, population.client_sizes,
      lambda round_num: scheme.client_ids(config, population.num_clients, round_num))

  if overwrite:  # Only now, when every usage error would have been raised.
    rundir.remove_outputs(config.output_dir)
  files.write_text(os.path.join(config.output_dir, rundir.CONFIG_FILE), config.to_json() + '\n')
  os.makedirs(os.path.join(config.output_dir, rundir.SAMPLES_DIR), exist_ok=True)
  checkpoints = persistence.Checkpoints(config.output_dir)
  client_labels = (population.client_labels(task.labels, task.num_labels) if task.labelled
                   else None)
  release = persistence.MetricsRelease(
      config.output_dir, recorder.columns(config, task, coverage=client_labels is not None))
  with builders.execution_context(config, scheme.parallel_clients(config), tls_settings):
    _prepare_evaluation(config, task, population)
    state = process.initialize()
    client_states = None
    if process.initial_client_state is not None:
      client_states = ClientStates(process.initial_client_state(state), population.num_clients)
    start_round = checkpoints.latest_round() or 0
    if start_round > config.rounds:
      raise ConfigError(
          f'--output_dir {config.output_dir} has a checkpoint at round {start_round}, beyond '
          f'--rounds={config.rounds}; raise --rounds, or rerun with --overwrite to start over.')
    if start_round:
      state = load_run_state(checkpoints, start_round, state, client_states)
      logging.info('resuming from the checkpoint of round %d', start_round)
    elif client_states is not None and config.warm_start_steps:
      _warm_start(config, keyed_process, population.num_clients, state, client_states)
    row: dict[str, Any] = rundir.last_released_row(config.output_dir) if start_round else {}
    rounds = tqdm(range(start_round + 1, config.rounds + 1), desc='rounds', unit='round',
                  initial=start_round, total=config.rounds, disable=not show_progress,
                  dynamic_ncols=True)
    round_recorder = recorder.RoundRecorder(
        config, task, generator_weights=process.generator_weights, sample=sample,
        ledger=ledger, release=release, checkpoints=checkpoints, progress=rounds,
        checkpoint_value=lambda state: run_state(state, client_states),
        client_labels=client_labels)
    start_time = float(row.get('simulated_time', 0.0))
    with (secure_rounds.SecureRounds(keyed_process, secure_settings) if secure_settings
          else contextlib.nullcontext()) as secure_round:
      if config.mode == 'async':
        state, last_row = async_training.train_async(
            config, keyed_process, population.num_clients, state, start_round=start_round,
            start_time=start_time, recorder=round_recorder, traffic=traffic,
            secure_round=secure_round)
        rounds.close()
        row = last_row or row
      else:
        state, row = _train_sync(config, scheme, keyed_process, population, state, rounds,
                                 round_recorder, traffic, start_time, row, client_states,
                                 secure_round)
  _write_curves(config, task)
  return TrainResult(state, row, process.generator_weights(state))


def _warm_start(config: TrainConfig, process, num_clients: int, state,
                client_states: ClientStates) -> None:
  """Every client pretrains the state it keeps (`GanProcess.warm_start`) before round 1,
  `clients_per_round` clients a call. Its keys are round 0's, which no round uses; it is
  deterministic, so a run stopped before its first checkpoint redoes it identically."""
  logging.info('warm start: %d steps for each discriminator of %d clients',
               config.warm_start_steps, num_clients)
  for chunk in np.array_split(np.arange(num_clients),
                              -(-num_clients // max(config.clients_per_round, 1))):
    keys = populations.round_keys(chunk, round_num=0, seed=config.seed)
    client_states.scatter(chunk, process.warm_start(state, keys, client_states.gather(chunk)))


def _prepare_evaluation(config: TrainConfig, task, population) -> None:
  """The task's evaluation, pooled or on the clients (`--eval`), in the run's TFF context."""
  clients = population if config.eval == 'federated' else None
  reference = task.prepare_evaluation(os.path.join(config.output_dir, rundir.CLASSIFIER_DIR),
                                      clients=clients)
  if reference:
    files.write_text(os.path.join(config.output_dir, rundir.REFERENCE_FILE),
                     json.dumps(reference, indent=2, sort_keys=True) + '\n')
    logging.info('held-out real data scores %s', reference)


def _write_curves(config: TrainConfig, task) -> None:
  """`training_curves.png` from the run's whole `metrics.csv` (resumed runs included)."""
  rows = rundir.read_metrics(config.output_dir)
  title = f'{config.task}, {config.scheme}, {config.partition} clients, seed {config.seed}'
  names = recorder.metric_names(config, task) + recorder.COVERAGE_METRICS
  pictures.write_training_curves(rows, names, os.path.join(config.output_dir, rundir.CURVES_FILE),
                                 title)


def _secure_settings(config: TrainConfig, population, work,
                     models) -> secure_rounds.SecureSettings | None:
  """The secure sum's settings under `--aggregator=he` or `secagg` (else None), checked
  before anything is written: a configuration whose sums could wrap is a usage error.

  The client-resident schemes send feedback on samples, not model deltas, and `he` sums it
  in the wide BFV format (one ciphertext a client either way). `--scheme=gs_wgan`'s clients
  noise their own feedback and send a weight of 1, so the sum adds no noise and its weights
  are 1; unless `--secure_clip` is set, its clip is a bound the sanitized feedback passes
  with probability below 1e-8 (`secure_rounds.sanitized_bound`). `multi_d`'s feedback norms
  grow as its discriminators sharpen (`ring`'s defaults: 37 in round 1, 300 by round 10,
  2,700 by round 150); unless `--secure_clip` is set, its clip is the largest up to
  `FEEDBACK_CLIP` the sum holds at 8 fraction bits.
  """
  if config.aggregator not in choices.SECURE_AGGREGATORS:
    return None
  dp, clip = None, config.effective_secure_clip
  max_weight = secure_rounds.max_client_weight(population.client_sizes, work.local_epochs,
                                               work.batch_size, work.local_steps)
  resident = config.scheme in choices.CLIENT_RESIDENT_SCHEMES
  if config.scheme == 'gs_wgan':
    max_weight = 1
    if config.secure_clip is None:
      clip = secure_rounds.sanitized_bound(
          config.effective_dp_clip, config.dp_noise_multiplier,
          samples=config.server_gen_steps * config.batch_size,
          sample_size=int(np.prod(models.data_spec().shape[1:])))
  elif config.client_dp:  # The key holder adds the noise.
    dp = secure_rounds.SecureDp(
        noise_multiplier=config.dp_noise_multiplier, clip=config.effective_dp_clip,
        clients_per_round=config.clients_per_aggregation,
        noise_key=seeds.noise_key(config.dp_noise, config.seed))
  settings = secure_rounds.SecureSettings(
      aggregator=config.aggregator, clip=clip, max_weight=max_weight,
      max_clients=(config.num_clients if config.client_sampling == 'poisson'
                   and config.mode == 'sync' else config.clients_per_aggregation),
      seed=config.seed, dp=dp, neighbours=config.secagg_neighbours,
      threshold=config.secagg_threshold, asynchronous=config.mode == 'async', wide=resident)
  if config.scheme == 'multi_d' and config.secure_clip is None:
    clip = settings.largest_clip(FEEDBACK_CLIP)
    settings = dataclasses.replace(settings, clip=clip or config.effective_secure_clip)
  try:
    settings.fraction_bits()
  except ValueError as e:
    raise ConfigError(str(e)) from e
  return settings


def _train_sync(config: TrainConfig, scheme: schemes.Scheme, process, population, state,
                rounds, round_recorder, traffic, simulated_time: float, row, client_states,
                secure_round=None):
  """Synchronous rounds: sample, drop out, run the round on the survivors' keys, record.

  With `secure_round` (a `secure_rounds.SecureRounds`), each round's sum is computed
  securely; a round SecAgg+ aborts leaves the model as it is and counts no client completed.
  """
  clock = clock_lib.ClientClock.from_config(config) if config.latency else None
  for round_num in rounds:
    # A signal stops the run once the round is recorded and checkpointed (`RoundRecorder.
    # finish`), never inside a TFF call.
    with signals.deferred():
      with round_recorder.kept_if_a_worker_fails(state, round_num - 1):
        state, row, simulated_time = _sync_round(config, scheme, process, population, state,
                                                 round_num, traffic, simulated_time,
                                                 client_states, secure_round, clock)
      round_recorder.finish(row, state, round_num)
  return state, row


def _sync_round(config: TrainConfig, scheme: schemes.Scheme, process, population, state,
                round_num: int, traffic, simulated_time: float, client_states, secure_round,
                clock):
  """One synchronous round's computation and row: `(state, row, simulated_time)`."""
  client_ids = scheme.client_ids(config, population.num_clients, round_num)
  completed = sampling.surviving_clients(client_ids, config.dropout_rate,
                                         round_num=round_num, seed=config.seed)
  start = time.perf_counter()
  if len(completed) or not len(client_ids):
    keys = populations.round_keys(completed, round_num=round_num, seed=config.seed)
    if secure_round is not None:
      state, metrics, secure_bytes = secure_round.next(state, keys, client_ids, completed,
                                                       round_num, client_states)
      if metrics is None:  # Aborted: no client's update counted.
        completed = completed[:0]
    elif client_states is None:
      state, metrics = process.next(state, keys)
    else:  # Each client brings its own state and takes the new one back.
      state, new_client_states, metrics = process.next(state, keys,
                                                       client_states.gather(completed))
      client_states.scatter(completed, new_client_states)
  else:  # All sampled clients failed: the model stays as it is, and the row says so.
    metrics = None
    logging.warning('round %d: all %d sampled clients dropped out; model unchanged.',
                    round_num, len(client_ids))
  row = recorder.round_row(round_num, time.perf_counter() - start, len(client_ids),
                           len(completed), metrics, traffic)
  if not scheme.communicates:
    row['bytes_down'] = row['bytes_up'] = None
  if secure_round is not None and metrics is not None:
    secure_rounds.update_row(row, metrics, secure_bytes)
  if clock is not None:
    simulated_time += clock.sync_round_seconds(client_ids, completed, round_num)
    row['simulated_time'] = simulated_time
  return state, row, simulated_time
