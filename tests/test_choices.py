"""Every choice `tff_gan.choices` lists is implemented, and nothing else is accepted.

The choice lists are spelled once (`tff_gan.choices`) and read by the configuration and by
each implementation; these tests build every listed choice with the implementation itself.
"""

from __future__ import annotations

import numpy as np
import pytest

import tasks
from tff_gan import choices
from tff_gan.algorithms import aggregators, optimizers
from tff_gan.clients import partition, sampling
from tff_gan.core import losses
from tff_gan.privacy import accounting
from tff_gan.run import schemes
from tff_gan.run.config import ConfigError, TrainConfig


def test_every_task_is_registered():
  assert sorted(tasks.TASKS) == sorted(choices.TASKS)


def test_every_scheme_is_an_object():
  assert tuple(schemes.SCHEMES) == choices.SCHEMES
  for name, scheme in schemes.SCHEMES.items():
    assert scheme.name == name


@pytest.mark.parametrize('name', choices.AGGREGATORS)
def test_every_aggregator_builds(name):
  assert aggregators.build_aggregator(name) is not None


@pytest.mark.parametrize('name', choices.OPTIMIZERS)
def test_every_optimizer_builds(name):
  assert optimizers.build_optimizer(name, 0.1) is not None


def test_client_and_server_optimizers_are_built_optimizers():
  assert set(choices.CLIENT_OPTIMIZERS) <= set(choices.OPTIMIZERS)
  assert set(choices.SERVER_OPTIMIZERS) <= set(choices.OPTIMIZERS)
  with pytest.raises(ValueError, match='unknown optimizer'):
    optimizers.build_optimizer('lamb', 0.1)


@pytest.mark.parametrize('name', choices.LOSSES)
def test_every_loss_exists(name):
  assert losses.get_loss(name).name == name


@pytest.mark.parametrize('split', choices.SPLITS)
def test_every_split_partitions(split):
  labels = np.repeat(np.arange(4), 10)
  parts = partition.partition(labels, 4, scheme=split, seed=0)
  assert sorted(np.concatenate(parts).tolist()) == list(range(40))


def test_partitions_are_the_splits_and_natural():
  assert choices.PARTITIONS == (*choices.SPLITS, 'natural')
  with pytest.raises(ValueError, match='unknown scheme'):
    partition.partition(np.zeros(4, int), 2, scheme='natural')


@pytest.mark.parametrize('method', choices.CLIENT_SAMPLING)
def test_every_client_sampling_samples_and_is_accounted(method):
  ids = sampling.sample_clients(20, 5, round_num=1, seed=0, method=method)
  assert set(ids.tolist()) <= set(range(20))
  assert accounting.Sampling(method, 20, 5).rate == 0.25


@pytest.mark.parametrize('name', choices.DP_ACCOUNTANTS)
def test_every_accountant_exists(name):
  assert accounting.make_accountant(name, accounting.Sampling('poisson', 20, 5)) is not None


@pytest.mark.parametrize('field, values', [
    ('task', choices.TASKS), ('scheme', choices.SCHEMES), ('loss', choices.LOSSES),
    ('client_optimizer', choices.CLIENT_OPTIMIZERS),
    ('server_optimizer', choices.SERVER_OPTIMIZERS), ('aggregator', choices.AGGREGATORS),
    ('executor', choices.EXECUTORS), ('mode', choices.MODES),
])
def test_config_refuses_what_is_not_listed(field, values):
  with pytest.raises(ConfigError, match=f'unknown --{field}'):
    TrainConfig(**{field: 'no_such_choice'}).validate()
  assert 'no_such_choice' not in values
