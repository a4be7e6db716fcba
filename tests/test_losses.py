"""GAN losses against closed forms."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tff_gan.core import losses


def test_non_saturating_at_zero_logits_is_log_two():
  zeros = tf.zeros([5, 1])
  assert losses.NON_SATURATING.discriminator_loss(zeros, zeros).numpy() == pytest.approx(
      2 * math.log(2), rel=1e-6)
  assert losses.NON_SATURATING.generator_loss(zeros).numpy() == pytest.approx(math.log(2),
                                                                             rel=1e-6)


def test_non_saturating_matches_binary_cross_entropy_of_sigmoid():
  rng = np.random.default_rng(0)
  real, fake = rng.normal(size=(7, 1)), rng.normal(size=(7, 1))

  def sigmoid(x):
    return 1 / (1 + np.exp(-x))

  expected_d = -np.mean(np.log(sigmoid(real))) - np.mean(np.log(1 - sigmoid(fake)))
  expected_g = -np.mean(np.log(sigmoid(fake)))
  got_d = losses.NON_SATURATING.discriminator_loss(tf.constant(real), tf.constant(fake))
  assert got_d.numpy() == pytest.approx(expected_d, rel=1e-6)
  assert losses.NON_SATURATING.generator_loss(tf.constant(fake)).numpy() == pytest.approx(
      expected_g, rel=1e-6)


def test_wasserstein_losses_are_mean_differences():
  real, fake = tf.constant([[1.0], [3.0]]), tf.constant([[-1.0], [0.0]])
  assert losses.WASSERSTEIN_GP.discriminator_loss(real, fake).numpy() == pytest.approx(-2.5)
  assert losses.WASSERSTEIN_GP.generator_loss(fake).numpy() == pytest.approx(0.5)


def test_gradient_penalty_of_linear_critic_is_norm_gap_squared():
  # For D(x) = w·x + b the input gradient is w everywhere: penalty = (‖w‖ − 1)².
  w = np.array([[3.0], [4.0]], np.float32)
  critic = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(1)])
  critic.layers[0].set_weights([w, np.zeros(1, np.float32)])
  real = tf.random.normal([6, 2], seed=1)
  fake = tf.random.normal([6, 2], seed=2)
  penalty = losses.gradient_penalty(critic, real, fake, tf.constant([1, 2], tf.int64))
  assert penalty.numpy() == pytest.approx((5.0 - 1.0) ** 2, rel=1e-5)


def test_unknown_loss_is_refused():
  with pytest.raises(ValueError, match='unknown loss'):
    losses.get_loss('hinge2')
