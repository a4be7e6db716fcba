"""Named `tff.learning.optimizers` for clients and server.

All optimizers are TFF's functional ones: explicit state, no `tf.Variable`s, so server
optimizer state lives in `ServerState` (and is checkpointed with it).
"""

from __future__ import annotations

import tensorflow_federated as tff

from tff_gan.choices import OPTIMIZERS

# Adam's β1 = 0.5 is the usual choice for GANs (Radford et al. 2016); TFF's default is 0.9.
GAN_ADAM_BETA_1 = 0.5


def build_optimizer(name: str, learning_rate: float) -> tff.learning.optimizers.Optimizer:
  """Returns the functional optimizer `name` with `learning_rate`.

  Args:
    name: One of `sgd`, `sgdm` (momentum 0.9), `adam` (β1 = 0.5), `yogi` (β1 = 0.5),
      `adagrad`, `rmsprop`.
    learning_rate: A positive learning rate.
  """
  if learning_rate <= 0:
    raise ValueError(f'learning rate must be positive, got {learning_rate}.')
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
  return builders[name]()
