"""What the library needs to know about a GAN's networks, bound at construction time.

A task (see `tasks/`) describes its generator and discriminator with a `GanModels`. The
library calls the factories inside TFF computations' graphs, so they must build fresh Keras
models on every call and must not capture variables from outside.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class GanModels:
  """Factories and shapes of a GAN's two networks.

  Attributes:
    generator_fn: Builds a Keras model mapping noise `[B, noise_dim]` float32 to samples
      `[B, *data_shape]` float32.
    discriminator_fn: Builds a Keras model mapping samples `[B, *data_shape]` to real/fake
      logits `[B, 1]` (no final sigmoid: the losses apply it in a numerically stable way).
    noise_dim: Length of the generator's input noise vector, drawn from N(0, I).
    data_shape: Shape of one example, without the batch dimension.
  """

  generator_fn: Callable[[], tf.keras.Model]
  discriminator_fn: Callable[[], tf.keras.Model]
  noise_dim: int
  data_shape: tuple[int, ...]

  def __post_init__(self):
    if self.noise_dim <= 0:
      raise ValueError(f'noise_dim must be positive, got {self.noise_dim}.')
    object.__setattr__(self, 'data_shape', tuple(int(d) for d in self.data_shape))

  def data_spec(self, batch_size: int | None = None) -> tf.TensorSpec:
    """The `tf.TensorSpec` of a batch of examples."""
    return tf.TensorSpec([batch_size, *self.data_shape], tf.float32)

  def noise_spec(self, batch_size: int | None = None) -> tf.TensorSpec:
    """The `tf.TensorSpec` of a batch of generator noise."""
    return tf.TensorSpec([batch_size, self.noise_dim], tf.float32)
