"""The interface every task implements: data, GAN networks, evaluation and rendering.

A task bundles one centralized labelled dataset (which `tff_gan.partition` splits into
simulated clients), the Keras networks of a GAN for it, the metrics that say how good a
generator's samples are, and a picture of samples for a human to look at.

Also holds what several tasks share: the fully connected generator and discriminator
builders and an atomic PNG writer.
"""

from __future__ import annotations

import abc
import math
import numbers
import os
import tempfile
from typing import ClassVar

import numpy as np
import tensorflow as tf
from PIL import Image

from tff_gan.models import GanModels


class Task(abc.ABC):
  """A dataset with a GAN architecture, sample metrics and a renderer.

  Subclasses set the class attributes `name`, `model_choices` and `metric_names`, and fill
  `examples`, `labels` and `num_labels` in their constructor.

  Attributes:
    name: Short name the task is registered under in `tasks.TASKS`.
    model_choices: Architectures `gan_models` can build; the first is the default.
    metric_names: The keys of the dict `evaluate` returns, in a stable order.
    num_eval_samples: How many generator samples a caller should pass to `evaluate`.
    examples: float32 `[N, *data_shape]`, the whole dataset.
    labels: int64 `[N]`, a label per example (what `tff_gan.partition` skews clients by).
    num_labels: Number of distinct label values; labels lie in `range(num_labels)`.
    seed: Seed the task's data was drawn with.
    model: Name of the architecture `gan_models` builds.
    width: Multiplier of every hidden layer's units or filters.
  """

  name: ClassVar[str]
  model_choices: ClassVar[tuple[str, ...]] = ('mlp',)
  metric_names: ClassVar[tuple[str, ...]] = ()
  num_eval_samples: int = 2500

  examples: np.ndarray
  labels: np.ndarray
  num_labels: int

  def __init__(self, *, seed: int = 0, model: str = 'mlp', width: float = 1.0):
    """Validates and stores the arguments common to all tasks.

    Args:
      seed: Seed of the task's random data generation.
      model: Architecture `gan_models` builds, one of `model_choices`.
      width: Positive multiplier of hidden units and filters; each layer keeps at least 1.
    """
    if model not in self.model_choices:
      raise ValueError(
          f"unknown model {model!r} for task '{self.name}'; choose one of: "
          f"{', '.join(self.model_choices)}."
      )
    if (
        isinstance(width, bool)
        or not isinstance(width, numbers.Real)
        or not (math.isfinite(width) and width > 0)
    ):
      raise ValueError(f'width must be a positive finite number, got {width!r}; 1.0 is full size.')
    self.seed = seed
    self.model = model
    self.width = float(width)

  @property
  def data_shape(self) -> tuple[int, ...]:
    """Shape of one example, without the batch dimension."""
    return tuple(self.examples.shape[1:])

  def scaled(self, units: int) -> int:
    """`units` hidden units or filters multiplied by `width`, rounded, at least 1."""
    return max(1, round(units * self.width))

  @abc.abstractmethod
  def gan_models(self) -> GanModels:
    """The generator and discriminator factories of the architecture `model`."""

  def generate_examples(self, labels: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Fresh examples `[n, *data_shape]` of the given int64 labels `[n]`, in TF (stateless).

    Tasks whose data has a known generative recipe implement this, so that clients can draw
    their own examples on the executor (`tff_gan.data.GeneratedClients`); `generates_data`
    says whether a task does.
    """
    raise NotImplementedError(f"task '{self.name}' holds a fixed dataset and draws no examples.")

  @property
  def generates_data(self) -> bool:
    return type(self).generate_examples is not Task.generate_examples

  @abc.abstractmethod
  def evaluate(self, samples: np.ndarray) -> dict[str, float]:
    """Scores generator samples `[M, *data_shape]`; the keys are `metric_names`."""

  def prepare_evaluation(self, cache_dir: str) -> dict[str, float]:
    """Builds what `evaluate` needs (e.g. a classifier), cached in `cache_dir`.

    Returns:
      The metrics of held-out real data, where a task has them: the scale users should read
      the generator's metrics against. `{}` by default.
    """
    del cache_dir
    return {}

  @abc.abstractmethod
  def render(self, samples: np.ndarray, path: str) -> None:
    """Writes a PNG picture of generator samples `[M, *data_shape]` to `path`."""

  def _check_samples(self, samples: np.ndarray) -> np.ndarray:
    """Returns `samples` as a float array after checking it is `[M, *data_shape]`, M >= 1."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim < 1 or samples.shape[1:] != self.data_shape or samples.shape[0] == 0:
      raise ValueError(
          f"task '{self.name}' expects samples of shape [M, {', '.join(map(str, self.data_shape))}]"
          f' with M >= 1, got {samples.shape}; pass a non-empty batch of generator outputs.'
      )
    return samples

  def __repr__(self) -> str:
    return (
        f'{type(self).__name__}(num_examples={self.examples.shape[0]}, model={self.model!r}, '
        f'width={self.width}, seed={self.seed})'
    )


def write_png(image: Image.Image, path: str | os.PathLike[str]) -> None:
  """Saves `image` as a PNG at `path` atomically: readers never see a half-written file.

  The image is written to a temporary file in the same directory, then renamed over `path`.
  """
  directory = os.path.dirname(os.path.abspath(path))
  file_descriptor, temp_path = tempfile.mkstemp(
      dir=directory, prefix=f'.{os.path.basename(path)}.', suffix='.tmp'
  )
  try:
    with os.fdopen(file_descriptor, 'wb') as temp_file:
      image.save(temp_file, format='PNG')
    os.chmod(temp_path, 0o644)  # mkstemp creates files readable by the owner only.
    os.replace(temp_path, path)
  except BaseException:
    if os.path.exists(temp_path):
      os.remove(temp_path)
    raise


def mlp_generator(
    noise_dim: int,
    hidden_units: tuple[int, ...],
    data_shape: tuple[int, ...],
    output_scale: float = 1.0,
) -> tf.keras.Model:
  """A fully connected generator: ReLU hidden layers, then tanh outputs times `output_scale`.

  Args:
    noise_dim: Length of the input noise vector.
    hidden_units: Units of each hidden Dense layer, in order.
    data_shape: Shape of one output sample; the flat output is reshaped to it.
    output_scale: The tanh output is multiplied by this, so samples lie in
      `[-output_scale, output_scale]`.

  Returns:
    A built Keras model mapping `[B, noise_dim]` to `[B, *data_shape]`.
  """
  layers = [tf.keras.Input(shape=(noise_dim,))]
  for units in hidden_units:
    layers += [tf.keras.layers.Dense(units), tf.keras.layers.ReLU()]
  layers += [
      tf.keras.layers.Dense(int(np.prod(data_shape))),
      tf.keras.layers.Activation('tanh'),
  ]
  if output_scale != 1.0:
    layers.append(tf.keras.layers.Rescaling(output_scale))
  if len(data_shape) > 1:
    layers.append(tf.keras.layers.Reshape(data_shape))
  return tf.keras.Sequential(layers, name='generator')


def mlp_discriminator(data_shape: tuple[int, ...], hidden_units: tuple[int, ...]) -> tf.keras.Model:
  """A fully connected discriminator: LeakyReLU(0.2) hidden layers, then one logit.

  Args:
    data_shape: Shape of one input sample; it is flattened first.
    hidden_units: Units of each hidden Dense layer, in order.

  Returns:
    A built Keras model mapping `[B, *data_shape]` to logits `[B, 1]`.
  """
  layers = [tf.keras.Input(shape=data_shape)]
  if len(data_shape) > 1:
    layers.append(tf.keras.layers.Flatten())
  for units in hidden_units:
    layers += [tf.keras.layers.Dense(units), tf.keras.layers.LeakyReLU(0.2)]
  layers.append(tf.keras.layers.Dense(1))
  return tf.keras.Sequential(layers, name='discriminator')
