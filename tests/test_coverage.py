"""Per-client coverage (metrics.csv's min/mean_client_coverage) and training_curves.png."""

from __future__ import annotations

import numpy as np
import pytest

import tasks
from tasks.mixtures import mode_metrics
from tff_gan.clients import partition, populations
from tff_gan.run import pictures, recorder


def test_client_coverage_by_hand():
  covered = np.array([True, False, True, False])
  held = np.array([[1, 1, 0, 0],    # 1 of its 2 classes covered
                   [0, 0, 1, 0],    # 1 of 1
                   [0, 1, 0, 1],    # 0 of 2
                   [0, 0, 0, 0]],   # holds nothing: not counted
                  bool)
  metrics = recorder.client_coverage(covered, held)
  assert metrics == {'min_client_coverage': 0.0, 'mean_client_coverage': pytest.approx(0.5)}


def test_ring_covers_exactly_the_captured_modes():
  task = tasks.get_task('ring')
  rng = np.random.default_rng(0)
  samples = np.concatenate([task.modes[[0, 3, 3]] + 0.001 * rng.standard_normal((3, 2)),
                            [[0.0, 0.0], [5.0, 5.0]]])  # Two far from every mode.
  covered = task.covered_labels(samples)
  assert covered.tolist() == [True, False, False, True, False, False, False, False]
  assert covered.sum() == mode_metrics(samples, task.modes, task.sigma)['modes_captured']


def test_split_clients_hold_the_labels_of_their_examples():
  labels = np.repeat(np.arange(8), 25)
  indices = partition.partition(labels, 4, scheme='pathological', labels_per_client=2, seed=1)
  population = populations.ClientPopulation(np.zeros((200, 2), np.float32), indices)
  held = population.client_labels(labels, 8)
  for k, client in enumerate(indices):
    assert set(np.flatnonzero(held[k])) == set(labels[client])
  assert held.sum(axis=1).tolist() == [2, 2, 2, 2]


def test_generated_clients_report_their_labels():
  task = tasks.get_task('ring')
  population = populations.GeneratedClients(
      6, 50, num_labels=8, sample_fn=task.generate_examples, scheme='pathological',
      labels_per_client=3, seed=0)
  held = population.client_labels(None, 8)
  assert held.sum(axis=1).tolist() == [3] * 6
  subset = populations.ClientSubset(population, [4, 1])
  np.testing.assert_array_equal(subset.client_labels(None, 8), held[[4, 1]])


def test_training_curves_draw_what_the_rows_hold(tmp_path):
  rows = [{'round': str(r), 'd_loss': str(1.0 / r), 'g_loss': '', 'modes_captured':
           str(r) if r % 2 == 0 else '', 'epsilon': ''} for r in range(1, 7)]
  path = str(tmp_path / 'curves.png')
  assert pictures.write_training_curves(rows, ('modes_captured', 'reverse_kl'), path, 'title')
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert not pictures.write_training_curves([{'round': '1'}], (), str(tmp_path / 'none.png'))
  assert not (tmp_path / 'none.png').exists()


def test_title_band_keeps_the_picture_below_it(tmp_path):
  from PIL import Image  # noqa: PLC0415

  path = str(tmp_path / 'samples.png')
  picture = np.random.default_rng(0).integers(0, 255, (40, 300, 3), np.uint8)
  Image.fromarray(picture).save(path)
  title = pictures.metrics_title(7, {'modes_captured': 8, 'reverse_kl': 0.0123,
                                     'epsilon': None}, ('modes_captured', 'reverse_kl', 'epsilon'))
  assert title == 'round 7 · modes_captured=8 · reverse_kl=0.0123'
  pictures.add_title(path, title * 3)  # Long enough to wrap.
  with Image.open(path) as titled:
    pixels = np.asarray(titled.convert('RGB'))
  band = pixels.shape[0] - 40
  assert band > 2 * 18  # At least two lines.
  np.testing.assert_array_equal(pixels[band:], picture)
  assert (pixels[:band] < 128).any()  # Text was drawn.
