"""The round loop of a training run: sample clients, run a round, evaluate, write outputs.

Writes to `config.output_dir`:

* `config.json` — the `TrainConfig` of the run;
* `metrics.csv` — one row per round: `round`, `round_seconds`, `d_loss`, `g_loss`,
  `num_examples`, then the task's metric columns (empty on rounds not evaluated);
* `samples/round_NNNNN.png` — the task's rendering of generated samples at each evaluation;
* `worker.log` — the TFF worker's own output.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import time
from typing import Any

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from tff_gan import config as config_lib
from tff_gan import contexts, data, losses, optimizers
from tff_gan.models import GanModels
from tff_gan.partition import partition
from tff_gan.schemes import fedgan
from tff_gan.state import ServerState

BASE_COLUMNS = ('round', 'round_seconds', 'd_loss', 'g_loss', 'num_examples')


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


class MetricsWriter:
  """Appends one CSV row per round to `metrics.csv`, flushed as it goes."""

  def __init__(self, path: str, columns: tuple[str, ...]):
    self.columns = columns
    self._file = open(path, 'w', newline='')
    self._writer = csv.DictWriter(self._file, fieldnames=columns, restval='')
    self._writer.writeheader()
    self._file.flush()

  def write(self, row: dict[str, Any]) -> None:
    self._writer.writerow({k: _format(v) for k, v in row.items()})
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def _format(value):
  if isinstance(value, float | np.floating):
    return f'{float(value):.6g}'
  return value


def build_process(config: config_lib.TrainConfig, models: GanModels):
  """The `tff.templates.IterativeProcess` that `config` asks for."""
  client_optimizer = optimizers.build_optimizer(config.client_optimizer,
                                                config.client_learning_rate)
  server_optimizer = optimizers.build_optimizer(config.server_optimizer,
                                                config.server_learning_rate)
  if config.scheme == 'fedgan':
    return fedgan.build_fedgan_process(
        models,
        loss=losses.get_loss(config.loss),
        client_optimizer=client_optimizer,
        server_optimizer=server_optimizer,
        seed=config.seed,
    )
  raise config_lib.ConfigError(f"unknown --scheme '{config.scheme}'.")


def build_population(config: config_lib.TrainConfig, task) -> data.ClientPopulation:
  """Splits the task's examples over `config.num_clients` clients as `config.partition` says."""
  if config.num_clients > len(task.examples):
    raise config_lib.ConfigError(f'--num_clients={config.num_clients} exceeds the '
                                 f'{len(task.examples)} examples of task {task.name}.')
  try:
    client_indices = partition(
        task.labels,
        config.num_clients,
        scheme=config.partition,
        dirichlet_alpha=config.dirichlet_alpha,
        labels_per_client=config.labels_per_client,
        seed=config.seed,
    )
    return data.ClientPopulation(task.examples, client_indices)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from e


def train(config: config_lib.TrainConfig, task, *, show_progress: bool = True) -> TrainResult:
  """Runs `config.rounds` federated rounds of `config.scheme` on `task`.

  Args:
    config: A `TrainConfig` (validated here).
    task: A task from `tasks.get_task` (examples, labels, `gan_models()`, `evaluate`,
      `render`, `metric_names`).
    show_progress: Whether to show a tqdm progress bar on stderr.

  Returns:
    A `TrainResult`.
  """
  config.validate()
  config_lib.check_output_dir_writable(config.output_dir)
  models = task.gan_models()
  population = build_population(config, task)
  work = data.LocalWork(
      batch_size=config.batch_size,
      local_epochs=config.local_epochs,
      local_steps=config.local_steps or None,
  )
  process = build_process(config, models)
  sample = SampleGenerator(models)

  write_text_atomically(os.path.join(config.output_dir, 'config.json'), config.to_json() + '\n')
  samples_dir = os.path.join(config.output_dir, 'samples')
  os.makedirs(samples_dir, exist_ok=True)
  writer = MetricsWriter(os.path.join(config.output_dir, 'metrics.csv'),
                         BASE_COLUMNS + tuple(task.metric_names))
  row: dict[str, Any] = {}
  try:
    with contexts.local_cpp_context(log_path=os.path.join(config.output_dir, 'worker.log')):
      state = process.initialize()
      rounds = tqdm(range(1, config.rounds + 1), desc='rounds', unit='round',
                    disable=not show_progress, dynamic_ncols=True)
      for round_num in rounds:
        client_ids = data.sample_clients(config.num_clients, config.clients_per_round,
                                         round_num=round_num, seed=config.seed)
        datasets = population.round_datasets(client_ids, work, round_num=round_num,
                                             seed=config.seed)
        start = time.perf_counter()
        state, metrics = process.next(state, datasets)
        row = {
            'round': round_num,
            'round_seconds': time.perf_counter() - start,
            'd_loss': float(metrics['discriminator_loss']),
            'g_loss': float(metrics['generator_loss']),
            'num_examples': int(metrics['num_examples']),
        }
        if round_num % config.eval_every == 0 or round_num == config.rounds:
          samples = sample(state.weights.generator, config.num_eval_samples,
                           seed=config.seed + round_num)
          row.update(task.evaluate(samples))
          task.render(samples, os.path.join(samples_dir, f'round_{round_num:05d}.png'))
        writer.write(row)
        rounds.set_postfix(_progress_fields(row, task.metric_names), refresh=False)
  finally:
    writer.close()
  return TrainResult(state=state, last_row=row)


def _progress_fields(row, metric_names):
  fields = {'d_loss': f"{row['d_loss']:.3f}", 'g_loss': f"{row['g_loss']:.3f}"}
  for name in metric_names:
    if name in row:
      fields[name] = f'{row[name]:.3g}'
  return fields
