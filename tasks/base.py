"""The interface every task implements: data, GAN networks, evaluation and rendering.

A task bundles a dataset, the Keras networks of a GAN for it, the metrics that say how good
a generator's samples are, and a picture of samples for a human to look at. Embedded tasks
hold one centralized labelled dataset, which `tff_gan.clients.partition` splits into simulated
clients; tasks read from files the user provides (`reads_files`) come with their natural
clients instead (one writer, one folder, one CSV file each: `natural_population`).

Also holds what several tasks share: the fully connected generator and discriminator
builders and an atomic PNG writer.
"""

from __future__ import annotations

import abc
import io
import math
import numbers
import os
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import tensorflow as tf
from PIL import Image

from tff_gan import files
from tff_gan.clients import populations as data
from tff_gan.core import conditional
from tff_gan.core.models import GanModels


class Task(abc.ABC):
  """A dataset with a GAN architecture, sample metrics and a renderer.

  Subclasses set the class attributes `name`, `model_choices` and `metric_names`, fill
  `examples`, `labels`, `num_labels` and `noise_dim` in their constructor (and
  `client_ids`/`client_indices` when the data has natural clients), and implement `networks`.

  Attributes:
    name: Short name the task is registered under in `tasks.TASKS`.
    model_choices: Architectures `gan_models` can build; the first is the default.
    metric_names: The keys of the dict `evaluate` returns, in a stable order.
    num_eval_samples: How many generator samples a caller should pass to `evaluate`.
    examples: float32 `[N, *data_shape]`, the whole dataset.
    labels: int64 `[N]`, a label per example (what `tff_gan.clients.partition` skews clients by and
      a conditional GAN conditions on); all 0 for unlabelled data.
    num_labels: Number of distinct label values; labels lie in `range(num_labels)`. 0 for
      unlabelled data.
    noise_dim: Length of the generator's noise vector.
    client_ids: Names of the natural clients (writers, folders, files), or None.
    client_indices: For each natural client, the indices of its examples in `examples`.
    seed: Seed the task's data was drawn with.
    model: Name of the architecture `gan_models` builds.
    width: Multiplier of every hidden layer's units or filters.
  """

  name: ClassVar[str]
  model_choices: ClassVar[tuple[str, ...]] = ('mlp',)
  metric_names: ClassVar[tuple[str, ...]] = ()
  num_eval_samples: int = 2500
  reads_files: ClassVar[bool] = False  # Whether the task reads the user's files (data_dir).

  examples: np.ndarray
  labels: np.ndarray
  num_labels: int
  noise_dim: int
  client_ids: list[str] | None = None
  client_indices: list[np.ndarray] | None = None

  def __init__(self, *, seed: int = 0, model: str = 'mlp', width: float = 1.0,
               discriminator_width: float | None = None):
    """Validates and stores the arguments common to all tasks.

    Args:
      seed: Seed of the task's random data generation.
      model: Architecture `gan_models` builds, one of `model_choices`.
      width: Positive multiplier of hidden units and filters; each layer keeps at least 1.
      discriminator_width: The discriminator's own multiplier (`scaled_d`); None: `width`.
        Under DP the noise's norm grows with the square root of the noised parameters, and
        in dp_fedavg_gan only the discriminator is noised.
    """
    if model not in self.model_choices:
      raise ValueError(f"unknown model {model!r} for task '{self.name}'; choose one of: "
                       f"{', '.join(self.model_choices)}.")
    discriminator_width = width if discriminator_width is None else discriminator_width
    for name, value in (('width', width), ('discriminator_width', discriminator_width)):
      if (isinstance(value, bool) or not isinstance(value, numbers.Real)
          or not (math.isfinite(value) and value > 0)):
        raise ValueError(f'{name} must be a positive finite number, got {value!r}; 1.0 is '
                         'full size.')
    self.seed, self.model = seed, model
    self.width, self.discriminator_width = float(width), float(discriminator_width)

  @property
  def data_shape(self) -> tuple[int, ...]:
    """Shape of one example, without the batch dimension."""
    return tuple(self.examples.shape[1:])

  def scaled(self, units: int) -> int:
    """`units` hidden units or filters multiplied by `width`, rounded, at least 1."""
    return max(1, round(units * self.width))

  def scaled_d(self, units: int) -> int:
    """`scaled` for the discriminator: by `discriminator_width`."""
    return max(1, round(units * self.discriminator_width))

  @property
  def labelled(self) -> bool:
    """Whether examples have classes (so a conditional GAN can be trained)."""
    return self.num_labels > 1

  @abc.abstractmethod
  def networks(self, generator_input_dim: int, discriminator_input_shape: tuple[int, ...]):
    """`(generator_fn, discriminator_fn)` of the architecture `model`.

    The generator maps `[B, generator_input_dim]` to `[B, *data_shape]`; the discriminator
    maps `[B, *discriminator_input_shape]` to logits `[B, 1]`. An unconditional GAN asks for
    `(noise_dim, data_shape)`; a conditional one for larger inputs (`tff_gan.core.conditional`).
    """

  def gan_models(self, conditional_gan: bool = False) -> GanModels:
    """The generator and discriminator of `model`, class-conditional if asked.

    Raises:
      ValueError: For a conditional GAN on a task without classes.
    """
    if not conditional_gan:
      generator_fn, discriminator_fn = self.networks(self.noise_dim, self.data_shape)
      return GanModels(generator_fn, discriminator_fn, self.noise_dim, self.data_shape)
    if not self.labelled:
      raise ValueError(f"task '{self.name}' has no classes to condition on; drop "
                       '--conditional.')
    return conditional.conditional_models(self.networks, self.noise_dim, self.data_shape,
                                          self.num_labels)

  def training_examples(self, conditional_gan: bool = False) -> np.ndarray:
    """`examples`, packed with their classes for a conditional GAN (`tff_gan.core.conditional`)."""
    if not conditional_gan:
      return self.examples
    return conditional.pack(self.examples, self.labels, self.num_labels)

  @property
  def has_natural_clients(self) -> bool:
    """Whether the data comes split into clients (writers, folders, files)."""
    return self.client_indices is not None

  def natural_population(self, conditional_gan: bool = False) -> data.ClientData:
    """The data's own clients: client `k` is `client_ids[k]`.

    Tasks whose examples are in memory split them by `client_indices`; tasks too large for
    that (EMNIST) override this to read each client's examples on the executor.

    Raises:
      ValueError: If the task's data has no natural clients.
    """
    if not self.has_natural_clients:
      raise ValueError(f"task '{self.name}' has no natural clients; choose --partition=iid, "
                       'dirichlet or pathological.')
    return data.ClientPopulation(self.training_examples(conditional_gan), self.client_indices,
                                 labels=self.labels if self.labelled else None)

  def predict_labels(self, samples: np.ndarray) -> np.ndarray:
    """The class a task's own judge (a classifier, the nearest mode) sees in each sample.

    Used to score a conditional generator: the fraction of samples recognized as the class
    they were generated for.
    """
    raise NotImplementedError(f"task '{self.name}' cannot tell the class of a sample.")

  def covered_labels(self, samples: np.ndarray) -> np.ndarray:
    """Which classes the samples cover, bool `[num_labels]` (per-client coverage uses it).

    By default a class is covered when the task's judge (`predict_labels`) sees it in at
    least a tenth of its fair share of the samples (0.1 M / K of M samples, K classes).
    """
    counts = np.bincount(self.predict_labels(samples), minlength=self.num_labels)
    return counts >= max(1.0, 0.1 * len(samples) / self.num_labels)

  def generate_examples(self, labels: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Fresh examples `[n, *data_shape]` of the given int64 labels `[n]`, in TF (stateless).

    Tasks whose data has a known generative recipe implement this, so that clients can draw
    their own examples on the executor (`tff_gan.clients.populations.GeneratedClients`);
    `generates_data` says whether a task does.
    """
    raise NotImplementedError(f"task '{self.name}' holds a fixed dataset and draws no examples.")

  @property
  def generates_data(self) -> bool:
    return type(self).generate_examples is not Task.generate_examples

  @abc.abstractmethod
  def evaluate(self, samples: np.ndarray) -> dict[str, float]:
    """Scores generator samples `[M, *data_shape]`; the keys are `metric_names`."""

  def prepare_evaluation(self, cache_dir: str, clients=None) -> dict[str, float]:
    """Builds what `evaluate` needs (e.g. a classifier), cached in `cache_dir`.

    Args:
      cache_dir: Where pooled evaluation caches what it trains.
      clients: For federated evaluation (`tasks.federated_eval`), the run's population
        (`ClientData`) to build the evaluation from, without pooling its data; None: pooled.

    Returns:
      The metrics of held-out real data, where a task has them: the scale users should read
      the generator's metrics against. `{}` by default.

    Raises:
      ValueError: If `clients` is given to a task with no federated evaluation.
    """
    del cache_dir
    if clients is not None:
      raise ValueError(f"task '{self.name}' has no federated evaluation; use --eval=pooled.")
    return {}

  @abc.abstractmethod
  def render(self, samples: np.ndarray, path: str) -> None:
    """Writes a PNG picture of generator samples `[M, *data_shape]` to `path`."""

  def sample_exports(self, samples: np.ndarray) -> dict[str, Callable[[str], None]]:
    """Extra files `bin/generate.py` writes for `samples`: file suffix -> writer of a path.

    None by default; a task whose samples users want in another form adds it (tabular: a CSV
    in the columns' own units).
    """
    del samples
    return {}

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
  """Saves `image` as a PNG at `path` atomically (`tff_gan.files`)."""
  files.write_outputs({os.fspath(path): lambda temporary: image.save(temporary, format='PNG')})


def write_figure(figure, path: str | os.PathLike[str]) -> None:
  """Saves a matplotlib `Figure` as a PNG at `path` atomically (through `write_png`).

  Use a bare `matplotlib.figure.Figure`, not pyplot: it needs no GUI backend and leaves the
  caller's (e.g. a notebook's inline) backend alone.
  """
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png')
  buffer.seek(0)
  with Image.open(buffer) as image:
    write_png(image.convert('RGB'), path)


def mlp_generator(
    noise_dim: int,
    hidden_units: tuple[int, ...],
    data_shape: tuple[int, ...],
    output_scale: float = 1.0,
    bounded: bool = True,
) -> tf.keras.Model:
  """A fully connected generator: ReLU hidden layers, then tanh outputs times `output_scale`
  (or, unless `bounded`, a linear output layer).

  Args:
    noise_dim: Length of the input noise vector.
    hidden_units: Units of each hidden Dense layer, in order.
    data_shape: Shape of one output sample; the flat output is reshaped to it.
    output_scale: The tanh output is multiplied by this, so samples lie in
      `[-output_scale, output_scale]`.
    bounded: False for a linear output (no tanh, no scale), for unbounded data.

  Returns:
    A built Keras model mapping `[B, noise_dim]` to `[B, *data_shape]`.
  """
  layers = [tf.keras.Input(shape=(noise_dim,))]
  for units in hidden_units:
    layers += [tf.keras.layers.Dense(units), tf.keras.layers.ReLU()]
  layers.append(tf.keras.layers.Dense(int(np.prod(data_shape))))
  if bounded:
    layers.append(tf.keras.layers.Activation('tanh'))
  if bounded and output_scale != 1.0:
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


def dcgan_generator(noise_dim: int, image_shape: tuple[int, ...], base_filters: int,
                    upsampling_filters: int) -> tf.keras.Model:
  """A small DCGAN generator without batch norm (which federated averaging does not suit).

  Noise `[B, noise_dim]` -> Dense to (H/4)x(W/4)x`base_filters` -> LeakyReLU(0.2) ->
  ConvT `upsampling_filters` (4x4, stride 2) -> LeakyReLU(0.2) -> ConvT C (4x4, stride 2) ->
  tanh, giving images `[B, *image_shape]`; H and W must be multiples of 4.
  """
  height, width, channels = image_shape
  if height % 4 or width % 4:
    raise ValueError(f'image sides must be multiples of 4, got {height}x{width}.')
  return tf.keras.Sequential(
      [
          tf.keras.Input(shape=(noise_dim,)),
          tf.keras.layers.Dense(height // 4 * width // 4 * base_filters),
          tf.keras.layers.LeakyReLU(0.2),
          tf.keras.layers.Reshape((height // 4, width // 4, base_filters)),
          tf.keras.layers.Conv2DTranspose(upsampling_filters, 4, strides=2, padding='same'),
          tf.keras.layers.LeakyReLU(0.2),
          tf.keras.layers.Conv2DTranspose(channels, 4, strides=2, padding='same'),
          tf.keras.layers.Activation('tanh'),
      ],
      name='generator',
  )


def dcgan_discriminator(input_shape: tuple[int, ...], first_filters: int,
                        second_filters: int) -> tf.keras.Model:
  """Images `[B, *input_shape]` -> Conv `first_filters` (3x3, stride 2) -> LeakyReLU(0.2) ->
  Conv `second_filters` (3x3, stride 2) -> LeakyReLU(0.2) -> Flatten -> Dense 1 (logits)."""
  return tf.keras.Sequential(
      [
          tf.keras.Input(shape=input_shape),
          tf.keras.layers.Conv2D(first_filters, 3, strides=2, padding='same'),
          tf.keras.layers.LeakyReLU(0.2),
          tf.keras.layers.Conv2D(second_filters, 3, strides=2, padding='same'),
          tf.keras.layers.LeakyReLU(0.2),
          tf.keras.layers.Flatten(),
          tf.keras.layers.Dense(1),
      ],
      name='discriminator',
  )


GRID_COLUMNS = 8
MAX_GRID_IMAGES = 64
_CELL_PADDING = 2
_PADDING_GRAY = 128


def image_grid(images: np.ndarray, *, upscale: int = 1) -> np.ndarray:
  """The first 64 images `[M, H, W, C]` (values in [-1, 1]) as one uint8 grid `[h, w, C]`.

  Up to 8 columns; pixels map linearly from [-1, 1] to [0, 255] (clipped, NaN as 0); each
  image is upscaled `upscale` times (nearest neighbour); cells are separated by 2 mid-gray
  pixels.
  """
  images = np.asarray(images, np.float64)[:MAX_GRID_IMAGES]
  levels = np.clip(np.nan_to_num((images + 1) * 127.5), 0, 255).round().astype(np.uint8)
  levels = levels.repeat(upscale, axis=1).repeat(upscale, axis=2)
  num_images, height, width, channels = levels.shape
  num_columns = min(GRID_COLUMNS, num_images)
  num_rows = math.ceil(num_images / num_columns)
  cell_height, cell_width = height + _CELL_PADDING, width + _CELL_PADDING
  canvas = np.full((num_rows * cell_height + _CELL_PADDING,
                    num_columns * cell_width + _CELL_PADDING, channels), _PADDING_GRAY, np.uint8)
  for position, image in enumerate(levels):
    top = _CELL_PADDING + (position // num_columns) * cell_height
    left = _CELL_PADDING + (position % num_columns) * cell_width
    canvas[top : top + height, left : left + width] = image
  return canvas


def write_image_grid(images: np.ndarray, path: str, *, upscale: int = 1) -> None:
  """Writes `image_grid(images, upscale=upscale)` (C = 1 or 3) as a PNG at `path`."""
  canvas = image_grid(images, upscale=upscale)
  if canvas.shape[-1] == 1:
    write_png(Image.fromarray(canvas[..., 0], mode='L'), path)
  else:
    write_png(Image.fromarray(canvas, mode='RGB'), path)
