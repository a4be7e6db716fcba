"""The round loop of a training run: sample clients, run a round, evaluate, write outputs.

Writes to `config.output_dir`:

* `config.json` — the `TrainConfig` of the run;
* `metrics.csv` — one row per round: `round`, `round_seconds`, `clients` (sampled),
  `clients_completed` (those that did not drop out), `bytes_down` and `bytes_up` (payload
  bytes the round sent to the sampled clients and received from those that completed, sized
  from the types the round's computation sends: see `communication`), `d_loss`, `g_loss`,
  `num_examples`, `non_finite_clients` (client updates with a NaN or Inf, given weight 0),
  `epsilon` (with differential privacy), then the task's metric
  columns (empty on rounds not evaluated). Under differential privacy the clients' losses and
  example counts are not released, so `d_loss` and `num_examples` stay empty (and `g_loss`
  too in `fedgan`; in `dp_fedavg_gan` it is the server generator's loss);
* `samples/round_NNNNN.png` — the task's rendering of generated samples at each evaluation;
* `checkpoints/round_N/` — the full state every `checkpoint_every` rounds (see `program`);
* `tb/` — TensorBoard event files of the metrics;
* `real_data_metrics.json`: the task's metrics of held-out real data, for scale (tasks with
  real data), and `classifier/` (the evaluation classifier of digits and emnist, cached:
  `--overwrite` keeps it);
* `worker.log` — the local TFF worker's own output (remote workers log where they run).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import time
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging
from tqdm import tqdm

from tff_gan import (
  aggregators,
  async_training,
  communication,
  conditional,
  contexts,
  data,
  losses,
  optimizers,
  privacy,
  program,
)
from tff_gan import config as config_lib
from tff_gan import process as process_lib
from tff_gan.models import GanModels
from tff_gan.partition import partition
from tff_gan.schemes import dp_fedavg_gan, fedgan, fedsgd
from tff_gan.state import ServerState

BASE_COLUMNS = ('round', 'round_seconds', 'clients', 'clients_completed', 'bytes_down',
                'bytes_up', 'd_loss', 'g_loss', 'num_examples', 'non_finite_clients')


@dataclasses.dataclass
class TrainResult:
  """What a finished run returns: the final server state and the last metrics row."""

  state: ServerState
  last_row: dict[str, Any]


def write_text_atomically(path: str, text: str) -> None:
  """Writes `text` to `path` through a temp file and a rename: no half-written file."""
  temporary = f'{path}.tmp'
  with open(temporary, 'w') as f:
    f.write(text)
  os.replace(temporary, path)


class SampleGenerator:
  """Draws samples from a generator given its weights, in the calling (eager) process."""

  def __init__(self, models: GanModels):
    self._models = models
    self._generator = models.generator_fn()

  def __call__(self, generator_weights, num_samples: int, seed: int) -> np.ndarray:
    for variable, value in zip(self._generator.trainable_variables, generator_weights, strict=True):
      variable.assign(value)
    noise = tf.random.stateless_normal([num_samples, self._models.noise_dim], seed=[seed, 1])
    return self._generator(noise, training=False).numpy()


def build_aggregator(config: config_lib.TrainConfig):
  """The `tff.aggregators` factory `config` asks for (DP-FedAvg when DP is on)."""
  if not config.dp_enabled:
    return aggregators.build_aggregator(config.aggregator, bits=config.effective_bits,
                                        hadamard=config.hadamard)
  try:
    return aggregators.dp_aggregator(
        noise_multiplier=config.dp_noise_multiplier,
        clients_per_round=config.clients_per_aggregation,
        clip=config.effective_dp_clip,
        adaptive_clip_quantile=config.dp_adaptive_clip_quantile,
    )
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from e


def build_process(config: config_lib.TrainConfig, models: GanModels):
  """The `tff.templates.IterativeProcess` that `config` asks for."""
  common = dict(
      loss=losses.get_loss(config.loss),
      client_optimizer=optimizers.build_optimizer(config.client_optimizer,
                                                  config.client_learning_rate),
      server_optimizer=optimizers.build_optimizer(config.server_optimizer,
                                                  config.server_learning_rate),
      aggregator=build_aggregator(config),
      release_client_metrics=not config.dp_enabled,
      proximal_mu=config.proximal_mu,
      seed=config.seed,
  )
  if config.scheme in ('fedgan', 'centralized'):  # Centralized: one client, all the data.
    return fedgan.build_fedgan_process(models, **common)
  if config.scheme == 'fedsgd':
    del common['client_optimizer'], common['proximal_mu']  # No local steps.
    return fedsgd.build_fedsgd_process(models, **common)
  if config.scheme == 'dp_fedavg_gan':
    return dp_fedavg_gan.build_dp_fedavg_gan_process(
        models,
        generator_optimizer=optimizers.build_optimizer('adam', config.generator_learning_rate),
        server_generator_steps=config.server_gen_steps,
        server_generator_batch_size=config.batch_size,
        **common,
    )
  raise config_lib.ConfigError(f"unknown --scheme '{config.scheme}'.")


class EpsilonLedger:
  """ε spent so far, from the round count and the DP event kept in the server state."""

  def __init__(self, config: config_lib.TrainConfig, num_clients: int):
    self._sampling = privacy.Sampling(config.client_sampling, num_clients,
                                      config.clients_per_aggregation)
    self._delta = config.effective_dp_delta
    self._accountant = config.dp_accountant
    self._curve = None

  def epsilon(self, state: ServerState) -> float:
    if self._curve is None:  # The same mechanism every round: account for it once.
      self._curve = privacy.EpsilonCurve(
          privacy.round_event_from_aggregator_state(state.aggregator_state), self._sampling,
          self._delta, self._accountant)
    return self._curve(int(state.round_num))


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


def centralized_steps(config: config_lib.TrainConfig, task) -> int:
  """Steps per round of `--scheme=centralized`: as many as the federated run takes in all.

  That is the expected total over the `clients_per_round` clients a FedGAN round with the
  same settings samples: `local_steps` each when set, else `local_epochs` passes over each
  client's share of the partition, averaged over clients.
  """
  population = build_population(dataclasses.replace(config, scheme='fedgan'), task)
  if config.local_steps:
    per_client = config.local_steps * np.ones(population.num_clients)
  else:
    per_client = config.local_epochs * np.ceil(population.client_sizes / config.batch_size)
  return max(1, round(per_client.mean() * config.clients_per_round))


def build_population(config: config_lib.TrainConfig, task) -> data.ClientData:
  """The clients of a run.

  * `--scheme=centralized`: one client holds all the task's examples.
  * `--partition=natural`: the data's own clients (writers, folders, files); with
    `num_clients` N > 0, N of them drawn at random (seeded), else all.
  * `config.examples_per_client`: each client draws its own examples on the executor
    (`data.GeneratedClients`, for tasks that generate data).
  * Otherwise the task's examples are split over `config.num_clients` clients as
    `config.partition` says.

  With `config.conditional`, every example carries its class (`tff_gan.conditional.pack`).
  """
  if config.scheme == 'centralized':
    examples = task.training_examples(config.conditional)
    return data.ClientPopulation(examples, [np.arange(len(examples))])
  if config.partition == 'natural':
    try:
      population = task.natural_population(config.conditional)
    except ValueError as e:
      raise config_lib.ConfigError(str(e)) from e
    if not config.num_clients:
      return population
    if config.num_clients > population.num_clients:
      raise config_lib.ConfigError(
          f'--num_clients={config.num_clients} exceeds the {population.num_clients} clients '
          f'in --data_dir {config.data_dir}; lower it, or 0 for all of them.')
    rng = np.random.default_rng(data.derived_seed(config.seed, 0x5B5))
    chosen = np.sort(rng.choice(population.num_clients, config.num_clients, replace=False))
    return data.ClientSubset(population, chosen)
  if config.examples_per_client:
    if not task.generates_data:
      raise config_lib.ConfigError(
          f'--examples_per_client needs a task that generates its examples (ring, grid); '
          f'task {task.name} holds a fixed dataset: drop the flag to split it over clients.')
    sample_fn = task.generate_examples
    if config.conditional:
      def sample_fn(labels, seed):
        return conditional.pack(task.generate_examples(labels, seed), labels, task.num_labels)
    try:
      return data.GeneratedClients(
          config.num_clients, config.examples_per_client, num_labels=task.num_labels,
          sample_fn=sample_fn, scheme=config.partition,
          dirichlet_alpha=config.dirichlet_alpha, labels_per_client=config.labels_per_client,
          seed=config.seed)
    except ValueError as e:
      raise config_lib.ConfigError(str(e)) from e
  if config.num_clients > len(task.examples):
    raise config_lib.ConfigError(f'--num_clients={config.num_clients} exceeds the '
                                 f'{len(task.examples)} examples of task {task.name}; use '
                                 'fewer clients, or --examples_per_client where the task '
                                 'generates data.')
  try:
    client_indices = partition(
        task.labels,
        config.num_clients,
        scheme=config.partition,
        dirichlet_alpha=config.dirichlet_alpha,
        labels_per_client=config.labels_per_client,
        seed=config.seed,
    )
    return data.ClientPopulation(task.training_examples(config.conditional), client_indices)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from e


CLASSIFIER_DIR = 'classifier'  # The evaluation classifier of image tasks, cached.
REFERENCE_FILE = 'real_data_metrics.json'  # The task's metrics of held-out real data.
OUTPUTS = (config_lib.CONFIG_FILE, 'metrics.csv', 'samples', 'worker.log', REFERENCE_FILE,
           program.CHECKPOINT_DIR, program.TENSORBOARD_DIR)


def remove_outputs(output_dir: str) -> None:
  """Deletes what a run writes to `output_dir` (and nothing else there)."""
  for name in OUTPUTS:
    path = os.path.join(output_dir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)


def execution_context(config: config_lib.TrainConfig):
  """Where the run's computations execute: a local worker, or `config.workers`."""
  if config.executor == 'remote':
    return contexts.remote_context(config.worker_addresses,
                                   timeout_seconds=config.worker_timeout)
  return contexts.local_cpp_context(
      log_path=os.path.join(config.output_dir, 'worker.log'),
      parallel_clients=1 if config.scheme == 'centralized' else config.clients_per_round)


def train(config: config_lib.TrainConfig, task, *, show_progress: bool = True,
          overwrite: bool = False) -> TrainResult:
  """Runs `config.rounds` federated rounds of `config.scheme` on `task`, or resumes them.

  If `config.output_dir` holds checkpoints of the same configuration (see
  `config.check_same_run`), training continues after the latest one and ends exactly as an
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
    config.ConfigError: For an invalid configuration, or one that differs from the run
      already in `config.output_dir`.
    program.CheckpointError: If the checkpoint to resume from cannot be read.
    contexts.WorkerError: If a worker cannot be reached at start, or is lost mid-run
      (`--executor=remote`), or the local worker fails.
  """
  config.validate()
  config_lib.check_output_dir_writable(config.output_dir)
  if config.executor == 'remote':  # Before the minutes of preparation below.
    contexts.check_workers_answer(config.worker_addresses, config.worker_timeout)
  if overwrite:
    remove_outputs(config.output_dir)
  else:
    config_lib.check_same_run(config)
  try:
    models = task.gan_models(config.conditional)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from e
  population = build_population(config, task)
  num_clients = population.num_clients
  if config.clients_per_round > num_clients and config.scheme != 'centralized':
    raise config_lib.ConfigError(f'--clients_per_round={config.clients_per_round} exceeds the '
                                 f'{num_clients} clients of the data; lower it.')
  if config.scheme == 'centralized':  # Enough passes over the pooled data for the steps.
    steps = centralized_steps(config, task)
    work = data.LocalWork(batch_size=config.batch_size,
                          local_epochs=math.ceil(steps * config.batch_size / len(task.examples)),
                          local_steps=steps)
  else:
    work = data.LocalWork(
        batch_size=config.batch_size,
        local_epochs=config.local_epochs,
        local_steps=config.local_steps or None,
    )
  process = build_process(config, models)
  traffic = communication.round_traffic(process.next)
  round_process = process_lib.with_client_data(process, population, work)
  sample = SampleGenerator(models)
  ledger = EpsilonLedger(config, num_clients) if config.dp_enabled else None
  if ledger is not None:
    message = privacy.delta_warning(config.effective_dp_delta, num_clients)
    if message:
      logging.warning(message)

  write_text_atomically(os.path.join(config.output_dir, config_lib.CONFIG_FILE),
                        config.to_json() + '\n')
  os.makedirs(os.path.join(config.output_dir, 'samples'), exist_ok=True)
  privacy_columns = ('epsilon',) if ledger is not None else ()
  metric_names = tuple(task.metric_names) + (CONDITIONAL_METRICS if config.conditional else ())
  timing_columns = ()
  if config.mode == 'async':
    timing_columns = ASYNC_COLUMNS
  elif config.client_latency:
    timing_columns = ('simulated_time',)
  columns = BASE_COLUMNS + timing_columns + privacy_columns + metric_names
  reference = task.prepare_evaluation(os.path.join(config.output_dir, CLASSIFIER_DIR))
  if reference:
    write_text_atomically(os.path.join(config.output_dir, REFERENCE_FILE),
                          json.dumps(reference, indent=2, sort_keys=True) + '\n')
    logging.info('held-out real data scores %s', reference)
  checkpoints = program.Checkpoints(config.output_dir)
  release = program.MetricsRelease(config.output_dir, columns)
  with execution_context(config):
    state = process.initialize()
    start_round = checkpoints.latest_round() or 0
    if start_round > config.rounds:
      raise config_lib.ConfigError(
          f'--output_dir {config.output_dir} has a checkpoint at round {start_round}, beyond '
          f'--rounds={config.rounds}; raise --rounds, or rerun with --overwrite to start over.')
    if start_round:
      state = checkpoints.load(start_round, state)
      logging.info('resuming from the checkpoint of round %d', start_round)
    row: dict[str, Any] = last_released_row(config.output_dir) if start_round else {}
    rounds = tqdm(range(start_round + 1, config.rounds + 1), desc='rounds', unit='round',
                  initial=start_round, total=config.rounds, disable=not show_progress,
                  dynamic_ncols=True)
    recorder = RoundRecorder(config, task, sample, ledger, release, checkpoints, rounds,
                             metric_names)
    if config.mode == 'async':
      state, async_row = async_training.train_async(
          config, process, population, work, state, start_round=start_round,
          start_time=float(row.get('simulated_time', 0.0)), recorder=recorder,
          traffic=traffic)
      rounds.close()
      return TrainResult(state=state, last_row=async_row or row)
    clock = async_training.ClientClock.from_config(config) if config.latency else None
    simulated_time = float(row.get('simulated_time', 0.0))
    for round_num in rounds:
      if config.scheme == 'centralized':
        client_ids = np.zeros(1, np.int64)
      else:
        client_ids = data.sample_clients(num_clients, config.clients_per_round,
                                         round_num=round_num, seed=config.seed,
                                         method=config.client_sampling)
      completed = data.surviving_clients(client_ids, config.dropout_rate,
                                         round_num=round_num, seed=config.seed)
      start = time.perf_counter()
      if len(completed) or not len(client_ids):
        keys = data.round_keys(completed, round_num=round_num, seed=config.seed)
        state, metrics = round_process.next(state, keys)
      else:  # All sampled clients failed: the model stays as it is, and the row says so.
        metrics = None
        logging.warning('round %d: all %d sampled clients dropped out; model unchanged.',
                        round_num, len(client_ids))
      row = round_row(round_num, time.perf_counter() - start, len(client_ids),
                      len(completed), metrics, traffic)
      if config.scheme == 'centralized':  # Nothing is communicated.
        row['bytes_down'] = row['bytes_up'] = None
      if clock is not None:
        simulated_time += clock.sync_round_seconds(client_ids, completed, round_num)
        row['simulated_time'] = simulated_time
      recorder.finish(row, state, round_num)
  return TrainResult(state=state, last_row=row)


CONDITIONAL_METRICS = ('conditional_accuracy',)
ASYNC_COLUMNS = ('simulated_time', 'mean_staleness', 'max_staleness')


class RoundRecorder:
  """Finishes a round's row: ε, evaluation and samples, release, checkpoint, progress bar."""

  def __init__(self, config, task, sample, ledger, release, checkpoints, progress,
               metric_names):
    self._config, self._task, self._sample, self._ledger = config, task, sample, ledger
    self._release, self._checkpoints = release, checkpoints
    self._progress = progress  # A tqdm bar; the round loop advances it.
    self._metric_names = metric_names
    self._samples_dir = os.path.join(config.output_dir, 'samples')
    self._latest_evaluation: dict[str, Any] = {}  # Shown on the progress bar in between.

  def finish(self, row: dict[str, Any], state: ServerState, round_num: int) -> None:
    config, task = self._config, self._task
    if self._ledger is not None:
      row['epsilon'] = self._ledger.epsilon(state)
    if round_num % config.eval_every == 0 or round_num == config.rounds:
      samples = self._sample(state.weights.generator, config.num_eval_samples,
                             seed=config.seed + round_num)
      row.update(evaluate_samples(task, samples, config.conditional))
      if config.conditional:
        samples, _ = conditional.unpack(samples, task.num_labels)
      task.render(samples, os.path.join(self._samples_dir, f'round_{round_num:05d}.png'))
    self._release.release(row, round_num)
    if round_num % config.checkpoint_every == 0 or round_num == config.rounds:
      self._checkpoints.save(state, round_num)
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


def last_released_row(output_dir: str) -> dict[str, Any]:
  """The last row of `metrics.csv` (empty fields dropped), or {} if there is none."""
  path = os.path.join(output_dir, 'metrics.csv')
  if not os.path.exists(path):
    return {}
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  return {k: v for k, v in rows[-1].items() if v != ''} if rows else {}


def _progress_fields(row, metric_names):
  fields = {}
  for name in ('d_loss', 'g_loss', 'epsilon', *metric_names):
    if name in row:
      fields[name] = f'{row[name]:.3g}'
  return fields
