"""Image-quality metrics against numpy/scipy references, and the cached digits classifier."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import scipy.linalg
from sklearn.datasets import load_digits

from tasks import evaluation

# A tiny training run for the cache tests: a few hundred images, one epoch.
TINY = {'epochs': 1, 'batch_size': 64}


def reference_frechet_distance(x, y):
  """The textbook formula with scipy's general matrix square root."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  mu_x, mu_y = x.mean(axis=0), y.mean(axis=0)
  cov_x = (x - mu_x).T @ (x - mu_x) / (len(x) - 1)
  cov_y = (y - mu_y).T @ (y - mu_y) / (len(y) - 1)
  covmean = scipy.linalg.sqrtm(cov_x @ cov_y).real
  return np.sum((mu_x - mu_y) ** 2) + np.trace(cov_x + cov_y - 2 * covmean)


def reference_classifier_score(logits):
  """Softmax, marginal, and the KL divergence summed term by term."""
  logits = np.asarray(logits, np.float64)
  shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
  conditional = shifted / shifted.sum(axis=1, keepdims=True)
  marginal = conditional.mean(axis=0)
  kls = []
  for row in conditional:
    kls.append(sum(p * np.log(p / q) for p, q in zip(row, marginal, strict=True) if p > 0))
  return np.exp(np.mean(kls))


def fail_if_called(*args, **kwargs):
  pytest.fail('the classifier was retrained instead of loaded from its cache')


def correlated_sample(rng, n, d, shift=0.0):
  mixing = rng.normal(size=(d, d))
  return rng.normal(size=(n, d)) @ mixing + shift


# --- frechet_distance ---


def test_frechet_distance_approaches_diagonal_gaussian_closed_form():
  rng = np.random.default_rng(0)
  mu_1, mu_2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, -0.5])
  var_1, var_2 = np.array([1.0, 4.0, 0.25, 2.0]), np.array([2.0, 1.0, 0.25, 0.5])
  population = np.sum((mu_1 - mu_2) ** 2) + np.sum(var_1 + var_2 - 2 * np.sqrt(var_1 * var_2))
  n = 200_000
  x = mu_1 + np.sqrt(var_1) * rng.normal(size=(n, 4))
  y = mu_2 + np.sqrt(var_2) * rng.normal(size=(n, 4))
  assert evaluation.frechet_distance(x, y) == pytest.approx(population, abs=0.05)


def test_frechet_distance_matches_scipy_sqrtm_reference():
  rng = np.random.default_rng(1)
  x = correlated_sample(rng, 500, 6)
  y = correlated_sample(rng, 300, 6, shift=0.7)
  assert evaluation.frechet_distance(x, y) == pytest.approx(reference_frechet_distance(x, y),
                                                            rel=1e-9)


def test_frechet_distance_is_zero_for_identical_sets_and_symmetric():
  rng = np.random.default_rng(2)
  x, y = correlated_sample(rng, 400, 8), correlated_sample(rng, 350, 8, shift=0.3)
  assert evaluation.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
  assert evaluation.frechet_distance(x, y) == pytest.approx(evaluation.frechet_distance(y, x),
                                                            rel=1e-10)


def test_frechet_distance_of_a_translated_set_is_the_squared_shift():
  x = correlated_sample(np.random.default_rng(3), 200, 5)
  shift = np.array([1.0, -2.0, 0.0, 0.5, 3.0])
  assert evaluation.frechet_distance(x, x + shift) == pytest.approx(shift @ shift, rel=1e-9)


def test_frechet_distance_handles_singular_covariances():
  # Constant (dead) columns shared by both sets add nothing; fewer rows than columns is fine.
  rng = np.random.default_rng(4)
  x, y = correlated_sample(rng, 30, 3), correlated_sample(rng, 40, 3, shift=1.0)
  padded_x = np.hstack([x, np.zeros((30, 50))])
  padded_y = np.hstack([y, np.zeros((40, 50))])
  assert evaluation.frechet_distance(padded_x, padded_y) == pytest.approx(
      reference_frechet_distance(x, y), rel=1e-8)


@pytest.mark.parametrize(('real', 'generated', 'message'), [
    (np.zeros((5, 3)), np.zeros((5, 4)), 'sizes differ'),
    (np.zeros((1, 3)), np.zeros((5, 3)), 'at least 2'),
    (np.zeros(5), np.zeros((5, 1)), '2-D'),
    (np.zeros((5, 3)), np.full((5, 3), np.nan), 'NaN'),
    (np.full((5, 3), np.inf), np.zeros((5, 3)), 'NaN or Inf'),
])
def test_frechet_distance_rejects_bad_input(real, generated, message):
  with pytest.raises(ValueError, match=message):
    evaluation.frechet_distance(real, generated)


# --- classifier_score ---


def test_classifier_score_matches_numpy_reference():
  logits = np.random.default_rng(5).normal(scale=3.0, size=(50, 7))
  assert evaluation.classifier_score(logits) == pytest.approx(
      reference_classifier_score(logits), rel=1e-10)


def test_classifier_score_known_answers():
  assert evaluation.classifier_score(np.zeros((20, 10))) == pytest.approx(1.0)
  # The same prediction for every example, however confident: p(y|x) = p(y).
  assert evaluation.classifier_score(np.tile([5.0, -1.0, 2.0], (9, 1))) == pytest.approx(1.0)
  confident = 100.0 * np.tile(np.eye(4), (3, 1))
  assert evaluation.classifier_score(confident) == pytest.approx(4.0, rel=1e-9)


def test_classifier_score_is_stable_for_huge_logits():
  logits = 1e4 * np.tile(np.eye(5), (2, 1))
  with np.errstate(over='raise', divide='raise', invalid='raise'):
    assert evaluation.classifier_score(logits) == pytest.approx(5.0, rel=1e-9)


@pytest.mark.parametrize('logits', [np.zeros(5), np.zeros((0, 3)), np.array([[0.0, np.nan]])])
def test_classifier_score_rejects_bad_input(logits):
  with pytest.raises(ValueError):
    evaluation.classifier_score(logits)


# --- the digits classifier ---


@pytest.fixture(scope='module')
def digits():
  data = load_digits()
  images = (data.images[..., None] / 8.0 - 1.0).astype(np.float32)
  order = np.random.default_rng(0).permutation(len(images))
  train, heldout = order[:1500], order[1500:]
  return images[train], data.target[train], images[heldout], data.target[heldout]


@pytest.fixture(scope='module')
def trained(digits, tmp_path_factory):
  cache_dir = str(tmp_path_factory.mktemp('classifier_cache'))
  train_images, train_labels, _, _ = digits
  return evaluation.load_or_train_classifier(train_images, train_labels, cache_dir=cache_dir)


def test_classifier_is_accurate_on_heldout_digits(digits, trained):
  _, _, heldout_images, heldout_labels = digits
  assert not trained.loaded_from_cache
  assert trained.num_classes == 10 and trained.image_shape == (8, 8, 1)
  accuracy = np.mean(trained.logits(heldout_images).argmax(axis=1) == heldout_labels)
  assert accuracy >= 0.95


def test_classifier_outputs_are_batch_independent(digits, trained):
  train_images = digits[0]  # 1500 images: more than one prediction batch.
  activations, logits = trained.activations_and_logits(train_images)
  assert activations.shape == (1500, evaluation.ACTIVATION_SIZE) and logits.shape == (1500, 10)
  assert np.all(activations >= 0)
  np.testing.assert_allclose(trained.logits(train_images[1100:1110]), logits[1100:1110],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(trained.activations(train_images[:3]), activations[:3],
                             rtol=1e-5, atol=1e-5)


def test_second_call_loads_from_cache_without_training(digits, trained, monkeypatch):
  train_images, train_labels, heldout_images, _ = digits
  mtime = os.stat(trained.cache_path).st_mtime_ns
  monkeypatch.setattr(evaluation, '_train', fail_if_called)
  cached = evaluation.load_or_train_classifier(
      train_images.copy(), train_labels.copy(), cache_dir=os.path.dirname(trained.cache_path))
  assert cached.loaded_from_cache and cached.cache_path == trained.cache_path
  assert os.stat(trained.cache_path).st_mtime_ns == mtime
  np.testing.assert_array_equal(cached.logits(heldout_images), trained.logits(heldout_images))
  assert os.listdir(os.path.dirname(trained.cache_path)) == [
      os.path.basename(trained.cache_path)]


def test_cache_key_covers_data_labels_and_settings(digits):
  images, labels = digits[0][:100], digits[1][:100]
  settings = {'num_classes': 10, 'seed': 0, 'epochs': 10, 'batch_size': 32,
              'learning_rate': 1e-3}
  key = evaluation.cache_key(images, labels, **settings)
  assert evaluation.cache_key(images.copy(), labels.copy(), **settings) == key
  changed_pixel = images.copy()
  changed_pixel[7, 3, 4, 0] += 0.125
  changed_label = labels.copy()
  changed_label[0] = (changed_label[0] + 1) % 10
  others = [
      evaluation.cache_key(changed_pixel, labels, **settings),
      evaluation.cache_key(images, changed_label, **settings),
      evaluation.cache_key(images[:99], labels[:99], **settings),
  ] + [evaluation.cache_key(images, labels, **(settings | {name: value}))
       for name, value in [('seed', 1), ('epochs', 11), ('batch_size', 16),
                           ('learning_rate', 1e-2), ('num_classes', 11)]]
  assert len({key, *others}) == len(others) + 1


def test_training_is_deterministic(digits, tmp_path):
  images, labels = digits[0][:300], digits[1][:300]
  first = evaluation.load_or_train_classifier(images, labels, cache_dir=str(tmp_path / 'a'),
                                              **TINY)
  second = evaluation.load_or_train_classifier(images, labels, cache_dir=str(tmp_path / 'b'),
                                               **TINY)
  assert not second.loaded_from_cache
  for a, b in zip(first.model.get_weights(), second.model.get_weights(), strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('damage', ['garbage', 'truncated'])
def test_corrupt_cache_is_retrained_with_a_warning(digits, tmp_path, caplog, monkeypatch,
                                                   damage):
  images, labels = digits[0][:300], digits[1][:300]
  first = evaluation.load_or_train_classifier(images, labels, cache_dir=str(tmp_path), **TINY)
  expected = first.logits(images[:20])
  with open(first.cache_path, 'rb') as f:
    content = f.read()
  with open(first.cache_path, 'wb') as f:
    f.write(b'not an npz file' if damage == 'garbage' else content[:len(content) // 2])
  with caplog.at_level(logging.WARNING):
    retrained = evaluation.load_or_train_classifier(images, labels, cache_dir=str(tmp_path),
                                                    **TINY)
  assert not retrained.loaded_from_cache
  assert any('corrupt classifier cache' in record.getMessage() for record in caplog.records)
  np.testing.assert_array_equal(retrained.logits(images[:20]), expected)
  monkeypatch.setattr(evaluation, '_train', fail_if_called)  # The rewritten cache is sound.
  assert evaluation.load_or_train_classifier(images, labels, cache_dir=str(tmp_path),
                                             **TINY).loaded_from_cache


def test_load_or_train_rejects_bad_labels_and_images(digits, trained, tmp_path):
  images, labels = digits[0][:10], digits[1][:10]
  with pytest.raises(ValueError, match='labels'):
    evaluation.load_or_train_classifier(images, labels[:9], cache_dir=str(tmp_path))
  with pytest.raises(ValueError, match='labels'):
    evaluation.load_or_train_classifier(images, labels + 0.5, cache_dir=str(tmp_path))
  with pytest.raises(ValueError, match='num_classes'):
    evaluation.load_or_train_classifier(images, labels, num_classes=3, cache_dir=str(tmp_path))
  with pytest.raises(ValueError, match='classifier takes'):
    trained.logits(np.zeros((2, 16, 16, 1), np.float32))
  with pytest.raises(ValueError, match='NaN'):
    trained.activations(np.full((2, 8, 8, 1), np.nan, np.float32))
  assert not os.listdir(tmp_path)


# --- image_metrics and the real-data reference ---


def test_real_heldout_digits_score_far_better_than_noise(digits, trained):
  train_images, _, heldout_images, _ = digits
  reference = evaluation.real_data_reference(trained, train_images, heldout_images)
  noise = np.random.default_rng(6).uniform(-1, 1, heldout_images.shape).astype(np.float32)
  noise_metrics = evaluation.image_metrics(trained, train_images, noise)
  assert set(reference) == set(noise_metrics) == {'frechet_distance', 'classifier_score'}
  assert reference['frechet_distance'] < noise_metrics['frechet_distance'] / 5
  assert reference['classifier_score'] > 7
  assert noise_metrics['classifier_score'] < reference['classifier_score']


def test_image_metrics_composes_the_metrics_on_classifier_outputs(digits, trained):
  real, generated = digits[0][:200], digits[2][:150]
  metrics = evaluation.image_metrics(trained, real, generated)
  assert metrics['frechet_distance'] == pytest.approx(reference_frechet_distance(
      trained.activations(real), trained.activations(generated)), rel=1e-6)
  assert metrics['classifier_score'] == pytest.approx(
      reference_classifier_score(trained.logits(generated)), rel=1e-6)
