"""`--aggregator=he` and `secagg` in the run loop: one secure round against the plaintext
mean round (and, for `he` under DP, against TFF's DP aggregator), the key holder's noise and
ε, SecAgg+ dropouts and aborts against numpy, bytes as they travel, clipping, refusals, and no
aggregator process left behind."""

import collections
import csv
import os
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import as_numpy

import tasks
from tff_gan.core.state import ClientOutput
from tff_gan.run import config as config_lib
from tff_gan.run import secure_rounds, training
from tff_gan.secure import he, secagg

TINY = dict(task='ring', model_width=0.0625, local_steps=2, batch_size=16, eval_every=1,
            num_eval_samples=200, num_clients=4, clients_per_round=4, rounds=1)
# A client's weight: 2 local steps of 16 examples.
MAX_WEIGHT = 32
CLIP = config_lib.TrainConfig(aggregator='he').effective_secure_clip


def fraction_bits(aggregator, clip=CLIP, weight=MAX_WEIGHT, clients=TINY['clients_per_round']):
  if aggregator == 'he':
    return he.choose_params(clip, weight, clients).fraction_bits
  return secagg.choose_fraction_bits(clip, weight, clients)


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
  """One round from the same initial state: plaintext mean, HE, SecAgg+, HE with a tiny clip."""
  return {name: train(tmp_path_factory, name, **settings) for name, settings in [
      ('mean', {}), ('he', dict(aggregator='he')), ('secagg', dict(aggregator='secagg')),
      ('tiny_clip', dict(aggregator='he', secure_clip=1e-3))]}


@pytest.mark.parametrize('aggregator', ['he', 'secagg'])
def test_a_secure_round_equals_the_plaintext_round_within_the_fixed_point_bound(runs,
                                                                                 aggregator):
  (mean, _), (secure, _) = runs['mean'], runs[aggregator]
  # Server SGD at learning rate 1: new weights = old + mean update, and the decoded mean is
  # within 2^-f of the exact one per coordinate (plus float32 rounding of the weights).
  differences = [np.abs(ours - theirs).max() for ours, theirs in zip(
      tf.nest.flatten(as_numpy(secure.state.weights)),
      tf.nest.flatten(as_numpy(mean.state.weights)), strict=True)]
  assert max(differences) <= 2.0**-fraction_bits(aggregator) + 1e-6
  assert max(differences) > 0  # Rounding happened: the two paths are not the same code.


@pytest.mark.parametrize('aggregator', ['he', 'secagg'])
def test_losses_travel_inside_the_sum_and_decode_to_the_clients_mean(runs, aggregator):
  (_, plain_rows), (_, secure_rows) = runs['mean'], runs[aggregator]
  # Losses are encoded at a step of 2^-f · METRIC_RANGE · √3 / clip.
  step = 2.0**-fraction_bits(aggregator) * secure_rounds.METRIC_RANGE * np.sqrt(3) / CLIP
  for column in ('d_loss', 'g_loss'):
    assert float(secure_rows[0][column]) == pytest.approx(float(plain_rows[0][column]),
                                                          abs=step + 1e-5)
  assert secure_rows[0]['num_examples'] == plain_rows[0]['num_examples'] == str(4 * MAX_WEIGHT)


def model_values(result) -> int:
  return sum(w.size for w in tf.nest.flatten(as_numpy(result.state.weights)))


def test_he_bytes_count_ciphertexts_up_and_the_public_key_down(runs):
  (_, plain_rows), (encrypted, he_rows) = runs['mean'], runs['he']
  context = len(he.KeyHolder(he.HeParams(fraction_bits('he'))).public_context_bytes())
  # Every client downloads the key once (its size varies by a few bytes with compression).
  extra_down = int(he_rows[0]['bytes_down']) - int(plain_rows[0]['bytes_down'])
  assert extra_down == pytest.approx(TINY['clients_per_round'] * context, rel=0.01)
  # Up: each client's values (weights, 2 losses, the clipped flag) and its weight, in
  # ciphertexts of N slots; a BFV ciphertext of N = 8192 with a 120-bit modulus holds
  # 2 polynomials × 8192 coefficients × 2 primes × 8 bytes = 262 KB before compression.
  values = model_values(encrypted) + 3
  ciphertexts = TINY['clients_per_round'] * -(-(values + 1) // he.POLY_MODULUS_DEGREE)
  per_ciphertext = int(he_rows[0]['bytes_up']) / ciphertexts
  assert 0.4 * 262_144 < per_ciphertext <= 262_144 + 1024
  assert int(he_rows[0]['bytes_up']) > 4 * int(plain_rows[0]['bytes_up'])


def test_secagg_bytes_count_masked_vectors_keys_and_shares(runs):
  (_, plain_rows), (masked, secagg_rows) = runs['mean'], runs['secagg']
  clients, k = TINY['clients_per_round'], TINY['clients_per_round'] - 1
  # Up, per client: two public keys (64 B), k sealed shares (4 + 94 B), the masked vector
  # (4 B a value: the weights, 2 losses, the clipped flag and the weight) and k opened
  # shares (39 B). Down: k neighbours' keys (4 + 64 B), k sealed shares, the unmask request.
  up = 64 + k * (4 + 94) + 4 * (model_values(masked) + 4) + k * 39
  assert int(secagg_rows[0]['bytes_up']) == clients * up
  extra_down = int(secagg_rows[0]['bytes_down']) - int(plain_rows[0]['bytes_down'])
  assert extra_down == clients * (k * (4 + 64) + k * (4 + 94) + k * 5)


def test_clipped_fraction_says_whether_the_clip_bit(runs):
  assert float(runs['he'][1][0]['clipped_fraction']) == 0.0
  assert float(runs['secagg'][1][0]['clipped_fraction']) == 0.0
  assert float(runs['tiny_clip'][1][0]['clipped_fraction']) == 1.0
  assert 'clipped_fraction' not in runs['mean'][1][0]


def test_no_aggregator_process_survives_the_runs(runs):
  assert runs  # The module's runs have finished.
  assert aggregator_children() == []


class FakeProcess:
  """`client_work` gives fixed outputs; `server_step` records the one output it is given."""

  def __init__(self, deltas, weights):
    self.outputs = [(ClientOutput(delta=[d.astype(np.float32)], num_examples=np.float32(w),
                                  metrics=collections.OrderedDict(discriminator_loss=1.5)),
                     np.int32(0)) for d, w in zip(deltas, weights, strict=True)]
    self.applied = []

  def client_work(self, state, keys):
    return [self.outputs[k] for k in keys]

  def server_step(self, state, outputs, discarded, scales):
    self.applied.append(outputs[0])
    return state + 1, collections.OrderedDict(server=collections.OrderedDict())


@pytest.mark.parametrize('dropped', [(), (2,), (1, 4)])
def test_secagg_recovers_dropouts_below_the_threshold_and_aborts_above(dropped):
  rng = np.random.default_rng(0)
  deltas, weights = rng.normal(0, 0.1, size=(6, 1000)), [30, 10, 20, 25, 5, 30]
  process = FakeProcess(deltas, weights)
  settings = secure_rounds.SecureSettings(aggregator='secagg', clip=CLIP, max_weight=30,
                                          max_clients=6, seed=0, neighbours=4, threshold=3)
  completed = [c for c in range(6) if c not in dropped]
  with secure_rounds.SecureRounds(process, settings) as rounds:
    state, metrics, traffic = rounds.next(0, completed, list(range(6)), completed, 7)
  if len(dropped) > 1:  # A client with 2 of 4 neighbours gone has 2 < t = 3 shares left.
    assert (state, metrics, traffic) == (0, None, {'up': 0, 'down': 0})
    assert process.applied == []
    return
  survivors = np.array(completed)
  expected = np.average(deltas[survivors], axis=0, weights=np.array(weights)[survivors])
  applied = process.applied[0]
  np.testing.assert_allclose(applied.delta[0], expected,
                             atol=2.0**-rounds.fraction_bits + 1e-7)
  assert applied.num_examples == sum(weights[c] for c in completed)
  assert state == 1 and traffic['up'] > 0


def test_asynchronous_staleness_weights_multiply_the_ciphertexts():
  rng = np.random.default_rng(1)
  deltas, weights = rng.normal(0, 0.05, size=(3, 20000)), [30, 10, 20]  # Norms ≈ 7 < clip.
  scales = [1.0, 0.5, 0.25]  # Exact in 1/STALENESS_STEPS.
  process = FakeProcess(deltas, weights)
  settings = secure_rounds.SecureSettings(aggregator='he', clip=CLIP, max_weight=30,
                                          max_clients=3, seed=0, asynchronous=True)
  with secure_rounds.SecureRounds(process, settings) as rounds:
    outputs = [(k, *process.outputs[k]) for k in range(3)]
    state, _, traffic = rounds.apply(0, outputs, [0, 1, 2], 5, scales=scales)
  # The asynchronous rule of --aggregator=mean: Σ n_k s_k Δ_k / Σ n_k.
  expected = sum(w * s * d for w, s, d in zip(weights, scales, deltas, strict=True))
  expected = expected / sum(weights)
  applied = process.applied[0]
  np.testing.assert_allclose(applied.delta[0], expected, atol=2.0**-rounds.fraction_bits + 1e-7)
  assert applied.num_examples == sum(weights)
  # Losses are means weighted by n_k·s_k: all 1.5 here.
  assert float(applied.metrics['discriminator_loss']) == pytest.approx(1.5, abs=1e-3)
  assert state == 1
  # Each client sends its update and its weight alone, in the wide format (twice the bytes).
  assert traffic['up'] == pytest.approx(3 * (3 + 1) * 2 * 131_000, rel=0.05)


def test_a_client_reporting_twice_into_a_buffer_counts_twice():
  rng = np.random.default_rng(2)
  deltas, weights, scales = rng.normal(0, 0.05, size=(2, 20000)), [30, 10], [1.0, 0.5, 0.25]
  process = FakeProcess(deltas, weights)
  settings = secure_rounds.SecureSettings(aggregator='he', clip=CLIP, max_weight=30,
                                          max_clients=3, seed=0, asynchronous=True)
  with secure_rounds.SecureRounds(process, settings) as rounds:
    outputs = [(k, *process.outputs[k]) for k in (0, 1, 0)]  # Client 0 reports twice.
    rounds.apply(0, outputs, [0, 1], 5, scales=scales)
  expected = (30 * 1.0 * deltas[0] + 10 * 0.5 * deltas[1] + 30 * 0.25 * deltas[0]) / 70
  applied = process.applied[0]
  np.testing.assert_allclose(applied.delta[0], expected, atol=2.0**-rounds.fraction_bits + 1e-7)
  assert applied.num_examples == 70


def test_fedbuff_with_he_equals_fedbuff_with_mean_within_the_bound(tmp_path_factory):
  settings = dict(mode='async', buffer_size=4, max_concurrent_clients=4,
                  staleness_exponent=0.0, client_latency='lognormal:0.5,0')
  mean, _ = train(tmp_path_factory, 'async_mean', **settings)
  encrypted, rows = train(tmp_path_factory, 'async_he', aggregator='he', **settings)
  bits = secure_rounds.SecureSettings(aggregator='he', clip=CLIP, max_weight=MAX_WEIGHT,
                                      max_clients=4, seed=0, asynchronous=True).fraction_bits()
  differences = [np.abs(ours - theirs).max() for ours, theirs in zip(
      tf.nest.flatten(as_numpy(encrypted.state.weights)),
      tf.nest.flatten(as_numpy(mean.state.weights)), strict=True)]
  assert 0 < max(differences) <= 2.0**-bits + 1e-6
  assert float(rows[0]['clipped_fraction']) == 0.0
  assert aggregator_children() == []


@pytest.mark.parametrize('settings, message', [
    (dict(secure_clip=1.0), '--secure_clip applies only to --aggregator=he or secagg'),
    (dict(secagg_neighbours=3), '--secagg_neighbours applies only to --aggregator=secagg'),
    (dict(aggregator='secagg', dp_noise_multiplier=1.0), 'secagg with differential privacy'),
    (dict(aggregator='secagg', clients_per_round=10, secagg_threshold=4),
     'not above half of 9 neighbours'),
    (dict(aggregator='secagg', client_sampling='poisson'), 'needs --client_sampling=fixed'),
    (dict(aggregator='he', secure_clip=-1.0), '--secure_clip must be a positive number'),
    (dict(aggregator='secagg', mode='async', buffer_size=2), 'synchronous rounds only'),
    (dict(aggregator='he', dp_noise_multiplier=1.0, dp_unit='example'),
     '--dp_unit=example is not built yet'),
    (dict(aggregator='he', dp_noise_multiplier=1.0, secure_clip=1.0), 'clients clip to --dp_clip'),
    (dict(aggregator='he', dp_noise_multiplier=1.0, dp_adaptive_clip_quantile=0.5),
     'drop --dp_adaptive_clip_quantile'),
    (dict(aggregator='he', scheme='multi_d', discriminator_mixture='universal'),
     'with --discriminator_mixture=universal is not built'),
])
def test_incompatible_settings_are_refused_in_one_line(settings, message):
  with pytest.raises(config_lib.ConfigError, match=message.replace('(', r'\(')):
    config_lib.TrainConfig(output_dir='/tmp/unused', **settings).validate()


def test_a_configuration_whose_sums_could_wrap_is_a_usage_error(tmp_path):
  config = config_lib.TrainConfig(**{**TINY, 'aggregator': 'he', 'secure_clip': 1e9},
                                  output_dir=str(tmp_path / 'out'))
  with pytest.raises(config_lib.ConfigError, match='plaintext modulus'):
    training.train(config, tasks.task_from_config(config), show_progress=False)
  assert not os.path.exists(tmp_path / 'out' / 'metrics.csv')
  assert not os.path.exists(tmp_path / 'out' / 'config.json')
  assert aggregator_children() == []


def test_max_client_weight_is_the_largest_example_count_of_a_round():
  assert secure_rounds.max_client_weight([100, 300], 2, 16, None) == 600
  assert secure_rounds.max_client_weight([100, 300], 2, 16, 5) == 80


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
  bits = fraction_bits('he', clip, 1)
  # Both clip each client's D update to C and average unweighted over the round's clients.
  difference = np.abs(discriminator(dp_runs['he'][0]) - discriminator(dp_runs['mean'][0]))
  assert difference.max() <= 2.0**-bits + 1e-6


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


def processes_with_mark(mark: bytes, program: bytes) -> list[int]:
  """Live processes whose command line names `program` and whose environment holds `mark`."""
  found = []
  for entry in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{entry}/cmdline', 'rb') as f:
        command = f.read()
      with open(f'/proc/{entry}/environ', 'rb') as f:
        environment = f.read().split(b'\0')
    except OSError:  # Gone meanwhile, or not ours.
      continue
    if program in command and mark in environment:
      found.append(int(entry))
  return found


BINARY_FLAGS = ['--task=ring', '--model_width=0.0625', '--local_steps=2', '--batch_size=16',
                '--num_clients=4', '--clients_per_round=4', '--eval_every=50',
                '--num_eval_samples=200']


def test_bin_train_with_async_he_stops_on_ctrl_c_leaving_no_aggregator_and_resumes(tmp_path):
  from test_run_safety import TRAIN, Terminal, wait_for_rows  # noqa: PLC0415
  from test_train_binary import run_train  # noqa: PLC0415

  run = tmp_path / 'run'
  mark = f'TFF_GAN_TEST_MARK={os.getpid()}-{id(run)}'
  flags = [*BINARY_FLAGS, '--aggregator=he', '--mode=async', '--buffer_size=2',
           '--max_concurrent_clients=4', f'--output_dir={run}']
  terminal = Terminal([sys.executable, TRAIN, *flags, '--rounds=400'],
                      env={**os.environ, mark.split('=')[0]: mark.split('=')[1]})
  wait_for_rows(run, terminal.process, 2)
  assert processes_with_mark(mark.encode(), b'tff_gan.secure.he_process')  # Two, at work.
  terminal.ctrl_c()
  code, shown = terminal.wait()
  assert code == 130 and 'Traceback' not in shown, shown
  assert shown.count('train.py: stopped by SIGINT after round') == 1, shown
  # The last step applied is checkpointed, though --checkpoint_every (10) would skip it.
  last = int(read_rows(run)[-1]['round'])
  saved = max((int(name.split('_')[1]) for name in os.listdir(run / 'checkpoints')), default=0)
  assert saved == last, (saved, last)
  assert f'the checkpoint of round {last} in' in shown, shown
  deadline = time.monotonic() + 10
  while processes_with_mark(mark.encode(), b'tff_gan.secure.he_process'):
    assert time.monotonic() < deadline, 'an aggregator process outlived its trainer'
    time.sleep(0.1)
  # The same command resumes (to a lower --rounds, two past the last round written, however
  # far the run got before the signal landed) and exits 0.
  target = int(read_rows(run)[-1]['round']) + 2
  resumed = run_train(*flags, f'--rounds={target}', '--noprogress')
  assert resumed.returncode == 0, resumed.stderr
  assert int(read_rows(run)[-1]['round']) == target


def test_bin_train_with_secagg_and_dropouts(tmp_path):
  from test_train_binary import run_train  # noqa: PLC0415

  result = run_train(*BINARY_FLAGS, '--aggregator=secagg', '--dropout_rate=0.3', '--rounds=4',
                     '--noprogress', f'--output_dir={tmp_path}/run')
  assert result.returncode == 0, result.stderr
  rows = read_rows(tmp_path / 'run')
  assert [int(r['round']) for r in rows] == [1, 2, 3, 4]
  for row in rows:  # k = 3, t = 2: a round survives one dropout of four, else aborts.
    completed = int(row['clients_completed'])
    assert completed in (0, 3, 4)
    assert (int(row['bytes_up']) > 0) == (completed > 0)
