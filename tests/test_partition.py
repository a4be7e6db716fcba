"""Client partitions: coverage, sizes, label skew, determinism, argument checks.

Every check counts indices and labels directly with numpy.
"""

from __future__ import annotations

import numpy as np
import pytest

from tff_gan.choices import SPLITS as SCHEMES
from tff_gan.clients.partition import partition

# 10 labels, 100 examples each, in shuffled order.
BALANCED_LABELS = np.random.default_rng(123).permutation(np.repeat(np.arange(10), 100))


def _assert_covers_every_index_once(client_indices, num_examples):
  assert all(indices.dtype == np.int64 for indices in client_indices)
  all_indices = np.concatenate(client_indices)
  np.testing.assert_array_equal(np.sort(all_indices), np.arange(num_examples))


def _mean_max_label_fraction(client_indices, labels):
  """Mean over clients of the fraction of a client's examples that have its commonest label."""
  return np.mean(
      [np.bincount(labels[indices]).max() / indices.size for indices in client_indices]
  )


@pytest.mark.parametrize('scheme', SCHEMES)
def test_every_scheme_covers_every_index_once_without_empty_clients(scheme):
  client_indices = partition(BALANCED_LABELS, 10, scheme=scheme, seed=3)
  assert len(client_indices) == 10
  _assert_covers_every_index_once(client_indices, BALANCED_LABELS.size)
  assert min(indices.size for indices in client_indices) >= 1


@pytest.mark.parametrize('scheme', SCHEMES)
def test_every_scheme_is_deterministic_per_seed(scheme):
  first = partition(BALANCED_LABELS, 7, scheme=scheme, seed=11)
  second = partition(BALANCED_LABELS, 7, scheme=scheme, seed=11)
  other_seed = partition(BALANCED_LABELS, 7, scheme=scheme, seed=12)
  for a, b in zip(first, second, strict=True):
    np.testing.assert_array_equal(a, b)
  assert any(
      not np.array_equal(a, b) for a, b in zip(first, other_seed, strict=True)
  ), 'a different seed should give a different partition'


def test_iid_sizes_differ_by_at_most_one():
  client_indices = partition(np.zeros(103, dtype=np.int64), 10, scheme='iid')
  _assert_covers_every_index_once(client_indices, 103)
  sizes = [indices.size for indices in client_indices]
  assert max(sizes) - min(sizes) <= 1
  assert sorted(sizes) == [10] * 7 + [11] * 3


def test_iid_one_client_per_example():
  client_indices = partition(np.arange(5), 5, scheme='iid')
  assert sorted(int(indices[0]) for indices in client_indices) == [0, 1, 2, 3, 4]


def test_dirichlet_small_alpha_is_much_more_label_skewed_than_large_alpha():
  skewed = partition(BALANCED_LABELS, 10, scheme='dirichlet', dirichlet_alpha=0.05, seed=0)
  nearly_iid = partition(BALANCED_LABELS, 10, scheme='dirichlet', dirichlet_alpha=1000, seed=0)
  for client_indices in (skewed, nearly_iid):
    _assert_covers_every_index_once(client_indices, BALANCED_LABELS.size)
    assert min(indices.size for indices in client_indices) >= 1
  skewed_fraction = _mean_max_label_fraction(skewed, BALANCED_LABELS)
  nearly_iid_fraction = _mean_max_label_fraction(nearly_iid, BALANCED_LABELS)
  # With 10 balanced labels an IID client's commonest label is ~10% of its data; with
  # alpha = 0.05 most of a client's data has one label (0.6 to 0.8 over seeds 0-29).
  assert nearly_iid_fraction < 0.2
  assert skewed_fraction > 0.5
  # Large alpha gives nearly equal client sizes; small alpha unequal ones.
  sizes = [indices.size for indices in nearly_iid]
  assert max(sizes) - min(sizes) < 30
  assert len({indices.size for indices in skewed}) > 1


def test_dirichlet_fills_every_client_even_when_nearly_all_draws_leave_some_empty():
  # 20 examples of 2 labels over 15 clients with tiny alpha: each label lands almost entirely
  # on one client, so the fall-back that moves single examples must fill the rest.
  labels = np.repeat([0, 1], 10)
  client_indices = partition(labels, 15, scheme='dirichlet', dirichlet_alpha=0.01, seed=0)
  _assert_covers_every_index_once(client_indices, labels.size)
  assert min(indices.size for indices in client_indices) == 1


@pytest.mark.parametrize('labels_per_client', [1, 2, 3])
def test_pathological_clients_hold_exactly_labels_per_client_labels(labels_per_client):
  # 10 labels x 120 examples, 20 clients: shards of 1200 / (20 * k) examples never straddle
  # two labels, and each label fills 2k <= 20 shards, so distinct labels per client is possible.
  labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 120))
  client_indices = partition(
      labels, 20, scheme='pathological', labels_per_client=labels_per_client, seed=5
  )
  _assert_covers_every_index_once(client_indices, labels.size)
  for indices in client_indices:
    assert np.unique(labels[indices]).size == labels_per_client
    assert indices.size == 1200 // 20


def test_pathological_pairs_of_labels_vary_with_the_seed():
  pairs_by_seed = []
  for seed in range(3):
    client_indices = partition(BALANCED_LABELS, 10, scheme='pathological', seed=seed)
    pairs_by_seed.append(
        sorted(tuple(np.unique(BALANCED_LABELS[indices])) for indices in client_indices)
    )
  assert pairs_by_seed[0] != pairs_by_seed[1] or pairs_by_seed[0] != pairs_by_seed[2]


def test_pathological_dominant_label_lands_twice_on_some_clients_when_unavoidable():
  # Label 0 is 90% of the data: it fills 9 of the 10 shards, more than the 5 clients.
  labels = np.concatenate([np.zeros(90, dtype=np.int64), np.ones(10, dtype=np.int64)])
  client_indices = partition(labels, 5, scheme='pathological', labels_per_client=2, seed=0)
  _assert_covers_every_index_once(client_indices, labels.size)
  distinct_counts = sorted(np.unique(labels[indices]).size for indices in client_indices)
  assert distinct_counts == [1, 1, 1, 1, 2]


@pytest.mark.parametrize(
    'kwargs, message',
    [
        (dict(num_clients=0), 'num_clients'),
        (dict(num_clients=1001), 'num_clients'),
        (dict(num_clients=2.0), 'num_clients'),
        (dict(num_clients=10, scheme='shards'), 'unknown scheme'),
        (dict(num_clients=10, scheme='dirichlet', dirichlet_alpha=0.0), 'dirichlet_alpha'),
        (dict(num_clients=10, scheme='dirichlet', dirichlet_alpha=float('inf')), 'dirichlet_alpha'),
        (dict(num_clients=10, scheme='pathological', labels_per_client=0), 'labels_per_client'),
        (dict(num_clients=10, scheme='pathological', labels_per_client=11), 'labels_per_client'),
        (dict(num_clients=600, scheme='pathological', labels_per_client=2), 'shards'),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
  with pytest.raises(ValueError, match=message):
    partition(BALANCED_LABELS, **kwargs)


@pytest.mark.parametrize(
    'labels, message',
    [(np.zeros((10, 2), dtype=np.int64), '1-D'), (np.linspace(0, 1, 10), 'integers')],
)
def test_bad_labels_raise_value_error(labels, message):
  with pytest.raises(ValueError, match=message):
    partition(labels, 2)
