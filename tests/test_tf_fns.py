"""The pure-TF client and server updates against numpy derivations on linear models."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import linear_gan_models

from tff_gan.algorithms import optimizers
from tff_gan.core import client_work, losses, seeds, tf_fns
from tff_gan.core.state import GanWeights, ServerBroadcast
from tff_gan.run.config import ConfigError, TrainConfig


def sigmoid(x):
  return 1 / (1 + np.exp(-x))


def run_client_update(models, dataset, broadcast, *, learning_rate, loss=losses.NON_SATURATING,
                      proximal_mu=0.0, proximal_generator=True):
  """Runs the FedGAN client update in plain TF (no TFF) with client SGD."""
  generator, discriminator = models.generator_fn(), models.discriminator_fn()
  optimizer = optimizers.build_optimizer('sgd', learning_rate)
  update = tf.function(lambda dataset, b: client_work.fedgan_client_update(
      dataset, b, generator=generator, discriminator=discriminator, loss=loss,
      generator_optimizer=optimizer, discriminator_optimizer=optimizer,
      noise_dim=models.noise_dim, proximal_mu=proximal_mu,
      proximal_generator=proximal_generator))
  return update(dataset, broadcast)


def random_broadcast(rng, noise_dim=3, data_dim=2):
  weights = GanWeights(
      generator=[rng.normal(size=(noise_dim, data_dim)).astype(np.float32),
                 rng.normal(size=(data_dim,)).astype(np.float32)],
      discriminator=[rng.normal(size=(data_dim, 1)).astype(np.float32),
                     rng.normal(size=(1,)).astype(np.float32)],
  )
  return ServerBroadcast(weights=weights, round_seed=np.array([7, 3], np.int64))


def numpy_local_step(real, noise_d, noise_g, weights, learning_rate, wasserstein=False,
                     mu=0.0, anchor=None, proximal_generator=True):
  """One D step, then one G step, with SGD, for linear G and D.

  Non-saturating loss by default; with `wasserstein`, WGAN-GP with λ = 10, whose penalty
  (‖w‖ − 1)² does not depend on the interpolates for a linear critic. With `mu`, FedProx's
  (μ/2)‖θ − θ_anchor‖² adds μ(θ − θ_anchor) to every gradient (to D's alone without
  `proximal_generator`).
  """
  a, c = weights.generator
  w, b = weights.discriminator
  fake = noise_d @ a + c
  real_logits, fake_logits = real @ w + b, fake @ w + b
  n_real, n_fake = len(real), len(fake)
  if wasserstein:  # L_D = mean(D(fake)) - mean(D(real)) + 10 (|w| - 1)^2.
    g_real = -np.ones_like(real_logits) / n_real
    g_fake = np.ones_like(fake_logits) / n_fake
  else:  # d/dl softplus(-l) = -sigmoid(-l); d/dl softplus(l) = sigmoid(l).
    g_real = -sigmoid(-real_logits) / n_real
    g_fake = sigmoid(fake_logits) / n_fake
  grad_w = real.T @ g_real + fake.T @ g_fake
  if wasserstein:
    norm = np.linalg.norm(w)
    grad_w = grad_w + 10 * 2 * (norm - 1) * w / norm
  grad_b = g_real.sum(0) + g_fake.sum(0)
  if mu:
    grad_w = grad_w + mu * (w - anchor.discriminator[0])
    grad_b = grad_b + mu * (b - anchor.discriminator[1])
  w, b = w - learning_rate * grad_w, b - learning_rate * grad_b
  fake = noise_g @ a + c
  if wasserstein:  # L_G = -mean(D(fake)).
    g_fake_logits = -np.ones((len(fake), 1)) / len(fake)
  else:
    g_fake_logits = -sigmoid(-(fake @ w + b)) / len(fake)
  grad_fake = g_fake_logits @ w.T
  grad_a, grad_c = noise_g.T @ grad_fake, grad_fake.sum(0)
  if mu and proximal_generator:
    grad_a = grad_a + mu * (a - anchor.generator[0])
    grad_c = grad_c + mu * (c - anchor.generator[1])
  a, c = a - learning_rate * grad_a, c - learning_rate * grad_c
  return GanWeights(generator=[a, c], discriminator=[w, b])


def step_noise(round_seed, step, batch, noise_dim):
  step_seeds = tf.random.experimental.stateless_split(
      seeds.batch_seed(round_seed, step, batch), 3)
  return (tf_fns.sample_noise(len(batch), noise_dim, step_seeds[0]).numpy().astype(np.float64),
          tf_fns.sample_noise(len(batch), noise_dim, step_seeds[1]).numpy().astype(np.float64))


@pytest.mark.parametrize('loss, mu, proximal_generator', [(losses.NON_SATURATING, 0.0, True),
                                                          (losses.WASSERSTEIN_GP, 0.0, True),
                                                          (losses.NON_SATURATING, 2.0, True),
                                                          (losses.NON_SATURATING, 2.0, False)])
def test_client_update_matches_numpy_sgd_on_linear_gan(loss, mu, proximal_generator):
  rng = np.random.default_rng(0)
  models = linear_gan_models()
  broadcast = random_broadcast(rng)
  batches = rng.normal(size=(3, 4, 2)).astype(np.float32)  # 3 local steps of batch 4.
  learning_rate = 0.02

  output = run_client_update(models, tf.data.Dataset.from_tensor_slices(batches), broadcast,
                             learning_rate=learning_rate, loss=loss, proximal_mu=mu,
                             proximal_generator=proximal_generator)

  expected = tf.nest.map_structure(lambda x: x.astype(np.float64), broadcast.weights)
  anchor = expected
  for step, batch in enumerate(batches):
    noise_d, noise_g = step_noise(broadcast.round_seed, step, tf.constant(batch), 3)
    expected = numpy_local_step(batch.astype(np.float64), noise_d, noise_g, expected,
                                learning_rate, wasserstein=loss is losses.WASSERSTEIN_GP,
                                mu=mu, anchor=anchor, proximal_generator=proximal_generator)
  expected_delta = tf.nest.map_structure(lambda e, w: e - w, expected, broadcast.weights)
  for got, want in zip(tf.nest.flatten(output.delta), tf.nest.flatten(expected_delta), strict=True):
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
  assert np.abs(np.concatenate([d.numpy().ravel() for d in tf.nest.flatten(output.delta)])
                ).max() > 1e-3
  assert output.num_examples.numpy() == 12.0


def test_client_update_on_empty_dataset_returns_zero_delta_and_weight():
  rng = np.random.default_rng(1)
  broadcast = random_broadcast(rng)
  empty = tf.data.Dataset.from_tensor_slices(np.zeros((0, 4, 2), np.float32))
  output = run_client_update(linear_gan_models(), empty, broadcast, learning_rate=0.1)
  assert output.num_examples.numpy() == 0.0
  for delta in tf.nest.flatten(output.delta):
    np.testing.assert_array_equal(delta.numpy(), 0.0)


def test_clients_with_different_data_draw_different_noise():
  seed = tf.constant([1, 2], tf.int64)
  batch_a, batch_b = tf.zeros([4, 2]), tf.ones([4, 2])
  assert not np.array_equal(seeds.batch_seed(seed, 0, batch_a).numpy(),
                            seeds.batch_seed(seed, 0, batch_b).numpy())
  np.testing.assert_array_equal(seeds.batch_seed(seed, 0, batch_a).numpy(),
                                seeds.batch_seed(seed, 0, tf.zeros([4, 2])).numpy())


@pytest.mark.parametrize('learning_rate', [1.0, 0.5])
def test_server_sgd_moves_weights_by_learning_rate_times_delta(learning_rate):
  optimizer = optimizers.build_optimizer('sgd', learning_rate)
  weights = (tf.constant([1.0, 2.0]), tf.constant([[3.0]]))
  delta = (tf.constant([0.5, -1.0]), tf.constant([[2.0]]))
  state = tf_fns.initialize_optimizer(optimizer, [tf.Variable(w) for w in weights])
  _, new_weights = tf_fns.apply_delta(optimizer, state, weights, delta)
  for new, old, d in zip(new_weights, weights, delta, strict=True):
    np.testing.assert_allclose(new.numpy(), old.numpy() + learning_rate * d.numpy())


def test_proximal_term_shrinks_the_local_delta():
  rng = np.random.default_rng(3)
  broadcast = random_broadcast(rng)
  dataset = tf.data.Dataset.from_tensor_slices(rng.normal(size=(20, 4, 2)).astype(np.float32))

  def delta_norm(mu):
    output = run_client_update(linear_gan_models(), dataset, broadcast, learning_rate=0.05,
                               proximal_mu=mu)
    return np.sqrt(sum(np.sum(d.numpy() ** 2) for d in tf.nest.flatten(output.delta)))

  norms = [delta_norm(mu) for mu in (0.0, 1.0, 10.0)]
  assert norms[0] > norms[1] > norms[2] > 0


def numpy_adam(weights, deltas, lr, beta_1, beta_2, eps):
  """Adam (Kingma & Ba 2015, Algorithm 1 with the bias correction folded into the step size)
  on pseudo-gradients g = −Δ; `lr` a number or one learning rate per step."""
  m, v = np.zeros_like(weights), np.zeros_like(weights)
  lrs = np.broadcast_to(lr, len(deltas))
  for t, delta in enumerate(deltas, start=1):
    g = -delta
    m = beta_1 * m + (1 - beta_1) * g
    v = beta_2 * v + (1 - beta_2) * g * g
    step = lrs[t - 1] * np.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
    weights = weights - step * m / (np.sqrt(v) + eps)
  return weights, m, v


def numpy_yogi(weights, deltas, lr, beta_1, beta_2, eps, initial):
  """Yogi (Zaheer et al. 2018): v ← v − (1 − β2)·sign(v − g²)·g², Adam-style step, g = −Δ."""
  m, v = np.zeros_like(weights), np.full_like(weights, initial)
  for t, delta in enumerate(deltas, start=1):
    g = -delta
    m = beta_1 * m + (1 - beta_1) * g
    v = v - (1 - beta_2) * np.sign(v - g * g) * g * g
    step = lr * np.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
    weights = weights - step * m / (np.sqrt(v) + eps)
  return weights, m, v


def numpy_adagrad(weights, deltas, lr, initial, eps):
  """Adagrad (Duchi et al. 2011): s ← s + g², w ← w − lr·g/√(s + ε), g = −Δ."""
  s = np.full_like(weights, initial)
  for delta in deltas:
    g = -delta
    s = s + g * g
    weights = weights - lr * g / np.sqrt(s + eps)
  return weights, s


@pytest.mark.parametrize('name', ['adam', 'yogi', 'adagrad'])
def test_server_optimizer_matches_numpy_after_two_rounds(name):
  rng = np.random.default_rng(11)
  weights = rng.normal(size=5)
  deltas = [rng.normal(size=5), rng.normal(size=5)]
  optimizer = optimizers.build_optimizer(name, 0.1)
  state = tf_fns.initialize_optimizer(optimizer, [tf.Variable(weights, dtype=tf.float64)])
  current = (tf.constant(weights),)
  for delta in deltas:
    state, current = tf_fns.apply_delta(optimizer, state, current, (tf.constant(delta),))
  # TFF keeps the hyperparameters as float32 in its state; the reference uses the same values.
  f32 = lambda x: float(np.float32(x))  # noqa: E731
  if name in ('adam', 'yogi'):
    if name == 'adam':
      expected, m, v = numpy_adam(weights, deltas, f32(0.1), f32(optimizers.GAN_ADAM_BETA_1),
                                  f32(0.999), f32(1e-7))
    else:
      expected, m, v = numpy_yogi(weights, deltas, f32(0.1), f32(optimizers.GAN_ADAM_BETA_1),
                                  f32(0.999), f32(1e-3), f32(1e-6))
    np.testing.assert_allclose(state['accumulator'][0].numpy(), m, rtol=1e-9)
    np.testing.assert_allclose(state['preconditioner'][0].numpy(), v, rtol=1e-9)
  else:
    expected, s = numpy_adagrad(weights, deltas, f32(0.1), f32(0.1), f32(1e-7))
    np.testing.assert_allclose(state['preconditioner'][0].numpy(), s, rtol=1e-9)
  # TFF computes Adam's and Yogi's bias-corrected step size in float32, where 1 − β2^t
  # (≈ 1e-3 here) keeps only about 4 significant digits; the states above agree to 1e-9.
  np.testing.assert_allclose(current[0].numpy(), expected, rtol=1e-4)


@pytest.mark.parametrize('name', ['sgd', 'adam'])
def test_a_server_learning_rate_half_life_halves_the_step_every_half_life(name):
  rng = np.random.default_rng(12)
  weights = rng.normal(size=5)
  deltas = [rng.normal(size=5) for _ in range(4)]
  half_life = 2.0
  optimizer = optimizers.build_optimizer(name, 0.1, half_life=half_life)
  state = tf_fns.initialize_optimizer(optimizer, [tf.Variable(weights, dtype=tf.float64)])
  current = (tf.constant(weights),)
  for delta in deltas:
    state, current = tf_fns.apply_delta(optimizer, state, current, (tf.constant(delta),))
  # Step t (from 0) at 0.1·2^(−t/2): 0.1, 0.0707, 0.05, 0.0354; float32 as TFF keeps them.
  lrs = np.float32(0.1) * np.float32(0.5) ** (np.arange(4, dtype=np.float32) / half_life)
  if name == 'sgd':
    expected = weights + sum(lr * delta for lr, delta in zip(lrs, deltas, strict=True))
  else:
    f32 = lambda x: float(np.float32(x))  # noqa: E731
    expected, _, _ = numpy_adam(weights, deltas, lrs, f32(optimizers.GAN_ADAM_BETA_1),
                                f32(0.999), f32(1e-7))
  assert int(state['round_num']) == 4
  np.testing.assert_allclose(current[0].numpy(), expected, rtol=1e-4)


def test_a_negative_or_infinite_half_life_is_refused():
  for half_life in (-1.0, float('inf'), float('nan')):
    with pytest.raises(ValueError, match='half_life must be a number of steps >= 0'):
      optimizers.build_optimizer('adam', 0.1, half_life=half_life)
    with pytest.raises(ConfigError, match='--server_lr_half_life must be a'):
      TrainConfig(server_lr_half_life=half_life).validate()


@pytest.mark.parametrize('weights_type, state_type', [(list, tuple), (tuple, list)])
def test_server_sgdm_matches_numpy_whatever_the_sequence_types(weights_type, state_type):
  """TFF may return the weights as a list and the optimizer state as tuples (or the reverse);
  momentum SGD insists they match, so `apply_delta` must reconcile them."""
  rng = np.random.default_rng(5)
  f32 = lambda n: rng.normal(size=n).astype(np.float32)  # noqa: E731
  weights = [f32(3), f32(2)]
  deltas = [[f32(3), f32(2)] for _ in range(2)]
  optimizer = optimizers.build_optimizer('sgdm', 0.1)
  state = tf_fns.initialize_optimizer(optimizer, [tf.Variable(w) for w in weights])
  state = {k: state_type(v) if isinstance(v, list | tuple) else v for k, v in state.items()}
  current = weights_type(tf.constant(w) for w in weights)
  for delta in deltas:
    state, current = tf_fns.apply_delta(optimizer, state, current,
                                        weights_type(tf.constant(d) for d in delta))
    current = weights_type(current)
  for i, start in enumerate(weights):
    momentum, expected = np.zeros_like(start), start.copy()
    for delta in deltas:  # m <- 0.9 m + g, w <- w - lr m, with g = -delta.
      momentum = np.float32(0.9) * momentum - delta[i]
      expected = expected - np.float32(0.1) * momentum
    np.testing.assert_allclose(current[i].numpy(), expected, rtol=1e-6)
