"""Your own images, one folder per client: `DATA_DIR/<client_id>/*.png|jpg`.

Each sub-folder is one client (one hospital, one device), read by
`tasks.readers.image_folder.load_image_folder`: grayscale or RGB, resized to `image_size` square,
scaled to [-1, 1]. There are no classes, so the metrics compare generated and real images
directly, in pixel space.
"""

from __future__ import annotations

import functools

import numpy as np

from tasks import base, evaluation
from tasks.readers.image_folder import load_image_folder

_POOLED_SIDE = 8  # Images are average-pooled to at most 8x8 for the Fréchet distance.
_HELDOUT_FRACTION = 0.2
_SPLIT_SEED = 0
_MIN_IMAGES = 4  # The held-out split and the rest each need 2 images for a covariance.


class ImageFolderTask(base.Task):
  """Images read from `data_dir`, split into their natural clients (the sub-folders).

  Architectures (`model`), for `image_size` S (a multiple of 4) and C channels:
    - `'dcgan'` (default): G = Dense (S/4)²·128 -> LeakyReLU(0.2) -> ConvT 64 (4x4, stride 2)
      -> LeakyReLU(0.2) -> ConvT C (4x4, stride 2) -> tanh; D = Conv 64 (3x3, stride 2) ->
      LeakyReLU(0.2) -> Conv 128 (3x3, stride 2) -> LeakyReLU(0.2) -> Flatten -> Dense 1.
    - `'mlp'`: Dense 256-512 G and Dense 512-256 D on flattened images.
  Filter and unit counts are multiplied by `width`.

  Metrics (lower is better):
    - `pixel_frechet_distance`: the Fréchet distance between Gaussians fitted to real and
      generated images, each average-pooled to at most 8x8 pixels (so at most 64·C
      dimensions, which a few hundred images can estimate a covariance for). It sees
      brightness, layout and coarse shape, not fine texture.
    - `mean_image_rmse`: the root-mean-square difference between the mean real and the mean
      generated image, at full resolution, in [-1, 1] pixel units.
  The real images are the pooled dataset (the simulation's privilege: a deployment would
  score against data it may look at). `prepare_evaluation` returns both metrics of a
  held-out 20% of the real images against the rest, the value a perfect generator reaches.
  """

  name = 'image_folder'
  model_choices = ('dcgan', 'mlp')
  metric_names = ('pixel_frechet_distance', 'mean_image_rmse')
  reads_files = True

  def __init__(self, *, data_dir: str, image_size: int = 32, noise_dim: int = 64, seed: int = 0,
               model: str = 'dcgan', width: float = 1.0,
               discriminator_width: float | None = None):
    """Reads the images.

    Args:
      data_dir: The folder of client sub-folders.
      image_size: Side every image is resized to; a multiple of 4, at least 8.
      noise_dim: Length of the generator's noise vector.
      seed: Seed of the run (the data does not depend on it).
      model: `'dcgan'` or `'mlp'`.
      width: Multiplier of hidden units and filters.
      discriminator_width: The discriminator's own multiplier (None: `width`).

    Raises:
      ImageFolderError: Naming the folder or file that cannot be used, and the fix.
      ValueError: For invalid arguments.
    """
    super().__init__(seed=seed, model=model, width=width,
                     discriminator_width=discriminator_width)
    if image_size < 8 or image_size % 4:
      raise ValueError(f'image_size must be a multiple of 4, at least 8, got {image_size}.')
    if noise_dim < 1:
      raise ValueError(f'noise_dim must be positive, got {noise_dim}.')
    folder = load_image_folder(data_dir, image_size)
    if len(folder.examples) < _MIN_IMAGES:
      raise ValueError(f'{data_dir} holds {len(folder.examples)} images; a run needs at least '
                       f'{_MIN_IMAGES} to evaluate against.')
    self.noise_dim = noise_dim
    self.examples = folder.examples
    self.labels = np.zeros(len(self.examples), np.int64)
    self.num_labels = 0
    self.client_ids = list(folder.client_ids)
    self.client_indices = list(folder.client_indices)
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(self.examples))
    num_heldout = max(2, round(_HELDOUT_FRACTION * len(order)))
    self._heldout, self._rest = order[:num_heldout], order[num_heldout:]

  def networks(self, generator_input_dim: int, discriminator_input_shape: tuple[int, ...]):
    """The generator and discriminator of the architecture `model`, scaled by `width`."""
    if self.model == 'mlp':
      return (
          functools.partial(base.mlp_generator, generator_input_dim,
                            (self.scaled(256), self.scaled(512)), self.data_shape),
          functools.partial(base.mlp_discriminator, discriminator_input_shape,
                            (self.scaled_d(512), self.scaled_d(256))),
      )
    return (
        functools.partial(base.dcgan_generator, generator_input_dim, self.data_shape,
                          self.scaled(128), self.scaled(64)),
        functools.partial(base.dcgan_discriminator, discriminator_input_shape, self.scaled_d(64),
                          self.scaled_d(128)),
    )

  def prepare_evaluation(self, cache_dir: str, clients=None) -> dict[str, float]:
    """The metrics of the held-out real images against the rest (nothing to cache; pooled only)."""
    super().prepare_evaluation(cache_dir, clients)  # Refuses federated evaluation.
    return image_folder_metrics(self.examples[self._rest], self.examples[self._heldout])

  def evaluate(self, samples: np.ndarray) -> dict[str, float]:
    """`pixel_frechet_distance` and `mean_image_rmse` of `samples` against all real images."""
    return image_folder_metrics(self.examples, self._check_samples(samples))

  def render(self, samples: np.ndarray, path: str) -> None:
    """Writes the first 64 samples as a grid of up to 8 columns to the PNG `path`.

    Images smaller than 32 pixels are upscaled (nearest neighbour) to at least 32.
    """
    side = self.data_shape[0]
    base.write_image_grid(self._check_samples(samples), path, upscale=max(1, 32 // side))


def pooled(images: np.ndarray, side: int = _POOLED_SIDE) -> np.ndarray:
  """Images `[N, S, S, C]` average-pooled to `[N, s·s·C]`, s the largest divisor of S ≤ `side`."""
  size = images.shape[1]
  target = max(d for d in range(1, min(side, size) + 1) if size % d == 0)
  block = size // target
  pooled_images = images.reshape(len(images), target, block, target, block, -1).mean(axis=(2, 4))
  return pooled_images.reshape(len(images), -1)


def image_folder_metrics(real: np.ndarray, generated: np.ndarray) -> dict[str, float]:
  """The metrics of `ImageFolderTask` of `generated` images against `real` ones."""
  real, generated = np.asarray(real, np.float64), np.asarray(generated, np.float64)
  rmse = np.sqrt(np.mean((real.mean(axis=0) - generated.mean(axis=0)) ** 2))
  return {
      'pixel_frechet_distance': evaluation.frechet_distance(pooled(real), pooled(generated)),
      'mean_image_rmse': float(rmse),
  }
