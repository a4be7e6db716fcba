"""Handwritten digits: scikit-learn's 8x8 `load_digits`, small enough for CPU-only tests.

The 1797 images ship inside scikit-learn, so nothing is downloaded. Labels are the digit
classes, which `tff_gan.partition` can skew clients by.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile

import numpy as np
import tensorflow as tf
from PIL import Image
from sklearn.datasets import load_digits

from tasks import base
from tff_gan import evaluation
from tff_gan.models import GanModels

_IMAGE_SIDE = 8
_MAX_PIXEL = 16.0  # load_digits pixels are integers in [0, 16].
_GRID_COLUMNS = 8
_MAX_RENDERED_SAMPLES = 64
_UPSCALE = 4
_CELL_PADDING = 2
_PADDING_GRAY = 128
_HELDOUT_FRACTION = 0.2  # Of the images, kept from the classifier to calibrate the metrics.
_SPLIT_SEED = 0  # Fixed: the classifier and the reference values do not change with --seed.


class DigitsTask(base.Task):
  """scikit-learn's 1797 8x8 digits, as float32 `[N, 8, 8, 1]` in [-1, 1].

  Architectures (`model`):
    - `'mlp'`: G = Dense 256 -> ReLU -> Dense 512 -> ReLU -> Dense 64 -> tanh -> 8x8x1;
      D = Flatten -> Dense 512 -> LeakyReLU(0.2) -> Dense 256 -> LeakyReLU(0.2) -> Dense 1.
    - `'dcgan'`: a small convolutional pair without batch norm. G = Dense 2*2*128 ->
      LeakyReLU(0.2) -> 2x2x128 -> ConvT 64 (4x4, stride 2) -> LeakyReLU(0.2) -> ConvT 1 (4x4,
      stride 2) -> tanh; D = Conv 64 (3x3, stride 2) -> LeakyReLU(0.2) -> Conv 128 (3x3,
      stride 2) -> LeakyReLU(0.2) -> Flatten -> Dense 1.
  Hidden sizes and filter counts are multiplied by `width`.

  Metrics (`tff_gan.evaluation`), from a small conv classifier trained on a fixed 80% split of
  the images (cached by `prepare_evaluation`): `frechet_distance` between the classifier's
  penultimate activations of the samples and of that split (lower is better), and
  `classifier_score` exp(E KL(p(y|x) || p(y))) of the samples (higher is better, at most 10).
  `prepare_evaluation` returns the same two metrics for the held-out 20% of real images.
  """

  name = 'digits'
  model_choices = ('mlp', 'dcgan')
  metric_names = ('frechet_distance', 'classifier_score')

  def __init__(
      self, *, noise_dim: int = 32, seed: int = 0, model: str = 'mlp', width: float = 1.0
  ):
    """Loads the dataset (in scikit-learn's order; `seed` does not change the data).

    Args:
      noise_dim: Length of the generator's noise vector.
      seed: Kept for the common task interface.
      model: `'mlp'` or `'dcgan'`.
      width: Multiplier of hidden units and filters.
    """
    super().__init__(seed=seed, model=model, width=width)
    if isinstance(noise_dim, bool) or not isinstance(noise_dim, int | np.integer) or noise_dim < 1:
      raise ValueError(f'noise_dim must be a positive int, got {noise_dim!r}.')
    self.noise_dim = int(noise_dim)
    digits = load_digits()
    pixels = digits.images.reshape(-1, _IMAGE_SIDE, _IMAGE_SIDE, 1)
    self.examples = (pixels / (_MAX_PIXEL / 2) - 1).astype(np.float32)
    self.labels = digits.target.astype(np.int64)
    self.num_labels = 10
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(self.examples))
    num_heldout = round(_HELDOUT_FRACTION * len(order))
    self._heldout, self._classifier_split = order[:num_heldout], order[num_heldout:]
    self._classifier = None

  def gan_models(self) -> GanModels:
    """The generator and discriminator of the architecture `model`, scaled by `width`."""
    data_shape = (_IMAGE_SIDE, _IMAGE_SIDE, 1)
    if self.model == 'mlp':
      generator_fn = functools.partial(
          base.mlp_generator, self.noise_dim, (self.scaled(256), self.scaled(512)), data_shape
      )
      discriminator_fn = functools.partial(
          base.mlp_discriminator, data_shape, (self.scaled(512), self.scaled(256))
      )
    else:
      generator_fn = functools.partial(
          _dcgan_generator, self.noise_dim, self.scaled(128), self.scaled(64)
      )
      discriminator_fn = functools.partial(
          _dcgan_discriminator, self.scaled(64), self.scaled(128)
      )
    return GanModels(
        generator_fn=generator_fn,
        discriminator_fn=discriminator_fn,
        noise_dim=self.noise_dim,
        data_shape=data_shape,
    )

  def prepare_evaluation(self, cache_dir: str) -> dict[str, float]:
    """Trains (or loads from `cache_dir`) the classifier; returns the held-out real metrics."""
    self._classifier = evaluation.load_or_train_classifier(
        self.examples[self._classifier_split], self.labels[self._classifier_split],
        cache_dir=cache_dir, num_classes=self.num_labels)
    return evaluation.real_data_reference(
        self._classifier, self.examples[self._classifier_split], self.examples[self._heldout])

  def evaluate(self, samples: np.ndarray) -> dict[str, float]:
    """`frechet_distance` and `classifier_score` of `samples` (see the class docstring).

    Uses the classifier of `prepare_evaluation`; if it was not called, prepares with a cache
    under the system's temporary directory.
    """
    samples = self._check_samples(samples).astype(np.float32)
    if self._classifier is None:
      self.prepare_evaluation(os.path.join(tempfile.gettempdir(), 'tff_gan_classifiers'))
    return evaluation.image_metrics(
        self._classifier, self.examples[self._classifier_split], samples)

  def render(self, samples: np.ndarray, path: str) -> None:
    """Writes the first 64 samples as a grid of up to 8 columns to the PNG `path`.

    Pixels map linearly from [-1, 1] to gray levels [0, 255] (clipped), so the background of
    real digits is black and strokes are white. Each digit is upscaled 4x (nearest
    neighbour); cells are separated by 2 mid-gray pixels.
    """
    samples = self._check_samples(samples)[:_MAX_RENDERED_SAMPLES, :, :, 0]
    gray_levels = np.clip(np.nan_to_num((samples + 1) * 127.5), 0, 255).round().astype(np.uint8)
    upscaled = gray_levels.repeat(_UPSCALE, axis=1).repeat(_UPSCALE, axis=2)
    num_columns = min(_GRID_COLUMNS, len(upscaled))
    num_rows = math.ceil(len(upscaled) / num_columns)
    cell = _IMAGE_SIDE * _UPSCALE + _CELL_PADDING
    canvas = np.full(
        (num_rows * cell + _CELL_PADDING, num_columns * cell + _CELL_PADDING),
        _PADDING_GRAY,
        dtype=np.uint8,
    )
    for position, digit in enumerate(upscaled):
      top = _CELL_PADDING + (position // num_columns) * cell
      left = _CELL_PADDING + (position % num_columns) * cell
      canvas[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    base.write_png(Image.fromarray(canvas, mode='L'), path)


def _dcgan_generator(noise_dim: int, base_filters: int, upsampling_filters: int) -> tf.keras.Model:
  """Noise `[B, noise_dim]` -> 2x2x`base_filters` -> 4x4x`upsampling_filters` -> 8x8x1 tanh."""
  return tf.keras.Sequential(
      [
          tf.keras.Input(shape=(noise_dim,)),
          tf.keras.layers.Dense(2 * 2 * base_filters),
          tf.keras.layers.LeakyReLU(0.2),
          tf.keras.layers.Reshape((2, 2, base_filters)),
          tf.keras.layers.Conv2DTranspose(upsampling_filters, 4, strides=2, padding='same'),
          tf.keras.layers.LeakyReLU(0.2),
          tf.keras.layers.Conv2DTranspose(1, 4, strides=2, padding='same'),
          tf.keras.layers.Activation('tanh'),
      ],
      name='generator',
  )


def _dcgan_discriminator(first_filters: int, second_filters: int) -> tf.keras.Model:
  """Images `[B, 8, 8, 1]` -> two stride-2 convolutions -> logits `[B, 1]`."""
  return tf.keras.Sequential(
      [
          tf.keras.Input(shape=(_IMAGE_SIDE, _IMAGE_SIDE, 1)),
          tf.keras.layers.Conv2D(first_filters, 3, strides=2, padding='same'),
          tf.keras.layers.LeakyReLU(0.2),
          tf.keras.layers.Conv2D(second_filters, 3, strides=2, padding='same'),
          tf.keras.layers.LeakyReLU(0.2),
          tf.keras.layers.Flatten(),
          tf.keras.layers.Dense(1),
      ],
      name='discriminator',
  )
