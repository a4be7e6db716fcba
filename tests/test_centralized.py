"""`--scheme=centralized`: the same nets and losses on the pooled data, as many steps as FedGAN."""

import dataclasses

import numpy as np
from test_train_binary import read_rows, run_train

import tasks
from tff_gan.clients.partition import partition
from tff_gan.run import config as config_lib
from tff_gan.run import schemes


def test_steps_per_round_equal_the_federated_total():
  task = tasks.get_task('ring')
  config = config_lib.TrainConfig(scheme='centralized', num_clients=10, clients_per_round=4,
                                  batch_size=64, local_epochs=2)
  # Independently: the FedGAN partition's client sizes, each client's steps, times clients.
  sizes = [len(i) for i in partition(task.labels, 10, scheme='iid', seed=config.seed)]
  expected = round(np.mean([2 * np.ceil(n / 64) for n in sizes]) * 4)
  assert schemes.SCHEMES['centralized'].steps_per_round(config, task) == expected
  capped = dataclasses.replace(config, local_steps=5)
  assert schemes.SCHEMES['centralized'].steps_per_round(capped, task) == 5 * 4


def test_a_centralized_run_trains_one_pooled_client_for_the_federated_steps(tmp_path):
  result = run_train('--scheme=centralized', '--rounds=2', '--eval_every=2',
                     '--model_width=0.03125', '--num_clients=4', '--clients_per_round=3',
                     '--local_steps=2', '--batch_size=16', '--num_eval_samples=200',
                     '--noprogress', f'--output_dir={tmp_path}')
  assert result.returncode == 0, result.stderr
  for row in read_rows(tmp_path / 'metrics.csv'):
    assert row['clients'] == row['clients_completed'] == '1'
    assert int(row['num_examples']) == 3 * 2 * 16  # clients_per_round x local_steps x batch.
    assert row['bytes_down'] == row['bytes_up'] == ''  # Nothing is communicated.
