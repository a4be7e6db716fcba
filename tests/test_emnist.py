"""`emnist`: TFF's file format, one-line errors, writers read on the worker, and a tiny run.

A tiny `emnist_all.sqlite` is written in the format TFF reads (the schema of TFF's own
`sql_client_data_utils` writer, whose serializer makes the same `tf.train.Example` protos);
TFF's loader reading it back checks the format.
"""

from __future__ import annotations

import csv
import math
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from conftest import REPO_ROOT, workers_logging_to
from PIL import Image
from tensorflow_federated.python.simulation.datasets import download

from tasks import emnist, evaluation, federated_eval
from tasks.readers import emnist_sqlite
from tff_gan.clients import populations as data
from tff_gan.core import conditional

WRITERS = ('f0000_14', 'f0001_41', 'f0002_03', 'f0003_19')  # Sorted, as TFF lists them.
TRAIN_SIZES = (5, 6, 7, 4)
TEST_SIZES = (3, 4, 3, 2)
TRAIN, TEST = 'digits_only_train', 'digits_only_test'
TRAIN_BINARY = os.path.join(REPO_ROOT, 'bin', 'train.py')


def make_split(rng, sizes):
  """writer -> (pixels [n, 28, 28] in [0, 1], 1 = background; labels [n])."""
  split = {}
  for writer, size in zip(WRITERS, sizes, strict=True):
    ink = rng.random((size, 28, 28)) < 0.2
    pixels = np.where(ink, rng.integers(0, 255, (size, 28, 28)) / 255, 1.0).astype(np.float32)
    split[writer] = (pixels, rng.integers(0, 10, size))
  return split


def write_database(path, splits):
  """Writes `{split_name: {writer: (pixels, labels)}}` as TFF's SqlClientData reads it."""
  with sqlite3.connect(path) as connection:
    connection.execute('CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT '
                       'NULL, serialized_example_proto BLOB NOT NULL);')
    connection.execute('CREATE TABLE client_metadata (client_id TEXT NOT NULL, split_name TEXT '
                       'NOT NULL, num_examples INTEGER NOT NULL);')
    for split_name, writers in splits.items():
      for writer, (pixels, labels) in writers.items():
        for image, label in zip(pixels, labels, strict=True):
          proto = tf.train.Example(features=tf.train.Features(feature={
              'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
              'pixels': tf.train.Feature(float_list=tf.train.FloatList(value=image.ravel())),
          }))
          connection.execute('INSERT INTO examples VALUES (?, ?, ?);',
                             (split_name, writer, proto.SerializeToString()))
        connection.execute('INSERT INTO client_metadata VALUES (?, ?, ?);',
                           (writer, split_name, len(labels)))
  connection.close()


@pytest.fixture(scope='module')
def emnist_dir(tmp_path_factory):
  """(data_dir, {split: {writer: (pixels, labels)}}) of a tiny digits-only file."""
  rng = np.random.default_rng(7)
  splits = {TRAIN: make_split(rng, TRAIN_SIZES), TEST: make_split(rng, TEST_SIZES)}
  directory = tmp_path_factory.mktemp('emnist')
  write_database(directory / emnist_sqlite.DATABASE_FILE, splits)
  return directory, splits


@pytest.fixture(scope='module')
def task(emnist_dir):
  return emnist.EmnistTask(data_dir=str(emnist_dir[0]), width=0.0625)


def reference(writers):
  """Model pixels [n, 28, 28, 1] in [-1, 1] and labels of writers' data, concatenated."""
  pixels = np.concatenate([writers[w][0] for w in WRITERS])
  return (1 - 2 * pixels)[..., None], np.concatenate([writers[w][1] for w in WRITERS])


def test_the_file_is_in_the_format_tffs_loader_reads(emnist_dir):
  directory, splits = emnist_dir
  train, test = tff.simulation.datasets.emnist.load_data(only_digits=True,
                                                         cache_dir=str(directory))
  assert list(train.client_ids) == list(WRITERS) == list(test.client_ids)
  elements = list(train.create_tf_dataset_for_client(WRITERS[2]))
  pixels, labels = splits[TRAIN][WRITERS[2]]
  np.testing.assert_array_equal(np.stack([e['pixels'] for e in elements]), pixels)
  np.testing.assert_array_equal([e['label'] for e in elements], labels)


def test_examples_labels_and_writers_match_the_file(task, emnist_dir):
  _, splits = emnist_dir
  examples, labels = reference(splits[TEST])
  np.testing.assert_array_equal(task.examples, examples)
  np.testing.assert_array_equal(task.labels, labels)
  assert task.examples.dtype == np.float32 and task.labels.dtype == np.int64
  assert task.data_shape == (28, 28, 1) and task.num_labels == 10
  assert task.client_ids == list(WRITERS) and task.client_indices is None
  assert task.has_natural_clients
  population = task.natural_population()
  assert population.num_clients == 4
  np.testing.assert_array_equal(population.client_sizes, TRAIN_SIZES)
  np.testing.assert_array_equal(task.client_sizes, TRAIN_SIZES)


def test_background_is_minus_one_and_ink_brighter(task, emnist_dir):
  _, splits = emnist_dir
  pixels = splits[TEST][WRITERS[0]][0][0]
  image = task.examples[0, :, :, 0]
  assert np.all(image[pixels == 1.0] == -1.0)
  assert np.all(image[pixels < 1.0] > -1.0) and image.max() <= 1.0


def test_writers_are_read_on_the_worker(task, emnist_dir, tff_context):
  _, splits = emnist_dir
  for conditional_gan in (False, True):
    population = task.natural_population(conditional_gan)
    read = tff.tensorflow.computation(population.client_examples_tensor,
                                      tff.TensorType(np.int64))
    for client_id, writer in enumerate(WRITERS):
      pixels, labels = splits[TRAIN][writer]
      examples = np.asarray(read(client_id))
      if conditional_gan:
        examples, packed_labels = conditional.unpack(examples, 10)
        np.testing.assert_array_equal(packed_labels, labels)
      np.testing.assert_array_equal(examples, (1 - 2 * pixels)[..., None])
  subset = data.ClientSubset(task.natural_population(), [3, 1])
  read = tff.tensorflow.computation(subset.client_examples_tensor, tff.TensorType(np.int64))
  np.testing.assert_array_equal(np.asarray(read(0)),
                                (1 - 2 * splits[TRAIN][WRITERS[3]][0])[..., None])


def test_round_dataset_holds_each_example_once(task, emnist_dir, tff_context):
  population = task.natural_population()
  work = data.LocalWork(batch_size=4)

  @tff.tensorflow.computation(tff.TensorType(np.int64, [2]))
  def count_and_sum(key):
    return population.dataset(key, work).reduce(
        (np.int64(0), np.float32(0)),
        lambda state, batch: (state[0] + tf.shape(batch, out_type=tf.int64)[0],
                              state[1] + tf.reduce_sum(batch)))

  count, total = count_and_sum(np.array([2, 99], np.int64))
  assert count == TRAIN_SIZES[2]
  assert total == pytest.approx((1 - 2 * emnist_dir[1][TRAIN][WRITERS[2]][0]).sum(), rel=1e-5)


@pytest.mark.parametrize('setup, message', [
    (lambda d: None, 'emnist_all.sqlite not found in'),
    (lambda d: (d / 'emnist_all.sqlite.lzma').write_bytes(b'x'), 'is still compressed'),
])
def test_missing_file_is_one_line_and_nothing_is_downloaded(setup, message, tmp_path,
                                                            monkeypatch):
  def no_download(*args, **kwargs):
    pytest.fail(f'TFF tried to download {args}')

  monkeypatch.setattr(download, 'get_compressed_file', no_download)
  monkeypatch.setattr(download, '_fetch_lzma_file', no_download)
  setup(tmp_path)
  before = sorted(os.listdir(tmp_path))
  with pytest.raises(emnist_sqlite.EmnistError, match=message) as error:
    emnist.EmnistTask(data_dir=str(tmp_path))
  assert '\n' not in str(error.value) and 'xz -d' in str(error.value)
  assert sorted(os.listdir(tmp_path)) == before  # No empty database left behind.
  missing = tmp_path / 'nowhere'
  with pytest.raises(emnist_sqlite.EmnistError, match=emnist_sqlite.DATABASE_URL):
    emnist.EmnistTask(data_dir=str(missing))
  assert not missing.exists()


def test_corrupt_file_is_one_line(tmp_path):
  (tmp_path / emnist_sqlite.DATABASE_FILE).write_bytes(b'this is not an sqlite database\n' * 200)
  with pytest.raises(emnist_sqlite.EmnistError, match='is not a readable SQLite database') as error:
    emnist.EmnistTask(data_dir=str(tmp_path))
  assert '\n' not in str(error.value)


def test_file_without_the_tables_is_one_line(tmp_path):
  with sqlite3.connect(tmp_path / emnist_sqlite.DATABASE_FILE) as connection:
    connection.execute('CREATE TABLE photos (id INTEGER);')
  connection.close()
  with pytest.raises(emnist_sqlite.EmnistError,
                     match='lacks the tables of federated EMNIST') as error:
    emnist.EmnistTask(data_dir=str(tmp_path))
  assert '\n' not in str(error.value)


def test_missing_split_is_one_line(emnist_dir):
  with pytest.raises(emnist_sqlite.EmnistError, match="no writers in split 'all_train'") as error:
    emnist.EmnistTask(data_dir=str(emnist_dir[0]), only_digits=False)
  assert '\n' not in str(error.value)


@pytest.mark.parametrize('model', ['dcgan', 'mlp'])
def test_networks_map_noise_to_images_without_batch_norm(emnist_dir, model):
  task = emnist.EmnistTask(data_dir=str(emnist_dir[0]), model=model, width=0.0625)
  for conditional_gan, channels in ((False, 1), (True, 11)):
    models = task.gan_models(conditional_gan)
    generator, discriminator = models.generator_fn(), models.discriminator_fn()
    images = generator(tf.random.normal([3, models.noise_dim]))
    assert images.shape == (3, 28, 28, channels)
    assert discriminator(images).shape == (3, 1)
    for network in (generator, discriminator):
      assert not any(isinstance(layer, tf.keras.layers.BatchNormalization)
                     for layer in network.submodules)


def test_evaluate_predict_and_render(task, tmp_path):
  reference_metrics = task.prepare_evaluation(str(tmp_path / 'classifier'))
  assert set(reference_metrics) == set(task.metric_names)
  metrics = task.evaluate(task.examples)
  assert all(math.isfinite(metrics[name]) for name in task.metric_names)
  assert 1 <= metrics['classifier_score'] <= 10
  assert task.predict_labels(task.examples[:5]).shape == (5,)
  path = tmp_path / 'grid.png'
  task.render(task.examples, str(path))
  with Image.open(path) as image:
    pixels = np.asarray(image)
  # 12 images, 8 columns: 2 rows of 2x-upscaled 28x28 cells with 2 px padding.
  assert pixels.shape == (2 * 58 + 2, 8 * 58 + 2)
  first = pixels[2:58, 2:58]
  background = np.repeat(np.repeat(task.examples[0, :, :, 0] == -1, 2, 0), 2, 1)
  assert np.all(first[background] == 0)


def test_federated_evaluation_reads_writers_and_labels_on_the_worker(task, emnist_dir,
                                                                     tff_context):
  population = task.natural_population()
  pixels, labels = reference(emnist_dir[1][TRAIN])
  for k, writer_labels in enumerate(np.split(labels, np.cumsum(TRAIN_SIZES)[:-1])):
    np.testing.assert_array_equal(population.client_labels_tensor(tf.constant(k, tf.int64)),
                                  writer_labels)
  classifier = evaluation.ImageClassifier(evaluation.build_model((28, 28, 1), 10, 0), '', False)
  count, mean, covariance = federated_eval.feature_moments(classifier, population)
  pooled = classifier.activations(pixels).astype(np.float64)
  assert count == sum(TRAIN_SIZES)
  np.testing.assert_allclose(mean, pooled.mean(axis=0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(covariance, np.cov(pooled, rowvar=False), rtol=1e-4, atol=1e-7)


def run_train(output_dir, data_dir, *extra):
  return subprocess.run(
      [sys.executable, TRAIN_BINARY, '--task=emnist', f'--data_dir={data_dir}', '--rounds=2',
       '--clients_per_round=2', '--model_width=0.0625', '--batch_size=4', '--eval_every=1',
       '--num_eval_samples=64', '--noprogress', f'--output_dir={output_dir}', *extra],
      capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)


@pytest.mark.parametrize('extra, columns', [
    ((), ('frechet_distance', 'classifier_score')),
    # Packed conditional examples, evaluated on the clients: the classifier drops the label
    # planes, labels come from the writers' rows.
    (('--conditional', '--eval=federated'),
     ('frechet_distance', 'classifier_score', 'conditional_accuracy')),
])
def test_train_binary_runs_on_emnist(extra, columns, emnist_dir, tmp_path):
  result = run_train(tmp_path / 'run', emnist_dir[0], *extra)
  assert result.returncode == 0, result.stderr
  assert not workers_logging_to(tmp_path / 'run' / 'worker.log')
  with open(tmp_path / 'run' / 'metrics.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert [row['round'] for row in rows] == ['1', '2']
  for row in rows:
    assert int(row['clients']) == 2
    for column in columns:
      assert math.isfinite(float(row[column])), column
  if extra:
    assert all(0 <= float(row['conditional_accuracy']) <= 1 for row in rows)
  assert sorted(os.listdir(tmp_path / 'run' / 'samples')) == ['round_00001.png',
                                                              'round_00002.png']
