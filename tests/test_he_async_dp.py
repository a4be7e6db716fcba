"""`--aggregator=he` with user-level DP in `--mode=async`: the release against the DP
aggregator's asynchronous step (TFF's, and numpy's scale-then-clip), the key holder's noise
per server step, ε against `--aggregator=mean`'s, and `bin/train.py` leaving no aggregator
process behind."""

import csv
import math
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import as_numpy
from test_secure_rounds import (
  BINARY_FLAGS,
  CLIP,
  TINY,
  FakeProcess,
  aggregator_children,
  processes_with_mark,
  read_rows,
)

import tasks
from tff_gan.run import config as config_lib
from tff_gan.run import secure_rounds, training
from tff_gan.secure import he

NOISE = 2.0
DP_CLIP = 0.02  # Below every update's norm here, stale or fresh: the clip bites in each step.
# Four FedBuff steps of 2 reports from 4 clients at work, half of them 10x slower: the fast
# ones report twice into a buffer, and steps 3 and 4 take stale reports (s = (1 + τ)^-0.5).
ASYNC_DP = dict(scheme='dp_fedavg_gan', mode='async', buffer_size=2, max_concurrent_clients=4,
                straggler_fraction=0.5, rounds=4, dp_clip=DP_CLIP, dp_noise='reproducible')


def dp_settings(noise_multiplier, clients):
  dp = secure_rounds.SecureDp(noise_multiplier=noise_multiplier, clip=DP_CLIP,
                              clients_per_round=clients, noise_key=(7, 11))
  return secure_rounds.SecureSettings(aggregator='he', clip=CLIP, max_weight=1,
                                      max_clients=clients, seed=0, dp=dp, asynchronous=True)


def client_output(delta, num_examples=20):
  output = FakeProcess([delta], [num_examples]).outputs[0][0]
  return output, np.int32(0)


def clip_to(vector, clip):
  return vector * min(1.0, clip / np.linalg.norm(vector))


@pytest.fixture(scope='module')
def buffer():
  """A FedBuff buffer of 3 reports (client 0 twice) and their staleness weights: report 0
  is clipped; reports 1 and 2 are within C once scaled, not before (so scaling after
  clipping would release a different sum); 0.3 is no multiple of 1/256."""
  rng = np.random.default_rng(3)
  directions = rng.normal(size=(3, 20000))
  norms, scales = [2.0, 1.5, 3.0], [1.0, 0.5, 0.3]
  deltas = [DP_CLIP * n * d / np.linalg.norm(d) for n, d in zip(norms, directions, strict=True)]
  return [0, 1, 0], deltas, scales


def apply_buffer(buffer, noise_multiplier, round_num):
  clients, deltas, scales = buffer
  process = FakeProcess(deltas, [20] * len(deltas))
  with secure_rounds.SecureRounds(process, dp_settings(noise_multiplier, len(deltas))) as rounds:
    outputs = [(c, *client_output(d)) for c, d in zip(clients, deltas, strict=True)]
    _, metrics, traffic = rounds.apply(0, outputs, clients, round_num, scales=scales)
  return process.applied[0], metrics, traffic, rounds.fraction_bits


def test_each_report_is_scaled_then_clipped_and_summed_over_the_buffer_size(buffer):
  _, deltas, scales = buffer
  applied, metrics, traffic, bits = apply_buffer(buffer, 0.0, 5)
  # The DP aggregator's step (`GanProcess.server_step`): scale, clip, sum, / buffer size.
  expected = sum(clip_to(s * d, DP_CLIP) for s, d in zip(scales, deltas, strict=True)) / 3
  np.testing.assert_allclose(applied.delta[0], expected, atol=2.0**-bits + 1e-7)
  clipped_first = sum(s * clip_to(d, DP_CLIP) for s, d in zip(scales, deltas, strict=True)) / 3
  assert np.abs(clipped_first - expected).max() > 100 * 2.0**-bits
  # Nothing un-noised leaves: no count, no loss, no clipped flag.
  assert applied.num_examples == 1.0 and float(applied.metrics['discriminator_loss']) == 0.0
  assert secure_rounds.CLIPPED_METRIC not in metrics
  # No multipliers: the synchronous BFV format, one ciphertext chain a report, no weights.
  assert dp_settings(0.0, 3).he_params() == he.choose_params(DP_CLIP, 1, 3)
  chunks = -(-20000 // he.POLY_MODULUS_DEGREE)
  assert traffic['up'] == pytest.approx(3 * chunks * 131_000, rel=0.05)


def test_the_key_holder_adds_noise_of_std_z_clip_over_the_buffer_size_once_a_step(buffer):
  plain = apply_buffer(buffer, 0.0, 5)[0].delta[0].astype(np.float64)
  noised = apply_buffer(buffer, NOISE, 5)[0].delta[0].astype(np.float64)
  again = apply_buffer(buffer, NOISE, 5)[0].delta[0].astype(np.float64)
  next_step = apply_buffer(buffer, NOISE, 6)[0].delta[0].astype(np.float64)
  noise = noised - plain
  expected = NOISE * DP_CLIP / 3
  # The sample std of n normal draws is within 4 standard errors (std/√(2n)) of the truth.
  assert abs(noise.std() - expected) < 4 * expected / np.sqrt(2 * noise.size)
  assert abs(noise.mean()) < 4 * expected / np.sqrt(noise.size)
  # Drawn from the key and the step: a step repeats it, the next step draws anew.
  np.testing.assert_array_equal(again, noised)
  assert abs(np.corrcoef(noise, next_step - plain)[0, 1]) < 4 / np.sqrt(noise.size)


def train_in(tmp_path_factory, name, **settings):
  """`test_secure_rounds.train`, with the run directory."""
  config = config_lib.TrainConfig(**{**TINY, **settings},
                                  output_dir=str(tmp_path_factory.mktemp(name)))
  result = training.train(config, tasks.task_from_config(config), show_progress=False)
  return result, config.output_dir


@pytest.fixture(scope='module')
def async_dp_runs(tmp_path_factory):
  """The same schedule under the DP aggregator and under the key holder, without noise and
  with it: `(result, output_dir)` by name."""
  return {name: train_in(tmp_path_factory, name, **ASYNC_DP, **settings)
          for name, settings in [
              ('mean', dict(dp_noise_multiplier=0.0)),
              ('he', dict(dp_noise_multiplier=0.0, aggregator='he')),
              ('mean_noised', dict(dp_noise_multiplier=NOISE)),
              ('he_noised', dict(dp_noise_multiplier=NOISE, aggregator='he'))]}


def report_lines(output_dir) -> list[list[int]]:
  """Each step's reporting clients, as `checkpoints/async_reports.csv` records them."""
  with open(os.path.join(output_dir, 'checkpoints', 'async_reports.csv'), newline='') as f:
    return [[int(c) for c in row['clients'].split()] for row in csv.DictReader(f)]


def client_table(output_dir) -> list[tuple[int, int, int, float]]:
  with open(os.path.join(output_dir, 'client_epsilon.csv'), newline='') as f:
    return [(int(r['client']), int(r['reports']), int(r['sum_squared_reports']),
             float(r['epsilon'])) for r in csv.DictReader(f)]


def test_fedbuff_with_he_and_dp_equals_the_dp_aggregator_within_the_bound(async_dp_runs):
  (mean, mean_dir), (encrypted, he_dir) = async_dp_runs['mean'], async_dp_runs['he']
  rows = read_rows(he_dir)
  assert [int(r['round']) for r in rows] == [1, 2, 3, 4]
  assert max(int(r['max_staleness']) for r in rows) > 0  # Stale, down-weighted reports.
  assert report_lines(he_dir) == report_lines(mean_dir)  # The same schedule.
  assert any(len(set(step)) < len(step) for step in report_lines(he_dir))  # A client twice.
  bits = dp_settings(0.0, ASYNC_DP['buffer_size']).fraction_bits()
  differences = [np.abs(ours - theirs).max() for ours, theirs in zip(
      tf.nest.flatten(as_numpy(encrypted.state.weights)),
      tf.nest.flatten(as_numpy(mean.state.weights)), strict=True)]
  # Each step within 2^-f per coordinate of the DP aggregator's (plus float32 rounding).
  assert 0 < max(differences) <= 2.0**-bits + 1e-6
  assert aggregator_children() == []


def test_epsilon_of_he_with_dp_equals_the_dp_aggregators(async_dp_runs):
  (_, mean_dir), (_, he_dir) = async_dp_runs['mean_noised'], async_dp_runs['he_noised']
  assert report_lines(he_dir) == report_lines(mean_dir)
  he_rows, mean_rows = read_rows(he_dir), read_rows(mean_dir)
  epsilons = [float(r['epsilon']) for r in he_rows]
  assert len(epsilons) == 4 and all(math.isfinite(e) and e > 0 for e in epsilons)
  assert epsilons == pytest.approx([float(r['epsilon']) for r in mean_rows], rel=1e-6)
  he_table, mean_table = client_table(he_dir), client_table(mean_dir)
  assert [row[:3] for row in he_table] == [row[:3] for row in mean_table]
  assert [row[3] for row in he_table] == pytest.approx([row[3] for row in mean_table], rel=1e-5)
  assert any(s > r for _, r, s, _ in he_table)  # Some client reported twice into a buffer.


def test_he_with_dp_is_accepted_in_both_asynchronous_rules():
  for rule in ('fedbuff', 'fedasync'):
    config_lib.TrainConfig(output_dir='/tmp/unused', aggregator='he', mode='async',
                           async_rule=rule, buffer_size=2, dp_noise_multiplier=1.0).validate()


def test_bin_train_with_async_he_and_dp_writes_epsilon_and_leaves_no_aggregator(
    tmp_path, monkeypatch):
  from test_train_binary import run_train  # noqa: PLC0415

  run = tmp_path / 'run'
  mark = f'{os.getpid()}-{id(run)}'
  monkeypatch.setenv('TFF_GAN_TEST_MARK', mark)  # The trainer and its children inherit it.
  result = run_train(*BINARY_FLAGS, '--aggregator=he', '--mode=async', '--buffer_size=2',
                     '--max_concurrent_clients=4', '--dp_noise_multiplier=1',
                     f'--dp_clip={DP_CLIP}', '--rounds=3', '--noprogress', f'--output_dir={run}')
  assert result.returncode == 0, result.stderr
  rows = read_rows(run)
  assert [int(r['round']) for r in rows] == [1, 2, 3]
  assert all(math.isfinite(float(r['epsilon'])) and float(r['epsilon']) > 0 for r in rows)
  assert float(rows[-1]['epsilon']) >= float(rows[0]['epsilon'])
  assert os.path.exists(run / 'client_epsilon.csv')
  assert processes_with_mark(f'TFF_GAN_TEST_MARK={mark}'.encode(),
                             b'tff_gan.secure.he_process') == []
