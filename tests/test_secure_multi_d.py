"""`--aggregator=he` and `secagg` with the client-resident discriminators (`--scheme=multi_d`,
`gs_wgan`): the secure run against the plaintext mean run (the generator and every client's
discriminator), SecAgg+ with a dropout, GS-WGAN's client-side noise summed as it is, the
refusals, and `bin/train.py` leaving no aggregator process behind."""

import dataclasses
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import as_numpy
from test_secure_rounds import BINARY_FLAGS, aggregator_children, read_rows, train

from tff_gan.run import client_states as client_states_lib
from tff_gan.run import config as config_lib
from tff_gan.run import secure_rounds, training

ROUNDS = 3
MULTI_D = dict(scheme='multi_d', server_gen_steps=2, rounds=ROUNDS, eval_every=ROUNDS)
# GS-WGAN's noise is seeded by each client's trained discriminator, so two runs draw the same
# noise only while their discriminators are bit for bit the same: in their first round.
GS_WGAN = dict(MULTI_D, scheme='gs_wgan', rounds=1, eval_every=1, dp_noise_multiplier=0.5,
               dp_noise='reproducible')
CLIENTS = 4
MAX_WEIGHT = 32  # multi_d: 2 local steps of 16 examples. gs_wgan's clients send 1.
# The secure runs' mean feedback is within 2^-f of the plain one per coordinate; three rounds
# of Adam steps on it and of discriminators trained against the generators that result may
# grow the difference, by far less than this factor.
GROWTH = 64
FLOAT32 = 1e-5


def fraction_bits(aggregator, *, gs_wgan=False):
  """f of the secure sum `training` sets up for these runs: the wide BFV format; multi_d's
  largest clip up to `FEEDBACK_CLIP` at 8 bits, gs_wgan's bound on its sanitized feedback."""
  settings = secure_rounds.SecureSettings(
      aggregator.removeprefix('gs_').removesuffix('_dropout'), clip=1.0,
      max_weight=1 if gs_wgan else MAX_WEIGHT, max_clients=CLIENTS, seed=0, wide=True)
  if gs_wgan:
    clip = secure_rounds.sanitized_bound(config_lib.TrainConfig().effective_dp_clip, 0.5,
                                         samples=2 * 16, sample_size=2)
  else:
    clip = settings.largest_clip(training.FEEDBACK_CLIP)
  return dataclasses.replace(settings, clip=clip).fraction_bits()


def train_keeping_client_states(tmp_path_factory, name, **settings):
  """`train`, and every client's discriminator state it ends with (`ClientStates.stacks`)."""
  kept = []

  class Kept(client_states_lib.ClientStates):
    def __init__(self, *args):
      super().__init__(*args)
      kept.append(self)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(training, 'ClientStates', Kept)
    result, rows = train(tmp_path_factory, name, **settings)
  return result, rows, kept[0].stacks


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """multi_d (mean and he; mean and secagg with one client of four dropping out in rounds 1
  and 2, all four taking part in round 3: SecAgg+ both with and without a dropout) and gs_wgan
  (mean, he: the same reproducible noise), each pair from the same initial state."""
  return {name: train_keeping_client_states(tmp_path_factory, name, **settings)
          for name, settings in [
              ('mean', MULTI_D), ('he', dict(MULTI_D, aggregator='he')),
              ('mean_dropout', dict(MULTI_D, dropout_rate=0.1)),
              ('secagg_dropout', dict(MULTI_D, aggregator='secagg', dropout_rate=0.1)),
              ('gs_mean', GS_WGAN), ('gs_he', dict(GS_WGAN, aggregator='he'))]}


def largest_differences(ours, theirs):
  """The largest coordinate difference of the generators, and of the clients' states."""
  (ours, _, our_clients), (theirs, _, their_clients) = ours, theirs
  generator = max(np.abs(a - b).max() for a, b in zip(
      tf.nest.flatten(as_numpy(ours.state.weights.generator)),
      tf.nest.flatten(as_numpy(theirs.state.weights.generator)), strict=True))
  clients = max(np.abs(a - b).max() for a, b in zip(our_clients, their_clients, strict=True))
  return generator, clients


@pytest.mark.parametrize('secure,plain', [('he', 'mean'), ('secagg_dropout', 'mean_dropout'),
                                          ('gs_he', 'gs_mean')])
def test_a_secure_run_equals_the_plaintext_run_within_the_fixed_point_bound(runs, secure,
                                                                             plain):
  bits = fraction_bits(secure, gs_wgan=secure.startswith('gs'))
  generator, clients = largest_differences(runs[secure], runs[plain])
  # Within the bound, plus float32 rounding of the weights and of the plaintext mean.
  assert generator <= GROWTH * 2.0**-bits + FLOAT32
  assert clients <= GROWTH * 2.0**-bits + FLOAT32  # Every client's discriminator too.
  rows = runs[secure][1]
  if secure.startswith('gs'):  # Under DP metrics.csv has no clipped fraction (`recorder`).
    assert 'clipped_fraction' not in rows[0]
  else:
    assert [float(row['clipped_fraction']) for row in rows] == [0.0] * len(rows)
  assert all(int(row['bytes_up']) > 0 for row in rows)


def test_secagg_survives_one_dropout_of_four(runs):
  rows = runs['secagg_dropout'][1]
  assert [int(row['clients_completed']) for row in rows] == [3, 3, 4]


def test_no_aggregator_process_survives_the_runs(runs):
  assert aggregator_children() == []


@pytest.mark.parametrize('settings,message', [
    (dict(scheme='multi_d', aggregator='robust'), '--aggregator=robust is not built for'),
    (dict(scheme='multi_d', aggregator='he', discriminator_mixture='universal'),
     'odds span e^-40 to e^40'),
])
def test_what_is_not_built_is_refused_in_one_line(settings, message):
  with pytest.raises(config_lib.ConfigError, match=re.escape(message)) as raised:
    config_lib.TrainConfig(output_dir='/tmp/unused', **settings).validate()
  assert '\n' not in str(raised.value)


@pytest.mark.parametrize('settings', [
    dict(scheme='gs_wgan', aggregator='secagg', dp_noise_multiplier=1.0),
    dict(scheme='gs_wgan', aggregator='he', dp_noise_multiplier=1.0, dp_unit='example',
         discriminator_shards=2, secure_clip=50.0),
])
def test_gs_wgan_noised_on_its_clients_is_summed_by_either_protocol(settings):
  config_lib.TrainConfig(output_dir='/tmp/unused', **settings).validate()


def test_bin_train_multi_d_with_he_leaves_no_aggregator_behind(tmp_path):
  from test_secure_rounds import processes_with_mark  # noqa: PLC0415
  from test_train_binary import REPO_ROOT, TRAIN  # noqa: PLC0415

  mark = f'TFF_GAN_TEST_MARK={os.getpid()}-{id(tmp_path)}'
  result = subprocess.run(
      [sys.executable, TRAIN, *BINARY_FLAGS, '--scheme=multi_d', '--server_gen_steps=2',
       '--aggregator=he', '--rounds=2', '--noprogress', f'--output_dir={tmp_path}/run'],
      env={**os.environ, mark.split('=')[0]: mark.split('=')[1]}, cwd=REPO_ROOT,
      capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  rows = read_rows(tmp_path / 'run')
  assert [int(r['round']) for r in rows] == [1, 2]
  assert all(float(r['clipped_fraction']) == 0 and int(r['bytes_up']) > 0 for r in rows)
  assert not processes_with_mark(mark.encode(), b'tff_gan.secure.he_process')
