"""FedSGD against one centralized gradient step derived in numpy."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import linear_gan_models
from test_tf_fns import sigmoid, step_noise

from tff_gan.algorithms import fedsgd, optimizers
from tff_gan.core import seeds

LEARNING_RATE = 0.3


def numpy_gradients(real, noise, weights):
  """Non-saturating GAN gradients of linear G and D, both at `weights`, on one batch."""
  a, c = weights.generator
  w, b = weights.discriminator
  fake = noise @ a + c
  n = len(real)
  g_real = -sigmoid(-(real @ w + b)) / n
  g_fake = sigmoid(fake @ w + b) / n
  grad_w, grad_b = real.T @ g_real + fake.T @ g_fake, g_real.sum(0) + g_fake.sum(0)
  g_fake_for_g = -sigmoid(-(fake @ w + b)) / n  # d/dlogit of softplus(-logit), mean.
  grad_fake = g_fake_for_g @ w.T
  return [noise.T @ grad_fake, grad_fake.sum(0)], [grad_w, grad_b]


@pytest.fixture(scope='module')
def process():
  return fedsgd.build_fedsgd_process(
      linear_gan_models(), server_optimizer=optimizers.build_optimizer('sgd', LEARNING_RATE))


def test_one_client_with_all_data_equals_one_centralized_sgd_step(tff_context, process):
  real = np.random.default_rng(5).normal(loc=1.0, size=(12, 2)).astype(np.float32)
  state = process.initialize()
  new_state, metrics = process.next(state, [tf.data.Dataset.from_tensors(real)])

  round_seed = seeds.round_seed(state.seed, state.round_num)
  noise, _ = step_noise(round_seed, 0, tf.constant(real), 3)
  weights = tf.nest.map_structure(lambda x: np.asarray(x, np.float64), state.weights)
  grad_g, grad_d = numpy_gradients(real.astype(np.float64), noise, weights)
  for got, old, grad in zip(new_state.weights.generator + new_state.weights.discriminator,
                            weights.generator + weights.discriminator, grad_g + grad_d,
                            strict=True):
    np.testing.assert_allclose(got, old - LEARNING_RATE * grad, rtol=1e-5, atol=1e-6)
  assert metrics['num_examples'] == 12
