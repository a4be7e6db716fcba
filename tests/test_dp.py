"""DP-FedAvg-GAN and the DP aggregator: numpy references, clipping, ε end to end."""

import csv
import functools

import dp_accounting
import numpy as np
import pytest
import tensorflow as tf
from conftest import as_numpy, linear_gan_models
from test_fedgan import CLIENT_SIZES, LEARNING_RATE, client_arrays, client_datasets
from test_tf_fns import random_broadcast, run_client_update
from test_train_binary import run_train

from tff_gan.algorithms import aggregators, dp_fedavg_gan, fedgan, optimizers
from tff_gan.clients import sampling
from tff_gan.core import client_work, losses, seeds, tf_fns
from tff_gan.core.state import GanWeights, ServerBroadcast

GENERATOR_STEPS = 3
GENERATOR_BATCH = 4


def fedgan_with(aggregator):
  return fedgan.build_fedgan_process(
      linear_gan_models(),
      client_optimizer=optimizers.build_optimizer('sgd', LEARNING_RATE),
      server_optimizer=optimizers.build_optimizer('sgd', 1.0),
      aggregator=aggregator,
      release_client_metrics=False,
  )


def plain_fedgan_deltas(state, datasets):
  broadcast = ServerBroadcast(weights=state.weights,
                              round_seed=seeds.round_seed(state.seed, state.round_num))
  return [as_numpy(run_client_update(linear_gan_models(), ds, broadcast,
                                     learning_rate=LEARNING_RATE).delta) for ds in datasets]


def global_norm(structure):
  return float(np.sqrt(sum(np.sum(np.square(x)) for x in tf.nest.flatten(structure))))


def assert_one_round_is_the_unweighted_mean(process):
  """Runs one round and checks it against the numpy mean of the plain-TF client deltas.

  Returns:
    The round's metrics.
  """
  arrays = client_arrays()
  state = process.initialize()
  deltas = plain_fedgan_deltas(state, client_datasets(arrays))
  expected = tf.nest.map_structure(lambda w, *d: w + np.mean(d, axis=0),
                                   as_numpy(state.weights), *deltas)
  new_state, metrics = process.next(state, client_datasets(arrays))
  for got, want in zip(tf.nest.flatten(as_numpy(new_state.weights)),
                       tf.nest.flatten(expected), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  return metrics


def test_dp_aggregator_without_noise_or_clipping_is_the_unweighted_mean(tff_context):
  metrics = assert_one_round_is_the_unweighted_mean(fedgan_with(aggregators.dp_aggregator(
      noise_multiplier=0.0, clients_per_round=len(CLIENT_SIZES), clip=1e9, noise_key=(1, 2))))
  assert 'client' not in metrics and 'num_examples' not in metrics


def test_a_huge_client_update_is_clipped_to_the_clip_norm(tff_context):
  clip = 0.05
  process = fedgan_with(aggregators.dp_aggregator(noise_multiplier=0.0, clients_per_round=1,
                                                  clip=clip, noise_key=(1, 2)))
  huge = [np.full((8, 2), 1e3, np.float32)]  # Far from anything G makes: a large update.
  state = process.initialize()
  unclipped = plain_fedgan_deltas(state, client_datasets(huge))[0]
  assert global_norm(unclipped) > 10 * clip
  new_state, _ = process.next(state, client_datasets(huge))
  applied = tf.nest.map_structure(lambda new, old: new - old, as_numpy(new_state.weights),
                                  as_numpy(state.weights))
  assert global_norm(applied) == pytest.approx(clip, rel=1e-4)
  # Clipping scales the whole (G, D) update as one record: the direction is kept.
  scale = clip / global_norm(unclipped)
  for got, want in zip(tf.nest.flatten(applied), tf.nest.flatten(unclipped), strict=True):
    np.testing.assert_allclose(got, scale * want, rtol=1e-3, atol=1e-7)


def build_dp_fedavg_gan(aggregator=None):
  return dp_fedavg_gan.build_dp_fedavg_gan_process(
      linear_gan_models(),
      client_optimizer=optimizers.build_optimizer('sgd', LEARNING_RATE),
      server_optimizer=optimizers.build_optimizer('sgd', 1.0),
      generator_optimizer=optimizers.build_optimizer('adam', 1e-2),
      server_generator_steps=GENERATOR_STEPS,
      server_generator_batch_size=GENERATOR_BATCH,
      aggregator=aggregator,
      release_client_metrics=aggregator is None,
  )


@pytest.fixture(scope='module')
def dp_fedavg_gan_process():
  return build_dp_fedavg_gan()


def test_dp_fedavg_gan_round_matches_plain_tf_reference(tff_context, dp_fedavg_gan_process):
  arrays = client_arrays()
  state = dp_fedavg_gan_process.initialize()
  broadcast = ServerBroadcast(weights=state.weights,
                              round_seed=seeds.round_seed(state.seed, state.round_num))
  optimizer = optimizers.build_optimizer('sgd', LEARNING_RATE)
  deltas, weights = [], []
  for dataset in client_datasets(arrays):
    models = linear_gan_models()
    generator, discriminator = models.generator_fn(), models.discriminator_fn()
    output = tf.function(functools.partial(
        client_work.discriminator_client_update, generator=generator, discriminator=discriminator,
        loss=losses.NON_SATURATING, discriminator_optimizer=optimizer,
        noise_dim=models.noise_dim))(dataset, broadcast)
    deltas.append(as_numpy(output.delta))
    weights.append(float(output.num_examples))
  assert weights == list(CLIENT_SIZES)
  new_discriminator = [w + sum(n * d[i] for n, d in zip(weights, deltas, strict=True)) /
                       sum(weights) for i, w in enumerate(state.weights.discriminator)]
  models = linear_gan_models()
  expected_generator, _, expected_loss = tf.function(functools.partial(
      tf_fns.train_generator, generator=models.generator_fn(),
      discriminator=models.discriminator_fn(), loss=losses.NON_SATURATING,
      optimizer=optimizers.build_optimizer('adam', 1e-2), noise_dim=models.noise_dim,
      num_steps=GENERATOR_STEPS, batch_size=GENERATOR_BATCH))(
          GanWeights(state.weights.generator, new_discriminator),
          state.generator_optimizer_state, tf_fns.server_generator_seed(state))

  new_state, metrics = dp_fedavg_gan_process.next(state, client_datasets(arrays))

  for got, want in zip(new_state.weights.discriminator, new_discriminator, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  for got, want in zip(new_state.weights.generator, expected_generator, strict=True):
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
  assert not np.allclose(new_state.weights.generator[0], state.weights.generator[0])
  assert metrics['server']['generator_loss'] == pytest.approx(float(expected_loss), rel=1e-5)
  assert new_state.round_num == 1


@pytest.mark.parametrize('learning_rate', [1e-3, 1e-2])
def test_a_one_step_adam_client_update_has_norm_lr_times_sqrt_weights(learning_rate):
  """bench/dp_quality.py's clip rests on this: a dp_fedavg_gan client holding one batch takes
  Adam's first step (a fresh optimizer each round), which moves every weight by about the
  learning rate whatever the data, so its update's norm is lr·sqrt(weights)."""
  models = linear_gan_models()
  generator, discriminator = models.generator_fn(), models.discriminator_fn()
  update = tf.function(functools.partial(
      client_work.discriminator_client_update, generator=generator, discriminator=discriminator,
      loss=losses.NON_SATURATING,
      discriminator_optimizer=optimizers.build_optimizer('adam', learning_rate),
      noise_dim=models.noise_dim))
  rng = np.random.default_rng(3)
  num_weights = 2 + 1  # Dense(1) on 2 features: a kernel of 2 and a bias
  for client in range(3):
    broadcast = random_broadcast(rng)
    examples = rng.normal(loc=client, scale=1 + client, size=(16, 2)).astype(np.float32)
    one_batch = tf.data.Dataset.from_tensor_slices(examples).batch(16)
    delta = as_numpy(update(one_batch, broadcast).delta)
    assert global_norm(delta) == pytest.approx(learning_rate * np.sqrt(num_weights), rel=1e-3)
    np.testing.assert_allclose(np.abs(np.concatenate([d.ravel() for d in delta])),
                               learning_rate, rtol=1e-3)


def test_dp_fedavg_gan_with_dp_runs_and_records_its_dp_event(tff_context):
  process = build_dp_fedavg_gan(aggregators.dp_aggregator(
      noise_multiplier=1.0, clients_per_round=3, clip=0.1, noise_key=(1, 2)))
  state = process.initialize()
  new_state, metrics = process.next(state, client_datasets(client_arrays()))
  assert 'client' not in metrics
  assert all(np.all(np.isfinite(w)) for w in tf.nest.flatten(as_numpy(new_state.weights)))
  from tff_gan.privacy import accounting as privacy
  event = privacy.round_event_from_aggregator_state(new_state.aggregator_state)
  assert event == dp_accounting.GaussianDpEvent(1.0)
  assert type(event.noise_multiplier) is float  # dp_accounting is wrong on float32 input.


def test_adaptive_clipping_needs_enough_clients():
  with pytest.raises(ValueError, match='more than 10 clients per round'):
    aggregators.dp_aggregator(noise_multiplier=1.0, clients_per_round=5, clip=0.1,
                              noise_key=(1, 2), adaptive_clip_quantile=0.5)


def test_poisson_sampling_rate_and_determinism():
  counts = [len(sampling.sample_clients(1000, 50, round_num=r, seed=0, method='poisson'))
            for r in range(200)]
  assert np.mean(counts) == pytest.approx(50, rel=0.05)
  assert len(set(counts)) > 5  # The sample size varies, as Poisson sampling must.
  np.testing.assert_array_equal(sampling.sample_clients(1000, 50, round_num=3, seed=0,
                                                    method='poisson'),
                                sampling.sample_clients(1000, 50, round_num=3, seed=0,
                                                    method='poisson'))


@pytest.mark.parametrize('adaptive', [False, True])
def test_epsilon_column_equals_an_independent_dp_accounting_computation(tmp_path, adaptive):
  z, num_clients, per_round, rounds, delta = 0.8, 1000, 20, 3, 1e-5
  args = ['--scheme=dp_fedavg_gan', f'--num_clients={num_clients}',
          f'--clients_per_round={per_round}', '--client_sampling=poisson',
          f'--dp_noise_multiplier={z}', '--dp_clip=0.1', f'--rounds={rounds}',
          '--eval_every=10', '--model_width=0.03125', '--batch_size=16', '--local_steps=1',
          '--num_eval_samples=100', '--noprogress', f'--output_dir={tmp_path}']
  if adaptive:
    args.append('--dp_adaptive_clip_quantile=0.5')
  result = run_train(*args)
  assert result.returncode == 0, result.stderr
  with open(tmp_path / 'metrics.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  if adaptive:  # TFF splits z between the update noise and the clipped-count noise.
    count_stddev = 0.05 * per_round
    value_z = (z ** -2 - (2 * count_stddev) ** -2) ** -0.5
    round_event = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(value_z),
                                                 dp_accounting.GaussianDpEvent(
                                                     2 * count_stddev)])
  else:
    round_event = dp_accounting.GaussianDpEvent(z)
  for t, row in enumerate(rows, start=1):
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(per_round / num_clients,
                                                           round_event), t)
    assert float(row['epsilon']) == pytest.approx(accountant.get_epsilon(delta), rel=1e-5)
    assert row['d_loss'] == '' and row['num_examples'] == ''
    assert row['g_loss'] != ''


def test_unweighted_mean_aggregator_is_the_plain_average(tff_context):
  process = fedgan.build_fedgan_process(
      linear_gan_models(),
      client_optimizer=optimizers.build_optimizer('sgd', LEARNING_RATE),
      server_optimizer=optimizers.build_optimizer('sgd', 1.0),
      aggregator=aggregators.build_aggregator('unweighted_mean'))
  assert_one_round_is_the_unweighted_mean(process)


def test_robust_aggregator_bounds_a_huge_update_that_the_mean_lets_through(tff_context):
  arrays = client_arrays() + [np.full((8, 2), 1e3, np.float32)]

  def applied_norm(aggregator):
    process = fedgan_with(aggregator)
    state = process.initialize()
    new_state, _ = process.next(state, client_datasets(arrays))
    return global_norm(tf.nest.map_structure(lambda a, b: a - b, as_numpy(new_state.weights),
                                             as_numpy(state.weights)))

  assert applied_norm(aggregators.build_aggregator('mean')) > 2.0
  # Every client's update is clipped to the initial clip norm 1 (or zeroed): so is the mean.
  assert applied_norm(aggregators.build_aggregator('robust')) <= 1.0 + 1e-5


def test_unknown_aggregator_is_refused():
  with pytest.raises(ValueError, match='unknown aggregator'):
    aggregators.build_aggregator('median')


def test_dp_fedavg_gan_without_noise_learns_the_target_mean(tff_context):
  """One dimension, a linear G and a linear D, which can match the first moment and nothing
  else: through the DP aggregator with z = 0 (clipping only), G's mean reaches the data's."""
  target = 3.0
  rng = np.random.default_rng(0)
  arrays = [rng.normal(target, 0.5, size=(64, 1)).astype(np.float32) for _ in range(3)]
  process = dp_fedavg_gan.build_dp_fedavg_gan_process(
      linear_gan_models(noise_dim=1, data_dim=1),
      client_optimizer=optimizers.build_optimizer('sgd', 0.1),
      server_optimizer=optimizers.build_optimizer('sgd', 1.0),
      generator_optimizer=optimizers.build_optimizer('adam', 0.1),
      server_generator_steps=2, server_generator_batch_size=64,
      aggregator=aggregators.dp_aggregator(noise_multiplier=0.0, clients_per_round=3,
                                           clip=1.0, noise_key=(1, 2)),
      release_client_metrics=False)
  state = process.initialize()
  generator = linear_gan_models(noise_dim=1, data_dim=1).generator_fn()
  noise = np.random.default_rng(1).standard_normal((4096, 1)).astype(np.float32)

  def generated_mean(state):
    tf_fns.assign_weights(generator.trainable_variables, state.weights.generator)
    return float(np.mean(generator(noise)))

  assert abs(generated_mean(state) - target) > 2.0
  means = []
  for round_num in range(150):
    datasets = [tf.data.Dataset.from_tensor_slices(x).shuffle(64, seed=round_num).batch(16)
                for x in arrays]
    state, _ = process.next(state, datasets)
    means.append(generated_mean(state))
  # GAN dynamics circle the equilibrium; the last rounds' average sits on it.
  assert np.mean(means[-60:]) == pytest.approx(target, abs=0.2), np.round(means[::10], 2)
  assert np.ptp(means[-40:]) < np.ptp(means[:40])  # And it settles.
