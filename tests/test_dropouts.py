"""Client dropouts: who survives, and rounds in which nobody does."""

import csv

import numpy as np
import pytest
import tensorflow as tf
from conftest import as_numpy

import tasks
from tff_gan.clients import sampling
from tff_gan.run import config as config_lib
from tff_gan.run import schemes, training
from tff_gan.runtime import contexts


def test_survivors_follow_the_dropout_rate_and_the_seed():
  clients = np.arange(1000)
  survivors = [sampling.surviving_clients(clients, 0.3, round_num=r, seed=0) for r in range(20)]
  assert np.mean([len(s) for s in survivors]) == pytest.approx(700, rel=0.03)
  assert all(set(s) <= set(clients) for s in survivors)
  np.testing.assert_array_equal(survivors[4],
                                sampling.surviving_clients(clients, 0.3, round_num=4, seed=0))
  np.testing.assert_array_equal(sampling.surviving_clients(clients, 0.0, round_num=4, seed=0),
                                clients)
  with pytest.raises(ValueError, match='dropout_rate'):
    sampling.surviving_clients(clients, 1.0, round_num=0, seed=0)


def test_a_round_where_every_client_fails_leaves_the_model_unchanged(tmp_path):
  config = config_lib.TrainConfig(
      rounds=2, num_clients=3, clients_per_round=2, dropout_rate=0.999999, eval_every=10,
      model_width=0.03125, batch_size=16, local_steps=1, num_eval_samples=50,
      output_dir=str(tmp_path))
  task = tasks.get_task('ring', width=config.model_width)
  result = training.train(config, task, show_progress=False)
  with contexts.local_cpp_context():
    initial = schemes.build_process(config, task.gan_models()).initialize()
  assert result.state.round_num == 0
  for got, want in zip(tf.nest.flatten(as_numpy(result.state.weights)),
                       tf.nest.flatten(as_numpy(initial.weights)), strict=True):
    np.testing.assert_array_equal(got, want)
  with open(tmp_path / 'metrics.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert [(r['round'], r['clients'], r['clients_completed'], r['d_loss']) for r in rows] == [
      ('1', '2', '0', ''), ('2', '2', '0', '')]
