"""Federated evaluation (`--eval=federated`): the same numbers as pooling, without the pool."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO_ROOT

from tasks import digits, evaluation, federated_eval
from tff_gan.clients import partition, populations
from tff_gan.run import rundir
from tff_gan.run.config import ConfigError, TrainConfig

IMAGE_SHAPE = (8, 8, 1)


@pytest.fixture(scope='module')
def task():
  return digits.DigitsTask()


@pytest.fixture(scope='module')
def skewed_clients(task):
  """Three clients with Dirichlet(0.3) label skew, labels known to the population."""
  indices = partition.partition(task.labels, 3, scheme='dirichlet', dirichlet_alpha=0.3, seed=1)
  return populations.ClientPopulation(task.examples, indices, labels=task.labels), indices


def random_classifier(seed=3):
  return evaluation.ImageClassifier(evaluation.build_model(IMAGE_SHAPE, 10, seed), '', False)


def test_forward_is_the_keras_network():
  model = evaluation.build_model(IMAGE_SHAPE, 10, 5)
  model.set_weights([w + np.random.default_rng(i).normal(0, 0.1, w.shape).astype(np.float32)
                     for i, w in enumerate(model.get_weights())])  # Non-zero biases too.
  images = np.random.default_rng(0).uniform(-1, 1, (7, *IMAGE_SHAPE)).astype(np.float32)
  activations, logits = evaluation.forward(model.get_weights(), tf.constant(images))
  keras_activations, keras_logits = model(images, training=False)
  np.testing.assert_allclose(activations, keras_activations, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits, keras_logits, rtol=1e-5, atol=1e-5)


def test_moments_summed_from_clients_equal_the_pooled_ones(task, skewed_clients, tff_context):
  population, indices = skewed_clients
  classifier = random_classifier()
  count, mean, covariance = federated_eval.feature_moments(classifier, population)
  pooled = classifier.activations(task.examples[np.concatenate(indices)]).astype(np.float64)
  assert count == len(task.examples)
  np.testing.assert_allclose(mean, pooled.mean(axis=0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(covariance, np.cov(pooled, rowvar=False), rtol=1e-4, atol=1e-7)
  # So the Fréchet distance of any generated set is the pooled one, to float error.
  generated = classifier.activations(task.examples[::-7] * 0.5)
  assert evaluation.frechet_distance_from_moments(mean, covariance, generated) == pytest.approx(
      evaluation.frechet_distance(pooled, generated), rel=1e-5)


def test_fedavg_of_one_client_is_its_own_adam_training(task, tff_context):
  # One client, one round, two epochs of one full batch each: FedAvg with server SGD at rate
  # 1 must land on the weights of two Keras Adam steps from the same start.
  images, labels = task.examples[:200], task.labels[:200]
  population = populations.ClientPopulation(images, [np.arange(200)], labels=labels)
  trained = federated_eval.train_classifier(
      population, image_shape=IMAGE_SHAPE, num_classes=10, seed=4, rounds=1,
      clients_per_round=1, local_epochs=2, batch_size=200, learning_rate=1e-2)
  model = evaluation.build_model(IMAGE_SHAPE, 10, 4)
  optimizer = tf.keras.optimizers.Adam(1e-2)
  loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  for _ in range(2):
    with tf.GradientTape() as tape:
      value = loss(labels, model(images, training=True)[1])
    optimizer.apply_gradients(zip(tape.gradient(value, model.trainable_variables),
                                  model.trainable_variables, strict=True))
  start = evaluation.build_model(IMAGE_SHAPE, 10, 4).get_weights()
  for federated, central, initial in zip(trained.model.get_weights(), model.get_weights(),
                                         start, strict=True):
    # Adam moves a weight by up to the learning rate (1e-2) a step. TFF's and Keras's Adam
    # place epsilon differently and sum in different orders, which shows where a gradient is
    # near 0 (Adam divides it by its own size): agreement to a few % of one step. A round
    # that skipped an epoch or mis-weighted the update would miss by a whole step.
    assert np.abs(central - initial).max() > 1e-2
    gap = np.abs(federated - central)
    assert gap.max() < 1e-3 and gap.mean() < 1e-5


def test_fedavg_classifier_learns_digits_from_skewed_clients(task, skewed_clients, tff_context):
  population, _ = skewed_clients
  evaluation_ = federated_eval.prepare(population, image_shape=IMAGE_SHAPE, num_classes=10,
                                       rounds=8, clients_per_round=3)
  accuracy = np.mean(evaluation_.classifier.logits(task.examples).argmax(1) == task.labels)
  assert accuracy > 0.85
  real = evaluation_.metrics(task.examples)
  noise = evaluation_.metrics(np.random.default_rng(0).uniform(-1, 1, (500, *IMAGE_SHAPE)))
  assert real['frechet_distance'] < 1e-3 * noise['frechet_distance'] + 1.0
  assert real['classifier_score'] > 5 > noise['classifier_score']


@pytest.mark.parametrize('task_name', ['ring', 'grid', 'tabular', 'image_folder'])
def test_tasks_without_a_classifier_refuse_federated_evaluation(task_name):
  with pytest.raises(ConfigError, match='--eval=federated .* use --eval=pooled'):
    TrainConfig(task=task_name, eval='federated',
                data_dir='/data' if task_name in ('tabular', 'image_folder') else '',
                partition='natural' if task_name in ('tabular', 'image_folder') else 'iid',
                num_clients=0 if task_name in ('tabular', 'image_folder') else 10).validate()


def test_train_binary_evaluates_on_the_clients(tmp_path):
  output_dir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'bin', 'train.py'), '--task=digits',
       '--eval=federated', '--partition=pathological', '--rounds=2', '--eval_every=1',
       '--num_eval_samples=200', '--model_width=0.25', '--local_steps=2', '--batch_size=16',
       '--noprogress', f'--output_dir={output_dir}'],
      capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
  assert result.returncode == 0, result.stderr
  rows = rundir.read_metrics(str(output_dir))
  assert [row['round'] for row in rows] == ['1', '2']
  assert all(math.isfinite(float(row['frechet_distance'])) for row in rows)
  # No pooled held-out set exists, so no reference scores are written.
  assert not (output_dir / rundir.REFERENCE_FILE).exists()
  assert json.loads((output_dir / 'config.json').read_text())['eval'] == 'federated'
  # bin/evaluate.py trains the same classifier on the same clients: the same figures.
  evaluated = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'bin', 'evaluate.py'),
       f'--output_dir={output_dir}', '--json'], capture_output=True, text=True, timeout=600,
      cwd=REPO_ROOT)
  assert evaluated.returncode == 0, evaluated.stderr
  metrics = json.loads(evaluated.stdout)
  for name in ('frechet_distance', 'classifier_score'):
    assert metrics[name] == pytest.approx(float(rows[-1][name]), rel=1e-5)
