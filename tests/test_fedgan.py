"""FedGAN process: type signatures, FedAvg arithmetic against numpy, determinism."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from conftest import as_numpy, linear_gan_models
from test_tf_fns import run_client_update

from tff_gan.algorithms import fedgan, optimizers
from tff_gan.clients import populations as data
from tff_gan.core import seeds
from tff_gan.core.state import ServerBroadcast, ServerState
from tff_gan.run import schemes
from tff_gan.run.config import ConfigError, TrainConfig

LEARNING_RATE = 0.05
CLIENT_SIZES = (3, 5, 8)  # Unequal n_k: the FedAvg weights are 3/16, 5/16, 8/16.
WORK = data.LocalWork(batch_size=2)


def build(server_learning_rate, seed=0, **kwargs):
  return fedgan.build_fedgan_process(
      linear_gan_models(),
      client_optimizer=optimizers.build_optimizer('sgd', LEARNING_RATE),
      server_optimizer=optimizers.build_optimizer('sgd', server_learning_rate),
      seed=seed,
      **kwargs,
  )


@pytest.fixture(scope='module')
def fedavg_process():
  return build(1.0)


def client_arrays():
  rng = np.random.default_rng(42)
  return [rng.normal(loc=2.0, size=(n, 2)).astype(np.float32) for n in CLIENT_SIZES]


def client_datasets(arrays):
  # A fresh dataset object per use: the same seed then gives the same first shuffle.
  return [data.client_dataset(x, WORK, seed=i) for i, x in enumerate(arrays)]


def reference_fedavg_delta(state, arrays):
  """The n_k-weighted numpy average of the deltas of the plain-TF client update."""
  broadcast = ServerBroadcast(weights=state.weights,
                              round_seed=seeds.round_seed(state.seed, state.round_num))
  deltas, weights = [], []
  for dataset in client_datasets(arrays):
    output = run_client_update(linear_gan_models(), dataset, broadcast,
                               learning_rate=LEARNING_RATE)
    deltas.append(as_numpy(output.delta))
    weights.append(float(output.num_examples))
  assert weights == list(CLIENT_SIZES)
  total = sum(weights)
  def weighted_mean(*client_values):
    return sum(w * x for w, x in zip(weights, client_values, strict=True)) / total

  return tf.nest.map_structure(weighted_mean, *deltas)


def test_type_signatures(fedavg_process):
  init_type = fedavg_process.initialize.type_signature
  assert init_type.parameter is None
  assert init_type.result.placement is tff.SERVER
  assert init_type.result.member.python_container is ServerState
  state_param, data_param = fedavg_process.next.type_signature.parameter
  assert state_param == init_type.result
  assert data_param == tff.FederatedType(
      tff.SequenceType(tff.TensorType(np.float32, [None, 2])), tff.CLIENTS)
  new_state, metrics = fedavg_process.next.type_signature.result
  assert new_state == init_type.result
  assert metrics.placement is tff.SERVER
  assert [name for name, _ in tff.structure.iter_elements(metrics.member)] == [
      'client', 'num_examples', 'non_finite_clients', 'server', 'aggregator']
  assert [name for name, _ in tff.structure.iter_elements(metrics.member.client)] == [
      'discriminator_loss', 'generator_loss']


@pytest.mark.parametrize('server_learning_rate', [1.0, 0.5])
def test_one_round_equals_numpy_weighted_average(tff_context, fedavg_process,
                                                 server_learning_rate):
  process = fedavg_process if server_learning_rate == 1.0 else build(server_learning_rate)
  arrays = client_arrays()
  state = process.initialize()
  expected_delta = reference_fedavg_delta(state, arrays)

  new_state, metrics = process.next(state, client_datasets(arrays))

  expected = tf.nest.map_structure(lambda w, d: w + server_learning_rate * d,
                                   as_numpy(state.weights), expected_delta)
  for got, want in zip(tf.nest.flatten(as_numpy(new_state.weights)),
                       tf.nest.flatten(expected), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert metrics['num_examples'] == sum(CLIENT_SIZES)
  assert new_state.round_num == 1


def test_unweighted_average_would_differ(tff_context, fedavg_process):
  # Guards the test above: with these unequal sizes, weighting matters.
  arrays = client_arrays()
  state = fedavg_process.initialize()
  broadcast = ServerBroadcast(weights=state.weights,
                              round_seed=seeds.round_seed(state.seed, state.round_num))
  deltas = [as_numpy(run_client_update(linear_gan_models(), ds, broadcast,
                                       learning_rate=LEARNING_RATE).delta)
            for ds in client_datasets(arrays)]
  uniform = np.mean([d.generator[0] for d in deltas], axis=0)
  weighted = reference_fedavg_delta(state, arrays).generator[0]
  assert np.abs(uniform - weighted).max() > 1e-4


def test_same_seed_same_numbers_other_seed_other_numbers(tff_context, fedavg_process):
  arrays = client_arrays()

  def two_rounds(process):
    state = process.initialize()
    losses = []
    for _ in range(2):
      state, metrics = process.next(state, client_datasets(arrays))
      losses.append((metrics['client']['discriminator_loss'],
                     metrics['client']['generator_loss']))
    return as_numpy(state.weights), losses

  weights_a, losses_a = two_rounds(fedavg_process)
  weights_b, losses_b = two_rounds(fedavg_process)
  assert losses_a == losses_b
  for a, b in zip(tf.nest.flatten(weights_a), tf.nest.flatten(weights_b), strict=True):
    np.testing.assert_array_equal(a, b)
  weights_c, _ = two_rounds(build(1.0, seed=1))
  assert not np.array_equal(weights_a.generator[0], weights_c.generator[0])


def test_all_empty_clients_leave_the_model_unchanged(tff_context, fedavg_process):
  state = fedavg_process.initialize()
  empty = [tf.data.Dataset.from_tensor_slices(np.zeros((0, 2), np.float32)).batch(2)] * 2
  new_state, metrics = fedavg_process.next(state, empty)
  assert metrics['num_examples'] == 0
  for got, want in zip(tf.nest.flatten(as_numpy(new_state.weights)),
                       tf.nest.flatten(as_numpy(state.weights)), strict=True):
    np.testing.assert_array_equal(got, want)


def test_fedprox_with_zero_mu_is_fedavg_exactly(tff_context, fedavg_process):
  arrays = client_arrays()
  fedprox = build(1.0, proximal_mu=0.0)
  fedavg_state, _ = fedavg_process.next(fedavg_process.initialize(), client_datasets(arrays))
  fedprox_state, _ = fedprox.next(fedprox.initialize(), client_datasets(arrays))
  for a, b in zip(tf.nest.flatten(as_numpy(fedavg_state.weights)),
                  tf.nest.flatten(as_numpy(fedprox_state.weights)), strict=True):
    np.testing.assert_array_equal(a, b)
  moved, _ = build(1.0, proximal_mu=5.0).next(fedprox.initialize(), client_datasets(arrays))
  assert not np.array_equal(as_numpy(moved.weights).generator[0],
                            as_numpy(fedprox_state.weights).generator[0])


def test_the_clients_generator_learning_rate_scales_its_step_alone(tff_context):
  """--client_generator_learning_rate, through the config's scheme: one local SGD step (D,
  then G against the stepped D) gives the same discriminator delta and a generator delta
  scaled by the ratio of the two learning rates."""
  del tff_context
  arrays = [client_arrays()[0][:2]]  # One batch of 2: one step of each network.

  def one_round(**rates):
    config = TrainConfig(client_optimizer='sgd', client_learning_rate=LEARNING_RATE, **rates)
    process = schemes.build_process(config.validate(), linear_gan_models())
    state = process.initialize()
    new_state, _ = process.next(state, client_datasets(arrays))
    return tf.nest.map_structure(lambda new, old: new - old, as_numpy(new_state.weights),
                                 as_numpy(state.weights))

  same = one_round()
  slower = one_round(client_generator_learning_rate=LEARNING_RATE / 4)
  for got, want in zip(slower.discriminator, same.discriminator, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  for got, want in zip(slower.generator, same.generator, strict=True):
    assert np.abs(want).max() > 1e-4
    np.testing.assert_allclose(got, want / 4, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize('settings, message', [
    (dict(client_generator_learning_rate=0.0), 'must be positive'),
    (dict(client_generator_learning_rate=1e-4, scheme='dp_fedavg_gan'),
     'its server trains the generator: --generator_learning_rate'),
    (dict(client_generator_learning_rate=1e-4, scheme='scaffold'), 'not of --scheme=scaffold'),
])
def test_client_generator_learning_rate_is_checked(settings, message):
  with pytest.raises(ConfigError, match=message):
    TrainConfig(**settings).validate()


def test_a_client_with_nan_gets_weight_zero_and_is_counted(tff_context, fedavg_process):
  arrays = client_arrays()
  poisoned = np.full((4, 2), np.nan, np.float32)
  state = fedavg_process.initialize()
  expected_delta = reference_fedavg_delta(state, arrays)  # The healthy clients only.
  new_state, metrics = fedavg_process.next(state, client_datasets(arrays + [poisoned]))
  expected = tf.nest.map_structure(lambda w, d: w + d, as_numpy(state.weights), expected_delta)
  for got, want in zip(tf.nest.flatten(as_numpy(new_state.weights)),
                       tf.nest.flatten(expected), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert metrics['non_finite_clients'] == 1
  assert metrics['num_examples'] == sum(CLIENT_SIZES)
  assert np.isfinite(metrics['client']['discriminator_loss'])
