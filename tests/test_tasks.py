"""Tasks: data against their definitions, mode metrics against hand-counted answers, models,
rendering."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from PIL import Image

import tasks
from tasks.mixtures import GridTask, RingTask, mode_metrics
from tff_gan import choices
from tff_gan.run.config import ConfigError, TrainConfig

RING_MODES = RingTask.modes
GRID_MODES = GridTask.modes


def test_registry_matches_config_choices():
  """config spells the task facts out (to check flags before TensorFlow loads): they must be
  the tasks' own."""
  assert sorted(tasks.TASKS) == sorted(choices.TASKS)
  for name in choices.TASKS:
    task_class = tasks.task_class(name)
    assert task_class.name == name
    assert task_class.reads_files == (name in choices.FILE_TASKS)
    assert choices.DEFAULT_MODELS.get(name, 'mlp') == task_class.model_choices[0]
  for name in ('ring', 'grid', 'digits'):
    assert tasks.get_task(name).labelled == (name in choices.LABELLED_TASKS)
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
  hits = np.bincount(np.r_[np.arange(25), np.arange(5)], minlength=25) / 30
  assert metrics['reverse_kl'] == pytest.approx(float(np.sum(hits * np.log(hits * 25))))


def test_grid_metrics_five_modes_hit_equally_plus_far_points():
  samples = np.concatenate([np.repeat(GRID_MODES[[0, 6, 12, 18, 24]], 2, axis=0),
                            [[1.0, 1.0], [-1.0, 3.0], [9.0, 9.0]]])
  metrics = mode_metrics(samples, GRID_MODES, 0.05)
  assert metrics['modes_captured'] == 5
  assert metrics['high_quality_fraction'] == pytest.approx(10 / 13)
  assert metrics['reverse_kl'] == pytest.approx(math.log(25 / 5))


@pytest.mark.parametrize('modes, sigma', [(RING_MODES, 0.01), (GRID_MODES, 0.05)])
def test_high_quality_boundary_is_three_sigma_in_every_direction(modes, sigma):
  angles = np.linspace(0, 2 * np.pi, 7, endpoint=False)
  directions = np.stack([np.cos(angles), np.sin(angles)], axis=1)
  mode = modes[3]
  inside = mode + 3 * sigma * (1 - 1e-6) * directions
  outside = mode + 3 * sigma * (1 + 1e-6) * directions
  assert mode_metrics(inside, modes, sigma) == pytest.approx(
      {'modes_captured': 1, 'high_quality_fraction': 1.0, 'reverse_kl': math.log(len(modes))})
  assert mode_metrics(outside, modes, sigma)['high_quality_fraction'] == 0.0


@pytest.mark.parametrize('samples, modes, sigma', [
    (np.zeros((0, 2)), RING_MODES, 0.01),
    (np.zeros((4, 3)), RING_MODES, 0.01),
    (np.zeros((4, 2)), RING_MODES, 0.0),
])
def test_mode_metrics_rejects_bad_arguments(samples, modes, sigma):
  with pytest.raises(ValueError):
    mode_metrics(samples, modes, sigma)


def test_ring_data_matches_its_definition():
  task = RingTask(num_examples=8000, seed=1)
  assert task.examples.shape == (8000, 2) and task.examples.dtype == np.float32
  np.testing.assert_array_equal(np.bincount(task.labels), np.full(8, 1000))
  offsets = task.examples - RING_MODES[task.labels]
  np.testing.assert_allclose(offsets.std(axis=0), 0.01, rtol=0.05)
  np.testing.assert_allclose(offsets.mean(axis=0), 0.0, atol=1e-3)
  np.testing.assert_array_equal(RingTask(num_examples=8000, seed=1).examples, task.examples)
  assert not np.array_equal(RingTask(num_examples=8000, seed=2).examples, task.examples)


def test_ring_radii_are_one_with_sigma_spread():
  examples = RingTask(num_examples=8000, seed=3).examples.astype(np.float64)
  radii = np.linalg.norm(examples, axis=1)
  assert radii.mean() == pytest.approx(1.0, abs=1e-3)
  # The radial offset is one coordinate of an isotropic Gaussian: std sigma.
  assert radii.std() == pytest.approx(0.01, rel=0.05)


def test_mixtures_split_examples_equally_between_modes():
  np.testing.assert_array_equal(np.bincount(GridTask(num_examples=500).labels), np.full(25, 20))
  # Not a multiple of 8: the first modes get one example more.
  np.testing.assert_array_equal(np.bincount(RingTask(num_examples=19).labels),
                                [3, 3, 3, 2, 2, 2, 2, 2])


@pytest.mark.parametrize('name', ['ring', 'grid'])
def test_evaluate_returns_metric_names_and_checks_shape(name):
  task = tasks.get_task(name, num_examples=400)
  metrics = task.evaluate(task.examples)
  assert tuple(metrics) == task.metric_names
  assert metrics['modes_captured'] == task.num_labels
  assert metrics['high_quality_fraction'] > 0.95
  with pytest.raises(ValueError, match='expects samples of shape'):
    task.evaluate(np.zeros((10, 3), dtype=np.float32))


@pytest.mark.parametrize('name, kwargs, message', [
    ('ring', dict(model='dcgan'), 'choose one of: mlp'),
    ('digits', dict(model='resnet'), 'choose one of: mlp, dcgan'),
    ('grid', dict(width=0.0), 'width'),
    ('ring', dict(num_examples=7), 'num_examples'),
    ('digits', dict(noise_dim=0), 'noise_dim'),
])
def test_bad_task_arguments_raise_value_error(name, kwargs, message):
  with pytest.raises(ValueError, match=message):
    tasks.get_task(name, **kwargs)


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
  assert task.examples.dtype == np.float32 and task.labels.dtype == np.int64
  assert task.num_labels == 10
  assert task.metric_names == ('frechet_distance', 'classifier_score')


@pytest.mark.parametrize('name, model, data_shape', [
    ('ring', 'mlp', (2,)), ('grid', 'mlp', (2,)), ('digits', 'mlp', (8, 8, 1)),
    ('digits', 'dcgan', (8, 8, 1)),
])
def test_model_shapes_and_width(name, model, data_shape):
  size = {} if name == 'digits' else dict(num_examples=100)
  small = tasks.get_task(name, model=model, width=0.0625, **size).gan_models()
  large = tasks.get_task(name, model=model, width=0.25, **size).gan_models()
  assert small.data_shape == data_shape
  generator, discriminator = small.generator_fn(), small.discriminator_fn()
  noise = np.random.default_rng(0).normal(size=(5, small.noise_dim)).astype(np.float32)
  samples = generator(noise).numpy()
  assert samples.shape == (5, *data_shape)
  assert discriminator(samples).shape == (5, 1)
  assert generator.count_params() < large.generator_fn().count_params()
  assert discriminator.count_params() < large.discriminator_fn().count_params()


def _dense_params(sizes):
  """Weights and biases of Dense layers through `sizes` (input first, output last)."""
  return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def test_discriminator_width_scales_the_discriminator_alone():
  # Ring: G is noise 64 -> 256w -> 512w -> 2, D is 2 -> 512d -> 256d -> 1.
  models = RingTask(num_examples=8, width=0.5, discriminator_width=0.125).gan_models()
  assert models.generator_fn().count_params() == _dense_params([64, 128, 256, 2])
  assert models.discriminator_fn().count_params() == _dense_params([2, 64, 32, 1])
  same = RingTask(num_examples=8, width=0.5).gan_models()  # None: the model's width.
  assert same.discriminator_fn().count_params() == _dense_params([2, 256, 128, 1])
  digits = tasks.get_task('digits', model='dcgan', width=0.25, discriminator_width=0.5)
  wide_d = tasks.get_task('digits', model='dcgan', width=0.25).gan_models()
  assert digits.gan_models().generator_fn().count_params() == \
      wide_d.generator_fn().count_params()
  assert digits.gan_models().discriminator_fn().count_params() > \
      wide_d.discriminator_fn().count_params()
  with pytest.raises(ValueError, match='discriminator_width must be a positive'):
    RingTask(num_examples=8, discriminator_width=0.0)
  config = TrainConfig(model_width=0.5, discriminator_width=0.125)
  assert tasks.task_from_config(config).discriminator_width == 0.125
  assert tasks.task_from_config(TrainConfig(model_width=0.5)).discriminator_width == 0.5
  with pytest.raises(ConfigError, match='--discriminator_width must be positive'):
    TrainConfig(discriminator_width=-1.0).validate()


def test_ring_generator_output_range():
  models = RingTask(num_examples=8).gan_models()
  noise = 100 * np.random.default_rng(0).normal(size=(64, models.noise_dim)).astype(np.float32)
  assert np.abs(models.generator_fn()(noise).numpy()).max() <= 1.5 + 1e-6


@pytest.mark.parametrize('name, num_samples, image_size', [
    ('ring', 100, (512, 512)), ('grid', 100, (512, 512)),
    # 8 columns x 8 rows of 32-pixel digits with 2-pixel gaps; 3 samples make one row.
    ('digits', 100, (8 * 34 + 2, 8 * 34 + 2)), ('digits', 3, (3 * 34 + 2, 34 + 2)),
])
def test_render_writes_a_png_and_no_temp_file(name, num_samples, image_size, tmp_path):
  task = tasks.get_task(name) if name == 'digits' else tasks.get_task(name, num_examples=200)
  path = tmp_path / 'samples.png'
  path.write_bytes(b'an older picture')  # Replaced, not appended to.
  task.render(task.examples[:num_samples], str(path))
  with Image.open(path) as image:
    assert image.format == 'PNG' and image.size == image_size
    image.load()
  assert os.listdir(tmp_path) == ['samples.png']


def test_ring_render_draws_samples_where_they_are(tmp_path):
  path = tmp_path / 'origin.png'
  RingTask(num_examples=8).render(np.zeros((1, 2), dtype=np.float32), str(path))
  with Image.open(path) as image:
    pixels = np.asarray(image.convert('RGB')).astype(int)
  # Axes span +-1.6 over 512 pixels: the origin is the centre, mode 0 = (1, 0) is at
  # column (1 + 1.6) / 3.2 * 511 ~ 415, and its 3-sigma circle (radius ~4.8 px) is red.
  assert pixels[256:258, 256:258].max() < 100  # The origin, 255.5 px, rounds to 256.
  assert (pixels[0, 0] == 255).all() and (pixels[-1, -1] == 255).all()
  mode_row = pixels[254:258, 405:426]
  assert ((mode_row[..., 0] > 200) & (mode_row[..., 1] < 50)).any()


def test_digits_metrics_rank_held_out_real_digits_far_above_noise(tmp_path):
  task = tasks.get_task('digits')
  reference = task.prepare_evaluation(str(tmp_path))
  assert set(reference) == set(task.metric_names)
  assert os.listdir(tmp_path)  # The classifier is cached where training asked.
  noise = task.evaluate(np.random.default_rng(0).uniform(-1, 1, size=(400, 8, 8, 1)))
  assert set(noise) == set(task.metric_names)
  assert reference['frechet_distance'] < 0.1 * noise['frechet_distance']
  assert reference['classifier_score'] > 8 > noise['classifier_score']
