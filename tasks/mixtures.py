"""Two-dimensional Gaussian mixtures, the standard mode-collapse benchmarks.

`RingTask` (8 modes on the unit circle) and `GridTask` (25 modes on a 5x5 grid) are the
synthetic tasks of VEEGAN (Srivastava et al., 2017) and PacGAN (Lin et al., 2018). A GAN
that collapses covers few modes; `mode_metrics` counts them.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import ClassVar

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw

from tasks import base

_IMAGE_SIZE = 512
_DOT_COLOR = (30, 30, 30)
_MODE_COLOR = (220, 0, 0)


def mode_metrics(samples: np.ndarray, modes: np.ndarray, sigma: float) -> dict[str, float]:
  """Mode coverage and sample quality of 2-D samples from a Gaussian mixture.

  The VEEGAN / PacGAN convention: a sample is *high quality* (HQ) if its distance to the
  nearest mode is at most 3 sigma; a mode is *captured* if it is the nearest mode of at least
  one HQ sample; the *reverse KL* is KL(p_gen || p_true), where p_gen is the histogram of HQ
  samples over their nearest modes (normalized) and p_true the uniform distribution over all
  modes, with 0 log 0 = 0. It is 0 when HQ samples hit every mode equally often and
  log(num_modes / m) when they hit only m modes, equally often.

  Args:
    samples: float array `[M, 2]`, M >= 1.
    modes: float array `[K, 2]`, the mixture's means.
    sigma: Positive standard deviation of each mixture component (per coordinate).

  Returns:
    A dict with `modes_captured` (an int in `[0, K]`), `high_quality_fraction` (in
    `[0, 1]`) and `reverse_kl` (in `[0, log K]`, or NaN when no sample is high quality, since
    p_gen is then undefined).
  """
  samples = np.asarray(samples, dtype=np.float64)
  modes = np.asarray(modes, dtype=np.float64)
  if samples.ndim != 2 or samples.shape[0] == 0 or samples.shape[1] != 2:
    raise ValueError(f'samples must have shape [M, 2] with M >= 1, got {samples.shape}.')
  if modes.ndim != 2 or modes.shape[0] == 0 or modes.shape[1] != 2:
    raise ValueError(f'modes must have shape [K, 2] with K >= 1, got {modes.shape}.')
  if not (math.isfinite(sigma) and sigma > 0):
    raise ValueError(f'sigma must be a positive finite number, got {sigma}.')

  distances = np.linalg.norm(samples[:, None, :] - modes[None, :, :], axis=-1)
  nearest_mode = np.argmin(distances, axis=1)
  # NaN samples compare False, so they count as low quality.
  is_high_quality = distances[np.arange(samples.shape[0]), nearest_mode] <= 3 * sigma
  hits_per_mode = np.bincount(nearest_mode[is_high_quality], minlength=modes.shape[0])
  num_high_quality = int(hits_per_mode.sum())
  if num_high_quality:
    hit = hits_per_mode > 0
    generated_distribution = hits_per_mode[hit] / num_high_quality
    reverse_kl = float(
        np.sum(generated_distribution * np.log(generated_distribution * modes.shape[0]))
    )
  else:
    reverse_kl = float('nan')
  return {
      'modes_captured': int(np.count_nonzero(hits_per_mode)),
      'high_quality_fraction': num_high_quality / samples.shape[0],
      'reverse_kl': reverse_kl,
  }


class GaussianMixtureTask(base.Task):
  """Equal-weight isotropic Gaussians in the plane; the label of an example is its mode.

  Subclasses set `modes`, `sigma`, `generator_scale` and `axis_limit`.

  The generator ends in tanh times `generator_scale`, a little more than the modes' largest
  coordinate, so every mode lies inside tanh's range without the generator having to
  saturate it to reach the outer modes.
  """

  modes: ClassVar[np.ndarray]
  sigma: ClassVar[float]
  generator_scale: ClassVar[float]
  axis_limit: ClassVar[float]
  metric_names = ('modes_captured', 'high_quality_fraction', 'reverse_kl')

  def __init__(
      self,
      *,
      num_examples: int = 20000,
      noise_dim: int = 64,
      seed: int = 0,
      model: str = 'mlp',
      width: float = 1.0,
      discriminator_width: float | None = None,
  ):
    """Draws the dataset.

    Args:
      num_examples: Dataset size, at least the number of modes. The modes get equal counts
        (when `num_examples` is not a multiple of the number of modes, the first modes get one
        example more than the others).
      noise_dim: Length of the generator's noise vector.
      seed: Seed of the draw; the same seed gives the same examples in the same order.
      model: Architecture; only `'mlp'`.
      width: Multiplier of the hidden layer sizes.
      discriminator_width: The discriminator's own multiplier (None: `width`).
    """
    super().__init__(seed=seed, model=model, width=width,
                     discriminator_width=discriminator_width)
    num_modes = self.modes.shape[0]
    if isinstance(num_examples, bool) or not isinstance(num_examples, int | np.integer):
      raise ValueError(f'num_examples must be an int, got {num_examples!r}.')
    if num_examples < num_modes:
      raise ValueError(
          f"task '{self.name}' needs num_examples >= {num_modes} (one per mode), got "
          f'{num_examples}; pass a larger num_examples.'
      )
    if isinstance(noise_dim, bool) or not isinstance(noise_dim, int | np.integer) or noise_dim < 1:
      raise ValueError(f'noise_dim must be a positive int, got {noise_dim!r}.')
    self.noise_dim = int(noise_dim)
    self.num_labels = num_modes

    rng = np.random.default_rng(seed)
    examples_per_mode = np.full(num_modes, num_examples // num_modes)
    examples_per_mode[: num_examples % num_modes] += 1
    labels = np.repeat(np.arange(num_modes), examples_per_mode)
    examples = self.modes[labels] + self.sigma * rng.standard_normal((num_examples, 2))
    order = rng.permutation(num_examples)
    self.examples = examples[order].astype(np.float32)
    self.labels = labels[order].astype(np.int64)

  def generate_examples(self, labels: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Draws from the mixture component each label names: its mode plus N(0, sigma² I)."""
    noise = tf.random.stateless_normal([tf.shape(labels)[0], 2], seed)
    return tf.gather(tf.constant(self.modes, tf.float32), labels) + self.sigma * noise

  def networks(self, generator_input_dim: int, discriminator_input_shape: tuple[int, ...]):
    """MISSION.md's reference nets (Dense 256-512 G, Dense 512-256 D), scaled by `width`."""
    return (
        functools.partial(base.mlp_generator, generator_input_dim,
                          (self.scaled(256), self.scaled(512)), (2,), self.generator_scale),
        functools.partial(base.mlp_discriminator, discriminator_input_shape,
                          (self.scaled_d(512), self.scaled_d(256))),
    )

  def predict_labels(self, samples: np.ndarray) -> np.ndarray:
    """The nearest mode of each sample."""
    samples = self._check_samples(samples)
    distances = np.linalg.norm(samples[:, None, :] - self.modes[None], axis=-1)
    return distances.argmin(axis=-1)

  def covered_labels(self, samples: np.ndarray) -> np.ndarray:
    """The captured modes (`mode_metrics`' sense: nearest mode of a high-quality sample)."""
    samples = self._check_samples(samples)
    distances = np.linalg.norm(samples[:, None, :] - self.modes[None], axis=-1)
    nearest = distances.argmin(axis=-1)
    high_quality = distances[np.arange(len(samples)), nearest] <= 3 * self.sigma
    return np.bincount(nearest[high_quality], minlength=len(self.modes)) > 0

  def evaluate(self, samples: np.ndarray) -> dict[str, float]:
    """`mode_metrics` of `samples` `[M, 2]` against this task's modes and sigma."""
    return mode_metrics(self._check_samples(samples), self.modes, self.sigma)

  def render(self, samples: np.ndarray, path: str) -> None:
    """Writes a 512x512 scatter plot of `samples` `[M, 2]` to the PNG `path`.

    Samples are small dark dots on white; each mode is a red circle of radius 3 sigma (at
    least 3 pixels), the high-quality region. The axes span `[-axis_limit, axis_limit]` in
    both directions, y upwards; samples outside are not drawn.
    """
    samples = self._check_samples(samples)
    pixels_per_unit = (_IMAGE_SIZE - 1) / (2 * self.axis_limit)

    def to_pixels(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
      columns = (points[:, 0] + self.axis_limit) * pixels_per_unit
      rows = (self.axis_limit - points[:, 1]) * pixels_per_unit
      return rows, columns

    canvas = np.full((_IMAGE_SIZE, _IMAGE_SIZE, 3), 255, dtype=np.uint8)
    rows, columns = to_pixels(samples[np.all(np.isfinite(samples), axis=1)])
    rows, columns = np.round(rows).astype(np.int64), np.round(columns).astype(np.int64)
    inside = (rows >= 0) & (rows < _IMAGE_SIZE - 1) & (columns >= 0) & (columns < _IMAGE_SIZE - 1)
    rows, columns = rows[inside], columns[inside]
    for row_offset, column_offset in itertools.product((0, 1), repeat=2):  # 2x2-pixel dots.
      canvas[rows + row_offset, columns + column_offset] = _DOT_COLOR

    image = Image.fromarray(canvas, mode='RGB')
    draw = ImageDraw.Draw(image)
    radius = max(3.0, 3 * self.sigma * pixels_per_unit)
    for row, column in zip(*to_pixels(self.modes), strict=True):
      draw.ellipse(
          (column - radius, row - radius, column + radius, row + radius), outline=_MODE_COLOR
      )
    base.write_png(image, path)


class RingTask(GaussianMixtureTask):
  """8 Gaussians (sigma 0.01) at angles 2 pi k / 8 on the unit circle.

  The generator's tanh output is scaled by 1.5 so the modes (radius 1) lie inside its range
  without saturating it. Plots span +-1.6.
  """

  name = 'ring'
  modes = np.array(
      [[math.cos(2 * math.pi * k / 8), math.sin(2 * math.pi * k / 8)] for k in range(8)]
  )
  sigma = 0.01
  generator_scale = 1.5
  axis_limit = 1.6


class GridTask(GaussianMixtureTask):
  """25 Gaussians (sigma 0.05) at {-4, -2, 0, 2, 4}^2.

  The generator's tanh output is scaled by 5.5 so the modes (coordinates up to 4) lie inside
  its range without saturating it. Plots span +-6. Mode `5 i + j` is at `(2 i - 4, 2 j - 4)`.
  """

  name = 'grid'
  modes = np.array(list(itertools.product((-4.0, -2.0, 0.0, 2.0, 4.0), repeat=2)))
  sigma = 0.05
  generator_scale = 5.5
  axis_limit = 6.0
