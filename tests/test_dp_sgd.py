"""Example-level DP-SGD pieces (`tff_gan.core.dp_sgd`) against independent references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from tff_gan.core import dp_sgd, losses, seeds


def small_discriminator(seed=0):
  # Not `tf.keras.utils.set_random_seed`: TF's global seed would stay set for the tests that
  # run after these in the same process, and change their random ops' seeds.
  with seeds.keras_initializers_seeded(seed):
    return tf.keras.Sequential([tf.keras.Input((2,)),
                                tf.keras.layers.Dense(8, activation='relu'),
                                tf.keras.layers.Dense(1)])


def one_at_a_time(discriminator, real, clip):
  """Each example's gradient alone, clipped by numpy, summed: the reference."""
  total = None
  for example in real:
    with tf.GradientTape() as tape:
      value = tf.reduce_sum(losses.NON_SATURATING.real_term(discriminator(example[None])))
    flat = [g.numpy() for g in tape.gradient(value, discriminator.trainable_variables)]
    norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in flat))
    clipped = [g * min(1.0, clip / norm) for g in flat]
    total = clipped if total is None else [t + c for t, c in zip(total, clipped, strict=True)]
  return total


def conv_discriminator():
  """A discriminator with a layer TF Privacy's ghost-norm registry does not know (Conv1D)."""
  return tf.keras.Sequential([
      tf.keras.Input((2,)), tf.keras.layers.Reshape((2, 1)),
      tf.keras.layers.Conv1D(3, 2), tf.keras.layers.Flatten(), tf.keras.layers.Dense(1)])


@pytest.mark.parametrize('make, fast', [(lambda: small_discriminator(), True),
                                        (conv_discriminator, False)])
@pytest.mark.parametrize('clip', [0.05, 1.0, 100.0])  # Binding for all, some, none.
def test_clipped_sum_equals_clipping_one_example_at_a_time(clip, make, fast):
  discriminator = make()
  assert dp_sgd.fast_clipping_applies(discriminator) == fast  # Ghost norms, or the Jacobian.
  real = np.random.default_rng(0).normal(0, 3, (13, 2)).astype(np.float32)
  got = tf.function(lambda x: dp_sgd.clipped_sum(
      discriminator, losses.NON_SATURATING.real_term, x, clip))(real)
  for g, r in zip(got, one_at_a_time(discriminator, real, clip), strict=True):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)


def test_an_empty_poisson_batch_sums_to_zero():
  discriminator = small_discriminator()
  got = tf.function(lambda x: dp_sgd.clipped_sum(
      discriminator, losses.NON_SATURATING.real_term, x, 1.0))(np.zeros((0, 2), np.float32))
  assert all(np.all(g.numpy() == 0) for g in got)


def test_noise_has_standard_deviation_z_times_c():
  variables = [tf.zeros([200, 50]), tf.zeros([1000])]
  noise = dp_sgd.gaussian_noise_like(variables, 1.3 * 0.7, tf.constant([5, 6], tf.int64))
  values = np.concatenate([n.numpy().ravel() for n in noise])
  assert len(values) == 11000
  # The sample std of 11,000 normals is within 4 % of the truth with overwhelming probability.
  assert np.std(values) == pytest.approx(0.91, rel=0.04)
  assert abs(np.mean(values)) < 4 * 0.91 / np.sqrt(len(values))
  assert scipy.stats.kstest(values / 0.91, 'norm').pvalue > 1e-3


def test_poisson_batch_sizes_are_binomial():
  n, batch_size, steps = 400, 40, 3000
  dataset = dp_sgd.poisson_batches(tf.range(n), batch_size=batch_size, steps=steps,
                                   seed=tf.constant([1, 2], tf.int64))
  sizes = np.array([len(batch) for batch, _ in dataset.as_numpy_iterator()])
  q = batch_size / n
  assert len(sizes) == steps
  assert np.mean(sizes) == pytest.approx(n * q, abs=4 * np.sqrt(n * q * (1 - q) / steps))
  assert np.var(sizes) == pytest.approx(n * q * (1 - q), rel=0.1)
  # Each example's inclusion count over all steps is Binomial(steps, q) too.
  counts = np.bincount(np.concatenate([b for b, _ in dataset.as_numpy_iterator()]), minlength=n)
  assert np.mean(counts) == pytest.approx(steps * q, rel=0.02)


def test_the_generated_half_is_neither_clipped_nor_noised():
  # With no noise and a clip that binds nothing, the DP gradient is the plain gradient of the
  # real half summed over the batch / B, plus the plain gradient of the generated half.
  discriminator = small_discriminator(1)
  rng = np.random.default_rng(3)
  real, fake = (rng.normal(0, 1, (10, 2)).astype(np.float32) for _ in range(2))
  gradients, fake_loss = tf.function(lambda r, f: dp_sgd.private_discriminator_gradients(
      r, f, tf.constant([0, 0], tf.int64), discriminator=discriminator,
      loss=losses.NON_SATURATING, clip=1e6, noise_multiplier=0.0, batch_size=10))(real, fake)
  with tf.GradientTape() as tape:
    value = losses.NON_SATURATING.discriminator_loss(discriminator(real), discriminator(fake))
  for g, r in zip(gradients, tape.gradient(value, discriminator.trainable_variables),
                  strict=True):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
  assert float(fake_loss) == pytest.approx(
      float(tf.reduce_mean(tf.nn.softplus(discriminator(fake)))), rel=1e-6)
