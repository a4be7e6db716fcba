"""The warm start of client-resident discriminators (`--warm_start_steps`, GS-WGAN's
pretraining): each discriminator learns from its own shard alone, the discriminators start
apart, and a pretrained critic tells its data from the initial generator's samples. (A warm
started run resumes exactly: `test_gs_wgan`.)"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_mlp_gan_models
from test_multi_d import BATCH

from tff_gan.algorithms import multi_d, optimizers
from tff_gan.core import feedback, warm_start
from tff_gan.core.losses import NON_SATURATING, WASSERSTEIN_GP
from tff_gan.run.config import ConfigError, TrainConfig

SHARDS = 3


def process(shards=SHARDS, steps=6, loss=WASSERSTEIN_GP):
  sanitizer = feedback.GsSanitizer(clip=1.0, noise_multiplier=0.0, noise_key=(1, 2),
                                   shards=shards)
  return multi_d.build_multi_d_process(
      tiny_mlp_gan_models(), client_optimizer=optimizers.build_optimizer('adam', 1e-2),
      generator_steps=1, batch_size=BATCH, loss=loss, sanitizer=sanitizer,
      warm_start_steps=steps)


def examples(seed=0, n=48):
  rng = np.random.default_rng(seed)
  return (np.array([0.7, -0.3]) + 0.05 * rng.standard_normal((n, 2))).astype(np.float32)


def shard(example, shards=SHARDS):
  return int(feedback.shard_of(tf.constant(example), shards))


@pytest.fixture(scope='module')
def built():
  return process()


def pretrained(built, data):
  state = built.initialize()
  (client_state,) = built.warm_start(state, [tf.data.Dataset.from_tensor_slices(data).batch(16)],
                                     [built.initial_client_state(state)])
  return client_state


def test_a_changed_example_changes_its_shards_discriminator_and_no_other(tff_context, built):
  data = examples()
  before = pretrained(built, data)
  changed = data.copy()
  target = shard(data[5])
  rng = np.random.default_rng(1)
  while True:  # A different example that falls in the same shard: a replace-one neighbour.
    candidate = (data[5] + rng.normal(0, 0.2, 2)).astype(np.float32)
    if shard(candidate) == target:
      break
  changed[5] = candidate
  after = pretrained(built, changed)
  for k in range(SHARDS):
    same = all(np.array_equal(b[k], a[k]) for b, a in zip(before.weights, after.weights,
                                                            strict=True))
    assert same == (k != target), (k, target)


def test_discriminators_start_from_different_draws_of_the_initial_weights():
  weights = [tf.constant(np.arange(12, dtype=np.float32).reshape(3, 4)), tf.zeros([4])]
  one = warm_start.redrawn(weights, tf.constant([1, 2], tf.int64))
  other = warm_start.redrawn(weights, tf.constant([1, 3], tf.int64))
  for drawn in (one, other):  # The same entries (an i.i.d. draw's law), elsewhere.
    assert sorted(drawn[0].numpy().ravel()) == list(range(12))
    assert not np.array_equal(drawn[0], weights[0])
    np.testing.assert_array_equal(drawn[1], np.zeros(4))
  assert not np.array_equal(one[0], other[0])


def test_pretrained_discriminators_differ_and_keep_their_optimizer_state(tff_context, built):
  state = built.initialize()
  initial = built.initial_client_state(state)
  client_state = pretrained(built, examples())
  first = client_state.weights[0]
  assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])
  np.testing.assert_array_equal(initial.weights[0][0], initial.weights[0][1])  # Copies before.
  # Adam counted each discriminator's 6 steps.
  assert np.asarray(client_state.optimizer_state['step']).tolist() == [6] * SHARDS


@pytest.mark.parametrize('loss', [NON_SATURATING, WASSERSTEIN_GP])
def test_a_pretrained_critic_scores_its_data_above_the_initial_generators_samples(
    tff_context, loss):
  built = process(shards=1, steps=60, loss=loss)
  models = tiny_mlp_gan_models()
  state = built.initialize()
  generator, discriminator = models.generator_fn(), models.discriminator_fn()
  generator.set_weights(state.weights.generator)
  data = examples(n=256)
  fake = generator(tf.random.stateless_normal([256, models.noise_dim], [4, 5])).numpy()

  def margin(weights):
    discriminator.set_weights(weights)
    return float(np.mean(discriminator(data)) - np.mean(discriminator(fake)))

  assert margin(pretrained(built, data).weights) > margin(state.weights.discriminator) + 0.5


def test_warm_start_needs_a_client_resident_scheme():
  with pytest.raises(ConfigError, match='--warm_start_steps pretrains the discriminators'):
    TrainConfig(warm_start_steps=5).validate()
  with pytest.raises(ConfigError, match='must be >= 0'):
    TrainConfig(scheme='multi_d', warm_start_steps=-1).validate()
  assert TrainConfig(scheme='multi_d', warm_start_steps=5).validate().warm_start_steps == 5

