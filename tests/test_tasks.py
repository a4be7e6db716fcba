"""Tasks: data against their definitions, mode metrics against hand-counted answers, models,
rendering."""

import math
import os

import numpy as np
import pytest
from PIL import Image

import tasks
from tasks.mixtures import GridTask, RingTask, mode_metrics
from tff_gan import config

RING_MODES = RingTask.modes
GRID_MODES = GridTask.modes


def test_registry_matches_config_choices():
  assert tuple(sorted(tasks.TASKS)) == config.TASKS
  with pytest.raises(ValueError, match="unknown task 'mnist'"):
    tasks.get_task('mnist')


def test_ring_metrics_three_modes_hit_equally():
  samples = np.concatenate([np.repeat(RING_MODES[[0, 2, 5]], 2, axis=0),
                            [[0.0, 0.0], [5.0, 5.0], [0.5, 0.5], [-3.0, 0.1]]])
  metrics = mode_metrics(samples, RING_MODES, 0.01)
  assert metrics['modes_captured'] == 3
  assert metrics['high_quality_fraction'] == pytest.approx(6 / 10)
  assert metrics['reverse_kl'] == pytest.approx(math.log(8 / 3))


def test_ring_metrics_all_modes_equally():
  metrics = mode_metrics(np.repeat(RING_MODES, 5, axis=0), RING_MODES, 0.01)
  assert metrics == pytest.approx({'modes_captured': 8, 'high_quality_fraction': 1.0,
                                   'reverse_kl': 0.0})


def test_ring_metrics_unequal_hits_give_the_kl_of_the_histogram():
  samples = np.concatenate([np.repeat(RING_MODES[[0]], 3, axis=0), RING_MODES[[1]]])
  p = np.array([0.75, 0.25])
  expected = float(np.sum(p * np.log(p * 8)))
  assert mode_metrics(samples, RING_MODES, 0.01)['reverse_kl'] == pytest.approx(expected)


def test_high_quality_boundary_is_three_sigma():
  direction = np.array([1.0, 0.0])
  just_inside = RING_MODES[0] + 0.0299 * direction
  just_outside = RING_MODES[0] + 0.0301 * direction
  assert mode_metrics(just_inside[None], RING_MODES, 0.01)['high_quality_fraction'] == 1.0
  outside = mode_metrics(just_outside[None], RING_MODES, 0.01)
  assert outside['high_quality_fraction'] == 0.0 and outside['modes_captured'] == 0
  assert math.isnan(outside['reverse_kl'])


def test_grid_metrics_known_counts():
  samples = np.concatenate([GRID_MODES, GRID_MODES[:5] + 0.1, [[1.0, 1.0]]])
  metrics = mode_metrics(samples, GRID_MODES, 0.05)
  assert metrics['modes_captured'] == 25
  assert metrics['high_quality_fraction'] == pytest.approx(30 / 31)


def test_ring_data_matches_its_definition():
  task = RingTask(num_examples=8000, seed=1)
  assert task.examples.shape == (8000, 2) and task.examples.dtype == np.float32
  np.testing.assert_array_equal(np.bincount(task.labels), np.full(8, 1000))
  offsets = task.examples - RING_MODES[task.labels]
  np.testing.assert_allclose(offsets.std(axis=0), 0.01, rtol=0.05)
  np.testing.assert_allclose(offsets.mean(axis=0), 0.0, atol=1e-3)
  np.testing.assert_array_equal(RingTask(num_examples=8000, seed=1).examples, task.examples)


def test_grid_data_means_sit_on_the_modes():
  task = GridTask(num_examples=2500, seed=0)
  for label in range(25):
    mean = task.examples[task.labels == label].mean(axis=0)
    np.testing.assert_allclose(mean, GRID_MODES[label], atol=0.03)


def test_digits_data():
  task = tasks.get_task('digits')
  assert task.examples.shape == (1797, 8, 8, 1)
  assert task.examples.min() == -1.0 and task.examples.max() == 1.0
  assert set(np.unique(task.labels)) == set(range(10))


@pytest.mark.parametrize('name, model, data_shape', [
    ('ring', 'mlp', (2,)), ('grid', 'mlp', (2,)), ('digits', 'mlp', (8, 8, 1)),
    ('digits', 'dcgan', (8, 8, 1)),
])
def test_model_shapes_and_width(name, model, data_shape):
  small = tasks.get_task(name, model=model, width=0.0625).gan_models()
  large = tasks.get_task(name, model=model, width=0.25).gan_models()
  assert small.data_shape == data_shape
  generator, discriminator = small.generator_fn(), small.discriminator_fn()
  noise = np.random.default_rng(0).normal(size=(5, small.noise_dim)).astype(np.float32)
  samples = generator(noise).numpy()
  assert samples.shape == (5, *data_shape)
  assert discriminator(samples).shape == (5, 1)
  assert generator.count_params() < large.generator_fn().count_params()
  assert discriminator.count_params() < large.discriminator_fn().count_params()


def test_ring_generator_output_range():
  models = RingTask(num_examples=8).gan_models()
  noise = 100 * np.random.default_rng(0).normal(size=(64, models.noise_dim)).astype(np.float32)
  assert np.abs(models.generator_fn()(noise).numpy()).max() <= 1.5 + 1e-6


@pytest.mark.parametrize('name', ['ring', 'digits'])
def test_render_writes_a_png_and_no_temp_file(name, tmp_path):
  task = tasks.get_task(name)
  samples = task.examples[:100]
  path = tmp_path / 'samples.png'
  task.render(samples, str(path))
  with Image.open(path) as image:
    assert image.format == 'PNG' and min(image.size) >= 64
  assert os.listdir(tmp_path) == ['samples.png']
