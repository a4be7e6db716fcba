"""`--aggregator=he` in the run loop: one encrypted round against the plaintext mean round
(and, under DP, against TFF's DP aggregator), the key holder's noise and ε, bytes as they
travel, clipping, refusals, and no aggregator process left behind."""

import csv
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import as_numpy

import tasks
from tff_gan.run import config as config_lib
from tff_gan.run import he_rounds, training
from tff_gan.secure import he

TINY = dict(task='ring', model_width=0.0625, local_steps=2, batch_size=16, eval_every=1,
            num_eval_samples=200, num_clients=4, clients_per_round=4, rounds=1)
# A client's weight: 2 local steps of 16 examples.
MAX_WEIGHT = 32
TINY_CLIP = config_lib.TrainConfig(aggregator='he').effective_he_clip


def read_rows(output_dir):
  with open(os.path.join(output_dir, 'metrics.csv'), newline='') as f:
    return list(csv.DictReader(f))


def aggregator_children() -> list[int]:
  """Live aggregator processes (`secure.he_process`) this test process started."""
  found = []
  for entry in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{entry}/cmdline', 'rb') as f:
        command = f.read()
      with open(f'/proc/{entry}/stat') as f:
        state, parent = f.read().rsplit(') ', 1)[1].split()[:2]
    except OSError:  # Gone meanwhile.
      continue
    if (b'tff_gan.secure.he_process' in command and int(parent) == os.getpid()
        and state != 'Z'):
      found.append(int(entry))
  return found


def train(tmp_path_factory, name, **settings):
  config = config_lib.TrainConfig(**{**TINY, **settings},
                                  output_dir=str(tmp_path_factory.mktemp(name)))
  result = training.train(config, tasks.task_from_config(config), show_progress=False)
  return result, read_rows(config.output_dir)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """One round from the same initial state: plaintext mean, HE, and HE with a tiny clip."""
  return {name: train(tmp_path_factory, name, **settings) for name, settings in [
      ('mean', {}), ('he', dict(aggregator='he')),
      ('he_clipped', dict(aggregator='he', he_clip=1e-3))]}


def test_an_encrypted_round_equals_the_plaintext_round_within_the_fixed_point_bound(runs):
  (mean, _), (encrypted, _) = runs['mean'], runs['he']
  fraction_bits = he.choose_params(TINY_CLIP, MAX_WEIGHT, TINY['clients_per_round']).fraction_bits
  # Server SGD at learning rate 1: new weights = old + mean update, and the decoded mean is
  # within 2^-f of the exact one per coordinate (plus float32 rounding of the weights).
  differences = [np.abs(ours - theirs).max() for ours, theirs in zip(
      tf.nest.flatten(as_numpy(encrypted.state.weights)),
      tf.nest.flatten(as_numpy(mean.state.weights)), strict=True)]
  assert max(differences) <= 2.0**-fraction_bits + 1e-6
  assert max(differences) > 0  # Rounding happened: the two paths are not the same code.


def test_losses_travel_encrypted_and_decode_to_the_clients_mean(runs):
  (_, plain_rows), (_, he_rows) = runs['mean'], runs['he']
  # Losses are encoded at a step of 2^-f · METRIC_RANGE · √3 / clip.
  fraction_bits = he.choose_params(TINY_CLIP, MAX_WEIGHT, TINY['clients_per_round']).fraction_bits
  step = 2.0**-fraction_bits * he_rounds.METRIC_RANGE * np.sqrt(3) / TINY_CLIP
  for column in ('d_loss', 'g_loss'):
    assert float(he_rows[0][column]) == pytest.approx(float(plain_rows[0][column]),
                                                      abs=step + 1e-5)
  assert he_rows[0]['num_examples'] == plain_rows[0]['num_examples'] == str(4 * MAX_WEIGHT)


def test_bytes_count_ciphertexts_up_and_the_public_key_down(runs):
  (_, plain_rows), (encrypted, he_rows) = runs['mean'], runs['he']
  params = he.choose_params(TINY_CLIP, MAX_WEIGHT, TINY['clients_per_round'])
  context = len(he.KeyHolder(params).public_context_bytes())
  # Every client downloads the key once (its size varies by a few bytes with compression).
  extra_down = int(he_rows[0]['bytes_down']) - int(plain_rows[0]['bytes_down'])
  assert extra_down == pytest.approx(TINY['clients_per_round'] * context, rel=0.01)
  # Up: each client's values (weights, 2 losses, the clipped flag) and its weight, in
  # ciphertexts of N slots; a BFV ciphertext of N = 8192 with a 120-bit modulus holds
  # 2 polynomials × 8192 coefficients × 2 primes × 8 bytes = 262 KB before compression.
  values = sum(w.size for w in tf.nest.flatten(as_numpy(encrypted.state.weights))) + 3
  ciphertexts = TINY['clients_per_round'] * -(-(values + 1) // he.POLY_MODULUS_DEGREE)
  per_ciphertext = int(he_rows[0]['bytes_up']) / ciphertexts
  assert 0.4 * 262_144 < per_ciphertext <= 262_144 + 1024
  assert int(he_rows[0]['bytes_up']) > 4 * int(plain_rows[0]['bytes_up'])


def test_clipped_fraction_says_whether_the_clip_bit(runs):
  assert float(runs['he'][1][0]['clipped_fraction']) == 0.0
  assert float(runs['he_clipped'][1][0]['clipped_fraction']) == 1.0
  assert 'clipped_fraction' not in runs['mean'][1][0]


def test_no_aggregator_process_survives_the_runs(runs):
  assert runs  # The module's runs have finished.
  assert aggregator_children() == []


@pytest.mark.parametrize('settings, message', [
    (dict(he_clip=1.0), '--he_clip applies only to --aggregator=he'),
    (dict(aggregator='he', he_clip=-1.0), '--he_clip must be a positive number'),
    (dict(aggregator='he', mode='async', buffer_size=2), 'synchronous rounds only'),
    (dict(aggregator='he', dp_noise_multiplier=1.0, dp_unit='example'),
     '--dp_unit=example is not built yet'),
    (dict(aggregator='he', dp_noise_multiplier=1.0, he_clip=1.0), 'clients clip to --dp_clip'),
    (dict(aggregator='he', dp_noise_multiplier=1.0, dp_adaptive_clip_quantile=0.5),
     'drop --dp_adaptive_clip_quantile'),
    (dict(aggregator='he', scheme='multi_d'), '--aggregator has no meaning for --scheme=multi_d'),
])
def test_incompatible_settings_are_refused_in_one_line(settings, message):
  with pytest.raises(config_lib.ConfigError, match=message.replace('(', r'\(')):
    config_lib.TrainConfig(output_dir='/tmp/unused', **settings).validate()


def test_a_configuration_whose_sums_could_wrap_is_a_usage_error(tmp_path):
  config = config_lib.TrainConfig(**{**TINY, 'aggregator': 'he', 'he_clip': 1e9},
                                  output_dir=str(tmp_path / 'out'))
  with pytest.raises(config_lib.ConfigError, match='plaintext modulus'):
    training.train(config, tasks.task_from_config(config), show_progress=False)
  assert not os.path.exists(tmp_path / 'out' / 'metrics.csv')
  assert not os.path.exists(tmp_path / 'out' / 'config.json')
  assert aggregator_children() == []


def test_max_client_weight_is_the_largest_example_count_of_a_round():
  assert he_rounds.max_client_weight([100, 300], 2, 16, None) == 600
  assert he_rounds.max_client_weight([100, 300], 2, 16, 5) == 80


NOISE = 2.0


@pytest.fixture(scope='module')
def dp_runs(tmp_path_factory):
  """One DP-FedAvg-GAN round: TFF's DP aggregator without noise, and the key holder's, with
  and without noise (a reproducible key, so the two HE runs differ by the noise alone)."""
  common = dict(scheme='dp_fedavg_gan', dp_noise='reproducible')
  return {name: train(tmp_path_factory, name, **common, **settings) for name, settings in [
      ('mean', dict(dp_noise_multiplier=0.0)),
      ('he', dict(dp_noise_multiplier=0.0, aggregator='he')),
      ('he_noised', dict(dp_noise_multiplier=NOISE, aggregator='he'))]}


def discriminator(result):
  return np.concatenate([w.ravel() for w in as_numpy(result.state.weights.discriminator)])


def test_under_dp_the_encrypted_sum_equals_tffs_dp_aggregator_without_noise(dp_runs):
  clip = config_lib.TrainConfig().effective_dp_clip
  fraction_bits = he.choose_params(clip, 1, TINY['clients_per_round']).fraction_bits
  # Both clip each client's D update to C and average unweighted over the round's clients.
  difference = np.abs(discriminator(dp_runs['he'][0]) - discriminator(dp_runs['mean'][0]))
  assert difference.max() <= 2.0**-fraction_bits + 1e-6


def test_the_key_holder_adds_noise_of_std_z_clip_over_clients(dp_runs):
  clip = config_lib.TrainConfig().effective_dp_clip
  noise = discriminator(dp_runs['he_noised'][0]) - discriminator(dp_runs['he'][0])
  expected = NOISE * clip / TINY['clients_per_round']
  # The sample std of n normal draws is within 4 standard errors (std/√(2n)) of the truth.
  assert abs(noise.std() - expected) < 4 * expected / np.sqrt(2 * noise.size)
  assert abs(noise.mean()) < 4 * expected / np.sqrt(noise.size)


def test_under_dp_epsilon_is_accounted_as_with_the_mean_aggregator(dp_runs, tmp_path_factory):
  _, he_rows = dp_runs['he_noised']
  _, mean_rows = train(tmp_path_factory, 'mean_noised', scheme='dp_fedavg_gan',
                       dp_noise_multiplier=NOISE)
  assert float(he_rows[0]['epsilon']) == pytest.approx(float(mean_rows[0]['epsilon']))
  # Nothing un-noised is released: no losses, counts or clipping flags.
  assert not he_rows[0]['d_loss'] and not he_rows[0]['num_examples']
  assert 'clipped_fraction' not in he_rows[0]
