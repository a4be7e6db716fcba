"""Client datasets built on the executor from keys, and populations that draw their own data."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import as_numpy, linear_gan_models

import tasks
from tff_gan.algorithms import fedgan, optimizers
from tff_gan.clients import populations as data
from tff_gan.run import config as config_lib
from tff_gan.run import schemes

WORK = data.LocalWork(batch_size=4, local_epochs=3, local_steps=5)
RING = tasks.get_task('ring', seed=0, num_examples=400)


def population():
  rng = np.random.default_rng(3)
  examples = rng.normal(size=(40, 2)).astype(np.float32)
  return data.ClientPopulation(examples, [np.arange(0, 7), np.arange(7, 20), np.arange(20, 40)])


def batches(dataset) -> np.ndarray:
  return np.concatenate(list(dataset.as_numpy_iterator()))


@tf.function
def _graph_dataset(client_data, key, work):
  """Builds the dataset in a graph from a key tensor, as TFF's worker does."""
  return tf.data.experimental.to_variant(client_data.dataset(key, work))


def dataset_built_in_graph(client_data, key, work, element_spec):
  variant = _graph_dataset(client_data, tf.constant(key), work)
  return tf.data.experimental.from_variant(variant, element_spec)


def test_executor_dataset_has_the_same_batches_as_the_python_one():
  clients = population()
  ids = [2, 0]
  python_side = clients.round_datasets(ids, WORK, round_num=4, seed=11)
  keys = data.round_keys(ids, round_num=4, seed=11)
  assert [int(k[0]) for k in keys] == ids
  for dataset, key in zip(python_side, keys, strict=True):
    graph_side = dataset_built_in_graph(clients, key, WORK, dataset.element_spec)
    expected = batches(dataset)
    np.testing.assert_array_equal(batches(graph_side), expected)
    assert len(expected) == min(clients.client_sizes[key[0]] * 3, 5 * 4)  # Steps cap, epochs.
  other_round = data.round_keys(ids, round_num=5, seed=11)[0]
  reshuffled = dataset_built_in_graph(clients, other_round, WORK, python_side[0].element_spec)
  assert not np.array_equal(batches(reshuffled), batches(python_side[0]))


@pytest.fixture(scope='module')
def process():
  return fedgan.build_fedgan_process(
      linear_gan_models(), client_optimizer=optimizers.build_optimizer('sgd', 0.05), seed=1)


def test_a_round_from_keys_equals_the_round_from_python_datasets(tff_context, process):
  clients = population()
  ids = [0, 2]
  state = process.initialize()
  from_datasets, metrics = process.next(
      state, clients.round_datasets(ids, WORK, round_num=1, seed=7))
  keyed = process.with_client_data(clients, WORK)
  from_keys, keyed_metrics = keyed.next(state, data.round_keys(ids, round_num=1, seed=7))
  for got, want in zip(tf.nest.flatten(as_numpy(from_keys.weights)),
                       tf.nest.flatten(as_numpy(from_datasets.weights)), strict=True):
    np.testing.assert_array_equal(got, want)
  assert keyed_metrics['num_examples'] == metrics['num_examples'] == min(7 * 3, 20) + 20
  initial = tf.nest.flatten(as_numpy(state.weights))
  assert any(not np.array_equal(a, b) for a, b in
             zip(initial, tf.nest.flatten(as_numpy(from_keys.weights)), strict=True))


def generated(scheme='iid', num_clients=50, examples_per_client=400, **kwargs):
  return data.GeneratedClients(num_clients, examples_per_client, num_labels=RING.num_labels,
                               sample_fn=RING.generate_examples, scheme=scheme, **kwargs)


def labels_of(clients, client_id):
  return clients.client_labels_tensor(tf.constant(client_id, tf.int64)).numpy()


def test_a_generated_client_holds_the_same_examples_every_time():
  clients = generated(seed=5)
  first = clients.client_examples_tensor(tf.constant(3, tf.int64)).numpy()
  np.testing.assert_array_equal(clients.client_examples_tensor(tf.constant(3, tf.int64)), first)
  assert first.shape == (400, 2)
  assert not np.allclose(clients.client_examples_tensor(tf.constant(4, tf.int64)), first)
  assert not np.allclose(generated(seed=6).client_examples_tensor(tf.constant(3, tf.int64)),
                         first)
  huge = generated(num_clients=10_000_000)  # Nothing is stored per client.
  assert huge.client_examples_tensor(tf.constant(9_999_999, tf.int64)).shape == (400, 2)


def test_generated_examples_follow_their_labels_mixture_components():
  clients = generated(examples_per_client=4000)
  key = tf.constant(8, tf.int64)
  labels = clients.client_labels_tensor(key).numpy()
  examples = clients.client_examples_tensor(key).numpy()
  standardized = (examples - RING.modes[labels]) / RING.sigma
  assert abs(standardized.mean()) < 0.05
  assert abs(standardized.std() - 1) < 0.05
  counts = np.bincount(labels, minlength=8)  # IID: Binomial(4000, 1/8) each, sd 20.9.
  assert np.all(np.abs(counts - 500) < 5 * 20.9), counts


def test_pathological_clients_hold_exactly_their_labels():
  clients = generated('pathological', labels_per_client=3)
  label_sets = [set(labels_of(clients, k)) for k in range(50)]
  assert all(len(s) == 3 for s in label_sets)
  assert len({frozenset(s) for s in label_sets}) > 10  # Clients pick different labels.


@pytest.mark.parametrize('alpha', [0.1, 1.0, 100.0])
def test_dirichlet_label_skew_matches_numpy(alpha):
  """The mean share of a client's commonest label, against numpy's Dirichlet + multinomial."""
  num_clients, size = 400, 200
  clients = generated('dirichlet', num_clients=num_clients, examples_per_client=size,
                      dirichlet_alpha=alpha)
  got = np.array([np.bincount(labels_of(clients, k), minlength=8).max() / size
                  for k in range(num_clients)])
  rng = np.random.default_rng(0)
  proportions = rng.dirichlet([alpha] * 8, size=20000)
  reference = np.array([rng.multinomial(size, p).max() / size for p in proportions])
  standard_error = reference.std() / np.sqrt(num_clients)
  assert abs(got.mean() - reference.mean()) < 4 * standard_error + 1e-3, (got.mean(),
                                                                          reference.mean())


def test_examples_per_client_is_refused_where_it_means_nothing():
  digits = tasks.get_task('digits')
  assert not digits.generates_data and RING.generates_data
  config = config_lib.TrainConfig(task='digits', model='dcgan', examples_per_client=100)
  with pytest.raises(config_lib.ConfigError, match='--examples_per_client needs a task'):
    schemes.build_population(config.validate(), digits)
  with pytest.raises(config_lib.ConfigError, match='examples_per_client'):
    config_lib.TrainConfig(scheme='centralized', examples_per_client=100).validate()
  with pytest.raises(config_lib.ConfigError, match='examples_per_client must be 0'):
    config_lib.TrainConfig(examples_per_client=-1).validate()


def test_the_run_population_draws_on_the_run_settings():
  config = config_lib.TrainConfig(num_clients=100_000, examples_per_client=64,
                                  partition='pathological', labels_per_client=1).validate()
  clients = schemes.build_population(config, RING)
  assert clients.num_clients == 100_000
  assert len(set(labels_of(clients, 99_999))) == 1


def test_generated_clients_train_on_the_worker(tff_context, process):
  """A round where the worker draws each client's examples from its id alone."""
  clients = generated(num_clients=1_000_000, examples_per_client=30, seed=2)
  keyed = process.with_client_data(clients, WORK)
  state = process.initialize()
  keys = data.round_keys([5, 999_999], round_num=1, seed=2)
  new_state, metrics = keyed.next(state, keys)
  assert metrics['num_examples'] == 2 * min(30 * 3, 5 * 4)
  again, _ = keyed.next(state, keys)  # Same keys, same data, same round.
  for a, b in zip(tf.nest.flatten(as_numpy(new_state.weights)),
                  tf.nest.flatten(as_numpy(again.weights)), strict=True):
    np.testing.assert_array_equal(a, b)
