"""The bug-finding scenario of DP-FedAvg-GAN (Augenstein et al., ICLR 2020), on embedded digits.

A deployed model starts failing for some users, and the engineers may not look at their data.
The paper's answer: select the users the model does worst on (by a privately released
per-user metric), train a differentially private federated GAN on their data, and look at
its samples instead. This module replays that story end to end:

1. The 1797 scikit-learn digits are spread over `num_writers` simulated writers (IID).
2. An "app update" inverts the pixels (x -> -x in [-1, 1]: white background, black strokes)
   for a random `inverted_fraction` of the writers.
3. The "deployed" classifier, trained before the update on clean digits (the digits task's
   evaluation classifier), is scored on each writer's data.
4. The `selection_fraction` of writers with the lowest accuracy form one population, the
   same number with the highest accuracy the other.
5. A DP-FedAvg-GAN (`--scheme=dp_fedavg_gan` with DP-FedAvg, each writer one client, writer-
   level (ε, δ)) is trained on each population with `tff_gan.training.train`.
6. `bug_finding.png` shows samples of both generators side by side, with the ε each spent;
   `summary.json` holds the numbers, including the fraction of generated samples with a
   bright background (`bright_background_fraction`): the inversion, seen without seeing data.

The writers' accuracies are computed here in one place, as a simulation may; a deployment
would release them from the devices, itself with privacy. Training data never leaves the
simulated clients, and the GANs' samples cost no privacy beyond the ε reported.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile

import numpy as np

from tasks import base
from tasks.digits import DigitsTask
from tff_gan import config as config_lib
from tff_gan import partition, training

SUMMARY_FILE = 'summary.json'
GRID_FILE = 'bug_finding.png'
POPULATIONS = ('lowest_accuracy', 'highest_accuracy')


@dataclasses.dataclass(frozen=True)
class ScenarioConfig:
  """The scenario's settings (`bin/bug_finding.py` flags mirror them).

  Attributes:
    output_dir: Where `summary.json`, `bug_finding.png` and one training run per population
      (`lowest_accuracy/`, `highest_accuracy/`) are written.
    num_writers: Simulated writers the digits are spread over.
    inverted_fraction: Fraction of writers whose pixels the app update inverts.
    selection_fraction: Fraction of writers in each selected population.
    rounds, clients_per_round, dp_noise_multiplier, dp_clip, dp_delta, batch_size,
    local_epochs, client_learning_rate, server_gen_steps, generator_learning_rate, model,
    model_width, seed: The DP-FedAvg-GAN runs' settings
      (see `bin/train.py --help`); `clients_per_round` writers of a population per round.
  """

  output_dir: str = 'runs/bug_finding'
  num_writers: int = 300
  inverted_fraction: float = 0.5
  selection_fraction: float = 0.25
  rounds: int = 200
  clients_per_round: int = 10
  dp_noise_multiplier: float = 1.0
  dp_clip: float = 0.1
  dp_delta: float = 1e-3
  batch_size: int = 32
  local_epochs: int = 1
  client_learning_rate: float = 1e-3
  server_gen_steps: int = 2
  generator_learning_rate: float = 1e-3
  model: str = 'mlp'
  model_width: float = 1.0
  eval_every: int = 50
  seed: int = 0

  def validate(self) -> ScenarioConfig:
    """Returns `self` if valid; raises `config.ConfigError` with one line otherwise."""
    if self.num_writers < 2:
      raise config_lib.ConfigError(f'--num_writers must be at least 2, got {self.num_writers}.')
    for name in ('inverted_fraction', 'selection_fraction'):
      if not 0 < getattr(self, name) < 1:
        raise config_lib.ConfigError(f'--{name} must be in (0, 1), got {getattr(self, name)}.')
    if self.selection_fraction > 0.5:
      raise config_lib.ConfigError('--selection_fraction must be at most 0.5: the two '
                                   f'populations do not overlap; got {self.selection_fraction}.')
    if self.population_size < self.clients_per_round:
      raise config_lib.ConfigError(
          f'each population has {self.population_size} writers, fewer than '
          f'--clients_per_round={self.clients_per_round}; lower it or raise --num_writers or '
          '--selection_fraction.')
    self.train_config('lowest_accuracy').validate()
    return self

  @property
  def population_size(self) -> int:
    return max(1, round(self.selection_fraction * self.num_writers))

  def train_config(self, population: str) -> config_lib.TrainConfig:
    """The `TrainConfig` of the DP-FedAvg-GAN run on one population."""
    return config_lib.TrainConfig(
        task='digits', scheme='dp_fedavg_gan', partition='natural', num_clients=0,
        clients_per_round=self.clients_per_round, rounds=self.rounds,
        dp_noise_multiplier=self.dp_noise_multiplier, dp_clip=self.dp_clip,
        dp_delta=self.dp_delta, batch_size=self.batch_size, local_epochs=self.local_epochs,
        client_learning_rate=self.client_learning_rate,
        server_gen_steps=self.server_gen_steps,
        generator_learning_rate=self.generator_learning_rate, model=self.model,
        model_width=self.model_width,
        eval_every=self.eval_every, checkpoint_every=self.eval_every,
        num_eval_samples=500, seed=self.seed,
        output_dir=os.path.join(self.output_dir, population))


@dataclasses.dataclass(frozen=True)
class Writers:
  """The simulated writers after the app update.

  Attributes:
    examples: float32 `[N, 8, 8, 1]`, inverted for the inverted writers.
    labels: int64 `[N]`.
    client_indices: For each writer, the indices of its examples.
    inverted: bool `[num_writers]`, whether the update inverted the writer's pixels.
  """

  examples: np.ndarray
  labels: np.ndarray
  client_indices: list[np.ndarray]
  inverted: np.ndarray


def make_writers(task: DigitsTask, num_writers: int, inverted_fraction: float,
                 seed: int) -> Writers:
  """Spreads the task's digits over writers (IID) and inverts the pixels of a random subset."""
  client_indices = partition.partition(task.reference_labels, num_writers, scheme='iid',
                                       seed=seed)
  rng = np.random.default_rng([seed, 0xB06])
  inverted = np.zeros(num_writers, bool)
  inverted[rng.choice(num_writers, max(1, round(inverted_fraction * num_writers)),
                      replace=False)] = True
  examples = task.reference_images.copy()
  for writer in np.flatnonzero(inverted):
    examples[client_indices[writer]] *= -1
  return Writers(examples, task.reference_labels, client_indices, inverted)


def writer_accuracies(task: DigitsTask, writers: Writers) -> np.ndarray:
  """The deployed classifier's accuracy on each writer's data, `[num_writers]`."""
  correct = task.predict_labels(writers.examples) == writers.labels
  return np.array([correct[indices].mean() for indices in writers.client_indices])


def select_populations(accuracies: np.ndarray, size: int) -> dict[str, np.ndarray]:
  """The `size` writers with the lowest and with the highest accuracy (ties by writer id)."""
  order = np.argsort(accuracies, kind='stable')
  return {'lowest_accuracy': np.sort(order[:size]), 'highest_accuracy': np.sort(order[-size:])}


class WriterPopulationTask(DigitsTask):
  """The digits task whose training data is some writers' (inverted or not) examples.

  Each writer is one natural client; evaluation still compares with the clean digits.
  """

  def __init__(self, writers: Writers, selected: np.ndarray, **kwargs):
    super().__init__(**kwargs)
    indices = [writers.client_indices[w] for w in selected]
    self.examples = writers.examples[np.concatenate(indices)]
    self.labels = writers.labels[np.concatenate(indices)]
    self.client_ids = [f'writer_{w}' for w in selected]
    offsets = np.cumsum([0] + [len(i) for i in indices])
    self.client_indices = [np.arange(a, b) for a, b in zip(offsets[:-1], offsets[1:],
                                                           strict=True)]


def bright_background_fraction(images: np.ndarray) -> float:
  """Fraction of images whose border pixels are brighter than mid-gray on average.

  Clean digits have a black border (mean -1), inverted ones a white border (mean +1).
  """
  images = np.asarray(images)[..., 0]
  border = np.concatenate([images[:, 0, :], images[:, -1, :], images[:, 1:-1, 0],
                           images[:, 1:-1, -1]], axis=1)
  return float(np.mean(border.mean(axis=1) > 0))


def run(config: ScenarioConfig, *, show_progress: bool = True, overwrite: bool = False) -> dict:
  """Runs the whole scenario (see the module docstring); returns the summary it writes.

  Rerunning with the same settings resumes both training runs from their checkpoints.

  Raises:
    config.ConfigError: For invalid settings, or settings that differ from a run already in
      `config.output_dir` (without `overwrite`).
  """
  config.validate()
  config_lib.check_output_dir_writable(config.output_dir)
  base_task = DigitsTask(seed=config.seed, width=config.model_width)
  base_task.prepare_evaluation(os.path.join(config.output_dir, training.CLASSIFIER_DIR))
  writers = make_writers(base_task, config.num_writers, config.inverted_fraction, config.seed)
  accuracies = writer_accuracies(base_task, writers)
  selections = select_populations(accuracies, config.population_size)
  summary = {
      'num_writers': config.num_writers,
      'inverted_writers': np.flatnonzero(writers.inverted).tolist(),
      'mean_accuracy': {'inverted': float(accuracies[writers.inverted].mean()),
                        'clean': float(accuracies[~writers.inverted].mean())},
      'real_bright_background_fraction': {
          'inverted': bright_background_fraction(
              writers.examples[np.concatenate([writers.client_indices[w] for w in
                                               np.flatnonzero(writers.inverted)])]),
          'clean': bright_background_fraction(base_task.reference_images)},
      'populations': {},
  }
  samples = {}
  for name in POPULATIONS:
    selected = selections[name]
    task = WriterPopulationTask(writers, selected, seed=config.seed, model=config.model,
                                width=config.model_width)
    result = training.train(config.train_config(name), task, show_progress=show_progress,
                            overwrite=overwrite)
    generated = training.SampleGenerator(task.gan_models())(
        result.state.weights.generator, 1000, seed=config.seed)
    samples[name] = generated
    summary['populations'][name] = {
        'writers': selected.tolist(),
        'inverted_writers': int(writers.inverted[selected].sum()),
        'mean_accuracy': float(accuracies[selected].mean()),
        'epsilon': float(result.last_row['epsilon']),
        'delta': config.dp_delta,
        'bright_background_fraction': bright_background_fraction(generated),
    }
  write_grid(samples, summary, os.path.join(config.output_dir, GRID_FILE))
  training.write_text_atomically(os.path.join(config.output_dir, SUMMARY_FILE),
                                 json.dumps(summary, indent=2) + '\n')
  return summary


def write_grid(samples: dict[str, np.ndarray], summary: dict, path: str) -> None:
  """Writes the two generators' samples side by side, titled with accuracy and ε, as a PNG."""
  import matplotlib  # noqa: PLC0415

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # noqa: PLC0415

  figure, axes = plt.subplots(1, 2, figsize=(10, 5.6))
  for axis, name in zip(axes, POPULATIONS, strict=True):
    population = summary['populations'][name]
    axis.imshow(base.image_grid(samples[name], upscale=4)[..., 0], cmap='gray', vmin=0,
                vmax=255)
    axis.set_title(f"{name.replace('_', ' ')} writers "
                   f"(deployed accuracy {100 * population['mean_accuracy']:.0f}%)\n"
                   f"DP-FedAvg-GAN, ε = {population['epsilon']:.2f} at δ = "
                   f"{population['delta']:g}", fontsize=10)
    axis.axis('off')
  figure.tight_layout()
  directory = os.path.dirname(os.path.abspath(path))
  descriptor, temporary = tempfile.mkstemp(dir=directory, suffix='.png')
  os.close(descriptor)
  try:
    figure.savefig(temporary, dpi=100)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)
  finally:
    plt.close(figure)
    if os.path.exists(temporary):
      os.remove(temporary)
