"""Class-conditional GANs: packing, the class carried by the noise, training and export."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf
from conftest import REPO_ROOT

import tasks
from tff_gan.clients import populations as data
from tff_gan.core import conditional
from tff_gan.run import config as config_lib
from tff_gan.run import schemes

TRAIN = os.path.join(REPO_ROOT, 'bin', 'train.py')
GENERATE = os.path.join(REPO_ROOT, 'bin', 'generate.py')


def run(script, *args):
  return subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                        timeout=300, cwd=REPO_ROOT)


def test_pack_appends_one_hot_planes_to_images_and_entries_to_vectors():
  rng = np.random.default_rng(0)
  images, labels = rng.normal(size=(5, 4, 4, 2)).astype(np.float32), np.array([0, 2, 1, 2, 0])
  packed = conditional.pack(images, labels, 3)
  assert packed.shape == (5, 4, 4, 5)
  np.testing.assert_array_equal(packed[..., :2], images)
  for i, label in enumerate(labels):
    expected = np.zeros((4, 4, 3), np.float32)
    expected[..., label] = 1
    np.testing.assert_array_equal(packed[i, ..., 2:], expected)
  vectors = rng.normal(size=(5, 2)).astype(np.float32)
  packed_vectors = conditional.pack(vectors, labels, 3)
  np.testing.assert_array_equal(packed_vectors, np.hstack([vectors, np.eye(3)[labels]]))
  for packed_examples, examples in ((packed, images), (packed_vectors, vectors)):
    unpacked, unpacked_labels = conditional.unpack(packed_examples, 3)
    np.testing.assert_array_equal(unpacked, examples)
    np.testing.assert_array_equal(unpacked_labels, labels)


@pytest.fixture(scope='module')
def ring_models():
  task = tasks.get_task('ring', num_examples=80, width=0.0625)
  return task, task.gan_models(conditional_gan=True)


def test_generator_classes_are_uniform_and_follow_the_noise(ring_models):
  task, models = ring_models
  assert models.noise_dim == task.noise_dim + 8 and models.data_shape == (10,)
  generator = models.generator_fn()
  noise = tf.random.stateless_normal([8000, models.noise_dim], seed=[1, 2]).numpy()
  samples, labels = conditional.unpack(generator(noise).numpy(), 8)
  np.testing.assert_array_equal(labels, noise[:, task.noise_dim:].argmax(axis=1))
  counts = np.bincount(labels, minlength=8)
  assert scipy.stats.chisquare(counts).pvalue > 1e-3, counts  # Uniform over the 8 classes.
  # A one-hot class input picks the class; the same z with another class gives another sample.
  z = noise[:4, :task.noise_dim]
  for label in (0, 5):
    chosen = conditional.generator_input(z, [label] * 4, 8)
    _, chosen_labels = conditional.unpack(generator(chosen).numpy(), 8)
    assert set(chosen_labels) == {label}
  first = generator(conditional.generator_input(z, [0] * 4, 8)).numpy()[:, :2]
  second = generator(conditional.generator_input(z, [5] * 4, 8)).numpy()[:, :2]
  assert np.abs(first - second).max() > 1e-4


def test_labelled_generator_is_the_same_function(ring_models):
  task, models = ring_models
  generator = models.generator_fn()
  labelled = conditional.labelled_generator(generator, task.noise_dim, 8)
  z = np.random.default_rng(3).normal(size=(6, task.noise_dim)).astype(np.float32)
  labels = np.array([0, 1, 2, 3, 4, 7])
  packed = generator(conditional.generator_input(z, labels, 8)).numpy()
  np.testing.assert_allclose(labelled([z, np.eye(8, dtype=np.float32)[labels]]).numpy(),
                             packed[:, :2], rtol=1e-6, atol=1e-6)
  assert len(labelled.trainable_variables) == len(generator.trainable_variables)


def test_client_datasets_carry_each_examples_class():
  task = tasks.get_task('ring', num_examples=80)
  config = config_lib.TrainConfig(num_clients=4, clients_per_round=4, conditional=True)
  population = schemes.build_population(config, task)
  key = data.round_keys([2], round_num=1, seed=0)[0]
  batches = list(population.dataset(key, data.LocalWork(batch_size=100)))
  examples, labels = conditional.unpack(batches[0].numpy(), 8)
  # Each example's class is the mode it was drawn around.
  np.testing.assert_array_equal(labels, task.predict_labels(examples))


def test_generated_clients_carry_classes_too():
  task = tasks.get_task('ring', num_examples=80)
  config = config_lib.TrainConfig(num_clients=4, examples_per_client=50, partition='pathological',
                                  labels_per_client=2, conditional=True)
  population = schemes.build_population(config, task)
  examples, labels = conditional.unpack(population.client_examples_tensor(1).numpy(), 8)
  np.testing.assert_array_equal(labels, task.predict_labels(examples))
  assert len(set(labels)) == 2


@pytest.fixture(scope='module')
def conditional_run(tmp_path_factory):
  """A short conditional ring run: conditioning is learned long before all modes are."""
  output_dir = tmp_path_factory.mktemp('cgan')
  result = run(TRAIN, '--conditional', '--rounds=20', '--eval_every=20', '--num_clients=4',
               '--clients_per_round=4', '--model_width=0.25', '--num_eval_samples=800',
               '--noprogress', f'--output_dir={output_dir}')
  assert result.returncode == 0, result.stderr
  return output_dir


def test_conditional_training_learns_the_classes(conditional_run):
  with open(conditional_run / 'metrics.csv', newline='') as f:
    last = list(csv.DictReader(f))[-1]
  # An unconditional generator is right 1/8 of the time.
  assert float(last['conditional_accuracy']) > 0.9
  assert int(last['modes_captured']) == 8


def test_generate_draws_the_chosen_class(conditional_run):
  export_dir = conditional_run / 'export'
  result = run(GENERATE, f'--output_dir={conditional_run}', '--label=3', '--num_samples=200',
               f'--export_dir={export_dir}')
  assert result.returncode == 0, result.stderr
  samples = np.load(export_dir / 'samples_round_20.npy')
  assert samples.shape == (200, 2)
  np.testing.assert_array_equal(np.load(export_dir / 'labels_round_20.npy'), np.full(200, 3))
  mode = np.array([np.cos(3 * np.pi / 4), np.sin(3 * np.pi / 4)])
  assert np.mean(np.linalg.norm(samples - mode, axis=1) < 0.3) > 0.9
  loaded = tf.keras.models.load_model(export_dir / 'generator_round_20.keras')
  assert [tuple(i.shape) for i in loaded.inputs] == [(None, 64), (None, 8)]


@pytest.mark.parametrize('args, message', [
    (('--label=8',), "below the task's 8 classes"),
    (('--label=-1',), 'class number'),
])
def test_generate_refuses_a_bad_label(conditional_run, args, message):
  result = run(GENERATE, f'--output_dir={conditional_run}', *args)
  assert result.returncode == 2 and message in result.stderr


def test_flag_checks(tmp_path):
  result = run(TRAIN, '--task=tabular', f'--data_dir={tmp_path}', '--conditional',
               f'--output_dir={tmp_path / "o"}')
  assert result.returncode == 2 and 'has none' in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
