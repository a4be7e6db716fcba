"""Client partitions: coverage, sizes, label skew, determinism, argument checks."""

import numpy as np
import pytest

from tff_gan import config
from tff_gan.partition import SCHEMES, partition

LABELS = np.repeat(np.arange(10), 100)  # 1,000 examples, 10 labels of 100.


def assert_each_index_once(parts, n):
  everything = np.concatenate(parts)
  assert len(everything) == n
  np.testing.assert_array_equal(np.sort(everything), np.arange(n))


def mean_top_label_fraction(parts, labels):
  return np.mean([np.bincount(labels[p]).max() / len(p) for p in parts])


def test_schemes_match_config_choices():
  assert SCHEMES == config.PARTITIONS


def test_iid_covers_everything_with_sizes_within_one():
  parts = partition(LABELS, 7, scheme='iid', seed=3)
  assert_each_index_once(parts, len(LABELS))
  sizes = [len(p) for p in parts]
  assert max(sizes) - min(sizes) <= 1
  # An IID client's label mix is close to the global one (10 % each).
  assert mean_top_label_fraction(parts, LABELS) < 0.2


def test_dirichlet_skew_grows_as_alpha_shrinks():
  skewed = partition(LABELS, 20, scheme='dirichlet', dirichlet_alpha=0.05, seed=0)
  uniform = partition(LABELS, 20, scheme='dirichlet', dirichlet_alpha=1000.0, seed=0)
  for parts in (skewed, uniform):
    assert_each_index_once(parts, len(LABELS))
    assert min(len(p) for p in parts) >= 1
  assert mean_top_label_fraction(skewed, LABELS) > 0.6
  assert mean_top_label_fraction(uniform, LABELS) < 0.25
  assert len({len(p) for p in skewed}) > 1  # Unequal client sizes.


def test_dirichlet_is_deterministic_per_seed():
  a = partition(LABELS, 10, scheme='dirichlet', dirichlet_alpha=0.3, seed=5)
  b = partition(LABELS, 10, scheme='dirichlet', dirichlet_alpha=0.3, seed=5)
  c = partition(LABELS, 10, scheme='dirichlet', dirichlet_alpha=0.3, seed=6)
  assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
  assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_dirichlet_never_leaves_a_client_empty():
  labels = np.repeat(np.arange(3), 10)  # 30 examples, 25 clients, very skewed.
  parts = partition(labels, 25, scheme='dirichlet', dirichlet_alpha=0.01, seed=1)
  assert_each_index_once(parts, 30)
  assert min(len(p) for p in parts) >= 1


@pytest.mark.parametrize('labels_per_client', [1, 2, 5])
def test_pathological_gives_each_client_exactly_k_labels(labels_per_client):
  parts = partition(LABELS, 10, scheme='pathological', labels_per_client=labels_per_client,
                    seed=2)
  assert_each_index_once(parts, len(LABELS))
  for p in parts:
    assert len(np.unique(LABELS[p])) == labels_per_client


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_clients=0), 'num_clients'),
    (dict(num_clients=1001), 'num_clients'),
    (dict(num_clients=5, scheme='shards'), 'unknown scheme'),
    (dict(num_clients=5, scheme='dirichlet', dirichlet_alpha=0.0), 'dirichlet_alpha'),
    (dict(num_clients=5, scheme='pathological', labels_per_client=11), 'labels_per_client'),
])
def test_bad_arguments_raise_value_error(kwargs, message):
  with pytest.raises(ValueError, match=message):
    partition(LABELS, **kwargs)
