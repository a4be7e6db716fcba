"""What happens after each round's computation: its `metrics.csv` row, ε, evaluation,
samples, release, checkpoint and progress bar (shared by the sync and async loops)."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np
from absl import logging

from tff_gan import choices, files
from tff_gan.algorithms import communication
from tff_gan.core import conditional
from tff_gan.core.state import ServerState
from tff_gan.run import pictures, rundir
from tff_gan.run.config import TrainConfig
from tff_gan.runtime import signals
from tff_gan.runtime.workers import WorkerError

BASE_COLUMNS = ('round', 'round_seconds', 'clients', 'clients_completed', 'bytes_down',
                'bytes_up', 'd_loss', 'g_loss', 'num_examples', 'non_finite_clients')
CONDITIONAL_METRICS = ('conditional_accuracy',)
# Of each client's own classes (modes), the fraction the samples cover: the least-covered
# client's and the mean over clients. Labelled tasks whose clients' classes are known.
COVERAGE_METRICS = ('min_client_coverage', 'mean_client_coverage')
ASYNC_COLUMNS = ('simulated_time', 'mean_staleness', 'max_staleness')


def metric_names(config: TrainConfig, task) -> tuple[str, ...]:
  """The evaluation columns of `metrics.csv`: the task's metrics (and the conditional one)."""
  return tuple(task.metric_names) + (CONDITIONAL_METRICS if config.conditional else ())


def columns(config: TrainConfig, task, *, coverage: bool = False) -> tuple[str, ...]:
  """Every column of the run's `metrics.csv`, in order (`coverage`: `COVERAGE_METRICS` too)."""
  timing = ()
  if config.mode == 'async':
    timing = ASYNC_COLUMNS
  elif config.client_latency:
    timing = ('simulated_time',)
  privacy = ('epsilon',) if config.dp_enabled else ()
  if config.aggregator in choices.SECURE_AGGREGATORS and not config.dp_enabled:
    # `secure_rounds.CLIPPED_METRIC`, a release of client data that DP withholds.
    privacy += ('clipped_fraction',)
  return (BASE_COLUMNS + timing + privacy + metric_names(config, task)
          + (COVERAGE_METRICS if coverage else ()))


def client_coverage(covered: np.ndarray, client_labels: np.ndarray) -> dict[str, float]:
  """`COVERAGE_METRICS` from the covered classes `[K]` and each client's classes `[N, K]`."""
  held = client_labels.sum(axis=1)
  fractions = (client_labels & covered[None]).sum(axis=1) / np.maximum(held, 1)
  fractions = fractions[held > 0]
  return {'min_client_coverage': float(fractions.min()),
          'mean_client_coverage': float(fractions.mean())}


def round_row(round_num: int, seconds: float, num_clients: int, num_completed: int,
              metrics, traffic: communication.RoundTraffic) -> dict[str, Any]:
  """The `metrics.csv` fields a round's process metrics give (released ones only)."""
  row: dict[str, Any] = {'round': round_num, 'round_seconds': seconds, 'clients': num_clients,
                         'clients_completed': num_completed,
                         'bytes_down': traffic.bytes_down(num_clients)}
  if metrics is None:  # Every sampled client dropped out: nothing was run or released.
    row['bytes_up'] = 0
    return row
  row['bytes_up'] = traffic.bytes_up(num_completed)
  client, server = metrics.get('client', {}), metrics['server']
  if 'discriminator_loss' in client:
    row['d_loss'] = float(client['discriminator_loss'])
  if 'generator_loss' in server:
    row['g_loss'] = float(server['generator_loss'])
  elif 'generator_loss' in client:
    row['g_loss'] = float(client['generator_loss'])
  if 'num_examples' in metrics:
    row['num_examples'] = int(metrics['num_examples'])
    row['non_finite_clients'] = int(metrics['non_finite_clients'])
  return row


class RoundRecorder:
  """Finishes a round's row: ε, evaluation and samples, release, checkpoint, progress bar."""

  def __init__(self, config: TrainConfig, task, *, generator_weights, sample, ledger, release,
               checkpoints, progress, checkpoint_value=lambda state: state,
               client_labels: np.ndarray | None = None):
    """Args:
      config: The run's configuration.
      task: The run's task (`evaluate`, `render`, `metric_names`, `num_labels`).
      generator_weights: `state -> weights`, the process's accessor
        (`GanProcess.generator_weights`).
      sample: `(generator_weights, num_samples, seed) -> samples` (`export.SampleGenerator`).
      ledger: The run's `ledgers` ledger, or None without differential privacy. One that
        keeps each client's ε (`ledgers.ExampleLevelLedger`) also writes
        `client_epsilon.csv` at every evaluation.
      release: The run's `persistence.MetricsRelease`.
      checkpoints: The run's `persistence.Checkpoints`.
      progress: A tqdm bar; the round loop advances it.
      checkpoint_value: `state -> what a checkpoint saves` (the server state, with every
        client's state where clients keep one).
      client_labels: Which classes each client holds, bool `[num_clients, num_labels]`
        (`ClientData.client_labels`), for `COVERAGE_METRICS`; None to skip them.
    """
    self._client_labels = client_labels
    self._checkpoint_value = checkpoint_value
    self._config, self._task, self._sample, self._ledger = config, task, sample, ledger
    self._generator_weights = generator_weights
    self._release, self._checkpoints = release, checkpoints
    self._progress = progress
    self._metric_names = metric_names(config, task)
    self._samples_dir = os.path.join(config.output_dir, rundir.SAMPLES_DIR)
    self._latest_evaluation: dict[str, Any] = {}  # Shown on the progress bar in between.

  def finish(self, row: dict[str, Any], state: ServerState, round_num: int) -> None:
    """Records round `round_num` whole: a signal meanwhile stops the run once it is done, so
    a stop never leaves a round's row, samples or checkpoint half written. If a signal is
    held (`signals.held`), here or in the loop's block around the round, the round is
    checkpointed whatever `checkpoint_every` says, so the stop loses no round."""
    with signals.deferred():
      self._finish(row, state, round_num)
      self.save_if_stopping(state, round_num)

  def save_if_stopping(self, state: ServerState, round_num: int) -> None:
    """Checkpoints `state` as round `round_num` if a signal is held and no checkpoint of that
    round exists (a loop calls this, within its `signals.deferred` block, where a signal may
    have arrived between rounds)."""
    if signals.held():
      self._keep(state, round_num)

  @contextlib.contextmanager
  def kept_if_a_worker_fails(self, state: ServerState, round_num: int):
    """Within the block (a round's computation from `state`, the state of round `round_num`,
    the last recorded), a lost or dead TFF worker (`WorkerError`) first checkpoints `state`,
    so the same command resumes after the last round recorded. A save that fails too is
    logged: the worker's error is the one to report."""
    try:
      yield
    except WorkerError:
      try:
        self._keep(state, round_num)
      except Exception as e:  # noqa: BLE001
        logging.warning('after losing a worker, could not save round %d: %s', round_num, e)
      raise

  def _keep(self, state: ServerState, round_num: int) -> None:
    """Checkpoints round `round_num` unless it is saved already (or is round 0)."""
    if round_num > 0 and round_num not in self._checkpoints.rounds():
      self._checkpoints.save(self._checkpoint_value(state), round_num)

  def _finish(self, row: dict[str, Any], state: ServerState, round_num: int) -> None:
    config, task = self._config, self._task
    if self._ledger is not None:
      row['epsilon'] = self._ledger.epsilon(state)
    if round_num % config.eval_every == 0 or round_num == config.rounds:
      samples = self._sample(self._generator_weights(state), config.num_eval_samples,
                             seed=config.seed + round_num)
      row.update(evaluate_samples(task, samples, config.conditional))
      if config.conditional:
        samples, _ = conditional.unpack(samples, task.num_labels)
      if self._client_labels is not None:
        row.update(client_coverage(task.covered_labels(samples), self._client_labels))
      if hasattr(self._ledger, 'client_table'):
        files.write_text(os.path.join(config.output_dir, rundir.CLIENT_EPSILON_FILE),
                         self._ledger.client_table(round_num))
      path = os.path.join(self._samples_dir, f'round_{round_num:05d}.png')
      task.render(samples, path)
      pictures.add_title(path, pictures.metrics_title(
          round_num, row, self._metric_names + COVERAGE_METRICS + ('epsilon',)))
    self._release.release(row, round_num)
    if round_num % config.checkpoint_every == 0 or round_num == config.rounds:
      self._checkpoints.save(self._checkpoint_value(state), round_num)
    self._latest_evaluation.update({k: row[k] for k in self._metric_names if k in row})
    self._progress.set_postfix(
        _progress_fields({**row, **self._latest_evaluation}, self._metric_names), refresh=False)

  def advance(self) -> None:
    """Moves the progress bar one round on (for loops that do not iterate over it)."""
    self._progress.update(1)


def evaluate_samples(task, samples: np.ndarray, conditional_gan: bool) -> dict[str, float]:
  """The task's metrics of generator samples; for a conditional GAN also
  `conditional_accuracy`: the fraction of samples the task's judge (`task.predict_labels`)
  assigns to the class they were generated for (1/K for a generator that ignores its class).
  """
  if not conditional_gan:
    return task.evaluate(samples)
  examples, labels = conditional.unpack(samples, task.num_labels)
  metrics = task.evaluate(examples)
  metrics['conditional_accuracy'] = float(np.mean(task.predict_labels(examples) == labels))
  return metrics


def _progress_fields(row, metric_names):
  fields = {}
  for name in ('d_loss', 'g_loss', 'epsilon', *metric_names):
    if name in row:
      fields[name] = f'{row[name]:.3g}'
  return fields
