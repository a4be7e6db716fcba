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
   level (ε, δ)) is trained on each population with `tff_gan.run.training.train`.
6. `bug_finding.png` shows samples of both generators side by side, with the ε each spent
   and their Fréchet distances; `summary.json` holds the numbers: the fraction of generated
   samples with a bright background (`bright_background_fraction`: the inversion, seen
   without seeing data), and the Fréchet distance of the samples to the clean digits and to
   the inverted ones (`frechet_distance`, on the deployed classifier's penultimate features,
   as the digits task's metric; the samples are kept as `samples_<population>.npy`).

The writers' accuracies are computed here in one place, as a simulation may; a deployment
would release them from the devices, itself with privacy. Training data never leaves the
simulated clients, and the GANs' samples cost no privacy beyond the ε reported.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np

from experiments.bug_finding_config import BugFindingConfig
from tasks import base, evaluation
from tasks.digits import DigitsTask
from tff_gan import files
from tff_gan.clients import partition
from tff_gan.core import seeds
from tff_gan.run import export, rundir, training

SUMMARY_FILE = 'summary.json'
GRID_FILE = 'bug_finding.png'
POPULATIONS = ('lowest_accuracy', 'highest_accuracy')
NUM_SAMPLES = 1000  # Generated per population for the grid, the fractions and the distances.
DIGIT_KINDS = ('clean', 'inverted')  # The references the Fréchet distances compare with.


def samples_file(population: str) -> str:
  """The `.npy` file, in the output directory, of the samples a population's numbers describe."""
  return f'samples_{population}.npy'


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
  rng = np.random.default_rng([seed, seeds.INVERTED_WRITERS_SALT])
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


class DeployedDigitsTask(DigitsTask):
  """The digits task as deployed before the update, with clean and inverted reference digits.

  Its evaluation classifier (trained on the clean digits by `prepare_evaluation`) is the
  deployed model. The scenario compares samples with clean and inverted digits on the same
  features (`features`) and the same reference digits as the digits task's `frechet_distance`
  metric.
  """

  def reference_digits(self) -> dict[str, np.ndarray]:
    """The clean digits `frechet_distance` compares with, and the same digits inverted."""
    clean = self.reference_images[self.classifier_indices]
    return {'clean': clean, 'inverted': -clean}

  def heldout_digits(self) -> dict[str, np.ndarray]:
    """The clean digits kept from the classifier, and the same digits inverted."""
    clean = self.reference_images[self.heldout_indices]
    return {'clean': clean, 'inverted': -clean}


def frechet_distances(task: DeployedDigitsTask, samples: np.ndarray,
                      reference_features: dict[str, np.ndarray]) -> dict[str, float]:
  """`evaluation.frechet_distance` of `samples` to each reference, on the task's features.

  Args:
    task: A prepared `DeployedDigitsTask`.
    samples: Images `[N, 8, 8, 1]`, N >= 2.
    reference_features: Name -> features `[M, 128]` of real images (M >= 2), e.g. of
      `task.reference_digits()`.
  """
  features = task.features(samples)
  return {name: evaluation.frechet_distance(reference, features)
          for name, reference in reference_features.items()}


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


def run(config: BugFindingConfig, *, show_progress: bool = True,
        overwrite: bool = False) -> dict:
  """Runs the whole scenario (see the module docstring); returns the summary it writes.

  Rerunning with the same settings resumes both training runs from their checkpoints.

  Raises:
    ConfigError: For invalid settings, or settings that differ from a run already in
      `config.output_dir` (without `overwrite`).
  """
  config.validate()
  rundir.check_output_dir_writable(config.output_dir)
  os.makedirs(config.output_dir, exist_ok=True)
  base_task = DeployedDigitsTask(seed=config.seed, width=config.model_width)
  classifier_dir = os.path.join(config.output_dir, rundir.CLASSIFIER_DIR)
  base_task.prepare_evaluation(classifier_dir)
  reference_features = {kind: base_task.features(images)
                        for kind, images in base_task.reference_digits().items()}
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
      # The scale of the populations' distances: real digits the classifier did not train on.
      'real_frechet_distance': {
          kind: frechet_distances(base_task, heldout, reference_features)
          for kind, heldout in base_task.heldout_digits().items()},
      'populations': {},
  }
  samples = {}
  for name in POPULATIONS:
    selected = selections[name]
    task = WriterPopulationTask(writers, selected, seed=config.seed, model=config.model,
                                width=config.model_width,
                                discriminator_width=config.discriminator_width or None)
    # Both runs evaluate with the deployed classifier: give them its cached weights.
    shutil.copytree(classifier_dir, os.path.join(config.output_dir, name,
                                                 rundir.CLASSIFIER_DIR), dirs_exist_ok=True)
    result = training.train(config.train_config(name), task, show_progress=show_progress,
                            overwrite=overwrite)
    generated = export.SampleGenerator(task.gan_models())(
        result.generator_weights, NUM_SAMPLES, seed=config.seed)
    samples[name] = generated
    files.write_outputs({os.path.join(config.output_dir, samples_file(name)):
                         lambda path, images=generated: np.save(path, images)})
    summary['populations'][name] = {
        'writers': selected.tolist(),
        'inverted_writers': int(writers.inverted[selected].sum()),
        'mean_accuracy': float(accuracies[selected].mean()),
        'epsilon': float(result.last_row['epsilon']),
        'delta': config.dp_delta,
        'bright_background_fraction': bright_background_fraction(generated),
        'frechet_distance': frechet_distances(base_task, generated, reference_features),
    }
  write_grid(samples, summary, os.path.join(config.output_dir, GRID_FILE))
  files.write_text(os.path.join(config.output_dir, SUMMARY_FILE),
                   json.dumps(summary, indent=2) + '\n')
  return summary


def write_grid(samples: dict[str, np.ndarray], summary: dict, path: str) -> None:
  """Writes the two generators' samples side by side as a PNG, titled with the deployed
  accuracy, ε and δ, and the Fréchet distances to clean and to inverted digits."""
  # A bare Figure, not pyplot: matplotlib.use('Agg') would stop a notebook's later plots.
  from matplotlib.figure import Figure  # noqa: PLC0415

  figure = Figure(figsize=(10, 5.9), dpi=100)
  axes = figure.subplots(1, 2)
  for axis, name in zip(axes, POPULATIONS, strict=True):
    population = summary['populations'][name]
    distances = population['frechet_distance']
    axis.imshow(base.image_grid(samples[name], upscale=4)[..., 0], cmap='gray', vmin=0,
                vmax=255)
    axis.set_title(f"{name.replace('_', ' ')} writers "
                   f"(deployed accuracy {100 * population['mean_accuracy']:.0f}%)\n"
                   f"DP-FedAvg-GAN, ε = {population['epsilon']:.2f} at δ = "
                   f"{population['delta']:g}\nFréchet distance to clean digits "
                   f"{distances['clean']:.0f}, to inverted {distances['inverted']:.0f}",
                   fontsize=10)
    axis.axis('off')
  figure.tight_layout()
  base.write_figure(figure, path)
