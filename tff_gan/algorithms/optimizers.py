"""Named `tff.learning.optimizers` for clients and server.

All optimizers are TFF's functional ones: explicit state, no `tf.Variable`s, so server
optimizer state lives in `ServerState` (and is checkpointed with it).
"""

from __future__ import annotations

import math

import tensorflow as tf
import tensorflow_federated as tff

from tff_gan.choices import OPTIMIZERS

# Adam's β1 = 0.5 is the usual choice for GANs (Radford et al. 2016); TFF's default is 0.9.
GAN_ADAM_BETA_1 = 0.5


def build_optimizer(name: str, learning_rate: float,
                    half_life: float = 0.0) -> tff.learning.optimizers.Optimizer:
  """Returns the functional optimizer `name` with `learning_rate`.

  Args:
    name: One of `sgd`, `sgdm` (momentum 0.9), `adam` (β1 = 0.5), `yogi` (β1 = 0.5),
      `adagrad`, `rmsprop`.
    learning_rate: A positive learning rate.
    half_life: If positive, the learning rate halves every `half_life` steps: step t (from
      0) uses learning_rate·2^(−t/half_life) (TFF's `schedule_learning_rate`, whose state
      counts the steps, so a resumed run continues the schedule). 0: constant.
  """
  if learning_rate <= 0:
    raise ValueError(f'learning rate must be positive, got {learning_rate}.')
  if not (math.isfinite(half_life) and half_life >= 0):
    raise ValueError(f'half_life must be a number of steps >= 0, got {half_life}.')
  builders = {
      'sgd': lambda: tff.learning.optimizers.build_sgdm(learning_rate),
      'sgdm': lambda: tff.learning.optimizers.build_sgdm(learning_rate, momentum=0.9),
      'adam': lambda: tff.learning.optimizers.build_adam(learning_rate, beta_1=GAN_ADAM_BETA_1),
      'yogi': lambda: tff.learning.optimizers.build_yogi(learning_rate, beta_1=GAN_ADAM_BETA_1),
      'adagrad': lambda: tff.learning.optimizers.build_adagrad(learning_rate),
      'rmsprop': lambda: tff.learning.optimizers.build_rmsprop(learning_rate),
  }
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer '{name}'; choose one of: {', '.join(OPTIMIZERS)}")
  if not half_life:
    return builders[name]()
  return tff.learning.optimizers.schedule_learning_rate(
      builders[name](), lambda step: learning_rate * halving(step, half_life))


def halving(step, half_life: float) -> tf.Tensor:
  """2^(−step/half_life) as float32: the learning-rate multiplier of a half-life schedule."""
  return tf.pow(0.5, tf.cast(step, tf.float32) / half_life)
