"""Example-level DP (`--dp_unit=example`): accounting, post-processing, the run end to end."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
import tensorflow as tf
from conftest import linear_gan_models
from test_train_binary import TINY, run_whole_and_resumed

from tff_gan.algorithms import optimizers
from tff_gan.clients import populations
from tff_gan.core import client_work, dp_sgd, losses
from tff_gan.core.state import GanWeights, ServerBroadcast
from tff_gan.privacy import accounting
from tff_gan.run import ledgers
from tff_gan.run.config import ConfigError, TrainConfig


@pytest.mark.parametrize('num_examples, batch_size, z, steps', [
    (2000, 64, 1.1, 500), (300, 128, 0.8, 40), (50, 64, 2.0, 10)])  # The last: rate 1.
def test_example_epsilon_equals_dp_accounting(num_examples, batch_size, z, steps):
  reference = dp_accounting.rdp.RdpAccountant()  # Add-or-remove-one, its default.
  reference.compose(dp_accounting.PoissonSampledDpEvent(
      min(1.0, batch_size / num_examples), dp_accounting.GaussianDpEvent(z)), steps)
  got = accounting.example_epsilon(num_examples, batch_size, z, steps, 1e-5)
  assert got == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)


def test_each_client_spends_its_own_steps_and_an_unsampled_one_nothing():
  config = TrainConfig(dp_unit='example', dp_noise_multiplier=1.0, batch_size=64,
                       local_epochs=2, local_steps=5, num_clients=4, clients_per_round=2)
  sizes = [100, 200, 1000, 50]
  # Client 3 is never sampled; client 0 every round; 1 and 2 alternately.
  ledger = ledgers.ExampleLevelLedger(config, sizes, lambda r: [0, 1 + r % 2])
  np.testing.assert_array_equal(ledger.steps_per_round, [4, 5, 5, 2])  # ⌈2n/64⌉, capped at 5.
  epsilons = ledger.client_epsilons(7)
  np.testing.assert_array_equal(ledger.rounds_sampled(7), [7, 3, 4, 0])
  assert epsilons[3] == 0
  for k, (n, rounds) in enumerate([(100, 7), (200, 3), (1000, 4)]):
    expected = accounting.example_epsilon(n, 64, 1.0, rounds * ledger.steps_per_round[k], 1e-5)
    assert epsilons[k] == pytest.approx(expected, rel=1e-9)
  # A ledger that starts at round 7 (a resumed run) reports the same.
  fresh = ledgers.ExampleLevelLedger(config, sizes, lambda r: [0, 1 + r % 2])
  np.testing.assert_allclose(fresh.client_epsilons(7), epsilons)
  table = ledger.client_table(7).splitlines()
  assert table[0] == 'client,examples,rounds_sampled,steps,epsilon'
  assert table[4] == '3,50,0,0,0'


def dp_client_update(examples, broadcast, *, example_dp, discriminator_learning_rate):
  models = linear_gan_models()
  generator, discriminator = models.generator_fn(), models.discriminator_fn()
  work = populations.LocalWork(batch_size=8, local_epochs=2, poisson=example_dp is not None)
  dataset = populations.client_dataset(examples, work, seed=11)
  update = tf.function(lambda dataset, b: client_work.fedgan_client_update(
      dataset, b, generator=generator, discriminator=discriminator,
      loss=losses.NON_SATURATING,
      generator_optimizer=optimizers.build_optimizer('sgd', 0.1),
      discriminator_optimizer=optimizers.build_optimizer('sgd', discriminator_learning_rate),
      noise_dim=models.noise_dim, example_dp=example_dp))
  return update(dataset, broadcast)


@pytest.mark.parametrize('example_dp', [dp_sgd.ExampleDp(clip=1.0, noise_multiplier=1.0,
                                                         batch_size=8), None])
def test_generator_update_reads_real_data_only_through_the_discriminator(example_dp):
  rng = np.random.default_rng(0)
  weights = GanWeights(generator=[rng.normal(size=(3, 2)).astype(np.float32),
                                  np.zeros(2, np.float32)],
                       discriminator=[rng.normal(size=(2, 1)).astype(np.float32),
                                      np.full(1, 0.5, np.float32)])
  broadcast = ServerBroadcast(weights=weights, round_seed=np.array([7, 3], np.int64))
  examples = rng.normal(size=(40, 2)).astype(np.float32)
  changed = examples.copy()
  changed[17] = [50.0, -50.0]  # One real example, very different.
  # D frozen (a learning rate whose steps vanish in float32): what G learns can differ only
  # through the randomness G's steps draw.
  first, second = (dp_client_update(x, broadcast, example_dp=example_dp,
                                    discriminator_learning_rate=1e-30)
                   for x in (examples, changed))
  for d1, d2 in zip(first.delta.discriminator, second.delta.discriminator, strict=True):
    np.testing.assert_array_equal(d1, d2)
  same_generator = all(np.array_equal(g1, g2) for g1, g2 in zip(
      first.delta.generator, second.delta.generator, strict=True))
  # Under example DP every draw descends from the step seed, never from the data: the
  # generator's update is post-processing of the DP discriminator. Without it, the noise
  # seeds hash the batch, so a changed example changes G's update: the test can tell.
  assert same_generator == (example_dp is not None)
  if example_dp is not None:
    assert float(first.num_examples) == 8 * 10  # Expected batches: ⌈2·40/8⌉ steps × B.


def test_poisson_step_seeds_do_not_depend_on_the_data():
  seed = tf.constant([3, 4], tf.int64)
  a, b = (dp_sgd.poisson_batches(x, batch_size=5, steps=6, seed=seed)
          for x in (tf.range(50), 100 + tf.range(50)))
  for (batch_a, seed_a), (batch_b, seed_b) in zip(a, b, strict=True):
    np.testing.assert_array_equal(seed_a, seed_b)
    np.testing.assert_array_equal(batch_a + 100, batch_b)  # The same examples drawn.


@pytest.mark.parametrize('settings, message', [
    (dict(dp_unit='example'), 'needs --dp_noise_multiplier'),
    (dict(dp_unit='example', dp_noise_multiplier=1.0, scheme='fedsgd'), 'not --scheme=fedsgd'),
    (dict(dp_unit='example', dp_noise_multiplier=1.0, loss='wasserstein_gp'),
     '--loss=non_saturating'),
    (dict(dp_unit='example', dp_noise_multiplier=1.0, mode='async'), 'drop --mode=async'),
    (dict(dp_noise='reproducible'), 'no effect without --dp_noise_multiplier'),
    (dict(dp_noise_multiplier=1.0, dp_noise='reproducible', dp_adaptive_clip_quantile=0.5),
     'cannot seed adaptive clipping'),
])
def test_settings_example_dp_cannot_serve_are_refused(settings, message):
  with pytest.raises(ConfigError, match=message):
    TrainConfig(**settings).validate()


EXAMPLE_DP = ['--dp_unit=example', '--dp_noise_multiplier=1.0', '--examples_per_client=64',
              '--batch_size=16', '--checkpoint_every=1']


def test_train_reports_each_clients_epsilon_and_resumes_exactly(tmp_path):
  flags = [f for f in TINY if not f.startswith(('--rounds', '--batch_size', '--clients_per'))]
  flags += [*EXAMPLE_DP, '--clients_per_round=4']
  # With the server Adam and its learning-rate schedule of the README's cross-silo setting:
  # the schedule's step count is server state, checkpointed with the rest.
  flags += ['--client_optimizer=sgd', '--server_optimizer=adam', '--server_learning_rate=0.01',
            '--server_lr_half_life=1']
  rows = run_whole_and_resumed(tmp_path, *flags, '--dp_noise=reproducible')
  assert rows('resumed') == rows('whole')
  table = (tmp_path / 'whole' / 'client_epsilon.csv').read_text().splitlines()
  epsilons = [float(line.split(',')[-1]) for line in table[1:]]
  assert max(epsilons) == pytest.approx(float(rows('whole')[-1]['epsilon']), rel=1e-5)
  # Every client holds 64 examples, is sampled every round and takes min(⌈64/16⌉, 2) steps.
  expected = accounting.example_epsilon(64, 16, 1.0, 3 * min(math.ceil(64 / 16), 2), 1e-5)
  assert all(e == pytest.approx(expected, rel=1e-5) for e in epsilons)


def test_a_clients_draws_descend_from_the_noise_key():
  # The Poisson masks and every step seed are keyed: the same client, round and data give
  # the same batches under one key and others under another; without a key (tests only)
  # they follow the round seed alone.
  examples = np.arange(64, dtype=np.float32)[:, None]

  def draws(noise_key):
    work = populations.LocalWork(batch_size=8, poisson=True, noise_key=noise_key)
    return [(batch.tolist(), seed.tolist()) for batch, seed in
            populations.client_dataset(examples, work, seed=5).as_numpy_iterator()]

  assert draws((1, 2)) == draws((1, 2))
  assert draws((1, 2)) != draws((1, 3)) != draws(None)
