"""GAN losses on discriminator outputs (pure TensorFlow, no TFF).

Every loss takes the discriminator's logits, never the models, so the same functions serve
client-side and server-side training. The only term that needs the discriminator itself, the
WGAN-GP gradient penalty, is a separate function taking a callable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import tensorflow as tf

from tff_gan import choices


@tf.autograph.experimental.do_not_convert
def _non_saturating_real(real_logits):
  return tf.nn.softplus(-real_logits)  # -log D(x), D = sigmoid(logits).


@tf.autograph.experimental.do_not_convert
def _non_saturating_fake(fake_logits):
  return tf.nn.softplus(fake_logits)  # -log(1 - D(G(z))).


@tf.autograph.experimental.do_not_convert
def _non_saturating_generator_loss(fake_logits):
  # -log D(G(z)) (Goodfellow et al. 2014, the non-saturating form).
  return tf.reduce_mean(tf.nn.softplus(-fake_logits))


@tf.autograph.experimental.do_not_convert
def _wasserstein_real(real_logits):
  return -real_logits


@tf.autograph.experimental.do_not_convert
def _wasserstein_fake(fake_logits):
  return fake_logits


@tf.autograph.experimental.do_not_convert
def _wasserstein_generator_loss(fake_logits):
  return -tf.reduce_mean(fake_logits)


@dataclasses.dataclass(frozen=True)
class GanLoss:
  """A pair of GAN losses on discriminator logits.

  The discriminator's loss is a mean over real examples plus a mean over generated ones;
  its two per-example terms are kept apart so that example-level DP (`core.dp_sgd`) can clip
  each real example's gradient and leave the generated side, which holds no private data,
  as it is.

  Attributes:
    name: The name used on the command line.
    real_term: `real_logits [B] -> [B]`, each real example's part of D's loss.
    fake_term: `fake_logits [B] -> [B]`, each generated example's part of D's loss.
    generator_loss: `fake_logits -> scalar`, minimized by G.
    gradient_penalty_weight: Weight λ of the WGAN-GP penalty added to the discriminator
      loss (0 disables it).
  """

  name: str
  real_term: Callable[[tf.Tensor], tf.Tensor]
  fake_term: Callable[[tf.Tensor], tf.Tensor]
  generator_loss: Callable[[tf.Tensor], tf.Tensor]
  gradient_penalty_weight: float = 0.0

  @tf.autograph.experimental.do_not_convert
  def discriminator_loss(self, real_logits, fake_logits):
    """`(real_logits, fake_logits) -> scalar`, minimized by D (without the penalty)."""
    return (tf.reduce_mean(self.real_term(real_logits))
            + tf.reduce_mean(self.fake_term(fake_logits)))


NON_SATURATING = GanLoss('non_saturating', _non_saturating_real, _non_saturating_fake,
                         _non_saturating_generator_loss)
WASSERSTEIN_GP = GanLoss('wasserstein_gp', _wasserstein_real, _wasserstein_fake,
                         _wasserstein_generator_loss, gradient_penalty_weight=10.0)

LOSSES = {loss.name: loss for loss in (NON_SATURATING, WASSERSTEIN_GP)}


def get_loss(name: str) -> GanLoss:
  """Returns the `GanLoss` called `name`."""
  if name not in choices.LOSSES:
    raise ValueError(f"unknown loss '{name}'; choose one of: {', '.join(choices.LOSSES)}")
  return LOSSES[name]


@tf.autograph.experimental.do_not_convert
def gradient_penalty(discriminator, real, fake, seed):
  """WGAN-GP penalty E[(‖∇_x̂ D(x̂)‖₂ − 1)²] on random interpolates (Gulrajani et al. 2017).

  Args:
    discriminator: A callable mapping a batch of examples to logits.
    real: A batch of real examples.
    fake: A batch of generated examples, the same shape as `real`.
    seed: A stateless-RNG seed, shape `[2]`, for the interpolation coefficients.

  Returns:
    The scalar penalty.
  """
  batch_size = tf.shape(real)[0]
  coefficient_shape = tf.concat([[batch_size], tf.ones([tf.rank(real) - 1], tf.int32)], 0)
  alpha = tf.random.stateless_uniform(coefficient_shape, seed=seed)
  interpolates = real + alpha * (fake - real)
  with tf.GradientTape() as tape:
    tape.watch(interpolates)
    logits = discriminator(interpolates, training=True)
  gradients = tape.gradient(logits, interpolates)
  flat = tf.reshape(gradients, [batch_size, -1])
  norms = tf.sqrt(tf.reduce_sum(tf.square(flat), axis=1) + 1e-12)
  return tf.reduce_mean(tf.square(norms - 1.0))
