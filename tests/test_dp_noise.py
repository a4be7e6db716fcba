"""Where DP noise comes from (`--dp_noise`): its distribution, its key, and what a run repeats."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_federated as tff
from conftest import REPO_ROOT
from test_train_binary import TINY, read_rows, run_trains

from tff_gan.algorithms import aggregators
from tff_gan.core import seeds
from tff_gan.run import config as config_lib

SIZE = 20_000  # Coordinates per draw: the sample standard deviation is then within ~0.5 %.


@pytest.fixture(scope='module')
def aggregate(tff_context):
  """`aggregate(z, C, m, key, updates, rounds)`: the DP aggregator's outputs, round after round
  from its initial state, on the same client updates."""
  del tff_context
  value_type = tff.TensorType(np.float32, [SIZE])

  def run(z, clip, clients_per_round, key, updates, rounds=1):
    process = aggregators.dp_aggregator(
        noise_multiplier=z, clients_per_round=clients_per_round, clip=clip,
        noise_key=key).create(value_type)
    state, results = process.initialize(), []
    for _ in range(rounds):
      output = process.next(state, updates)
      state = output.state
      results.append(np.asarray(output.result))
    return results

  return run


def test_noise_on_the_mean_has_standard_deviation_z_c_over_m(aggregate):
  z, clip, m = 1.3, 0.5, 4
  zeros = [np.zeros(SIZE, np.float32)] * m
  first, second = aggregate(z, clip, m, (7, 8), zeros, rounds=2)
  sigma = z * clip / m
  for noise in (first, second):
    # The sample std of n normals has relative standard error 1/sqrt(2n) = 0.5 %: 5 of them.
    assert np.std(noise) == pytest.approx(sigma, rel=0.025)
    assert abs(np.mean(noise)) < 5 * sigma / np.sqrt(SIZE)
    kurtosis = np.mean((noise / np.std(noise)) ** 4)
    assert kurtosis == pytest.approx(3.0, abs=0.15)  # Gaussian, not uniform (1.8) or Laplace.
  # Each release draws afresh: consecutive rounds' noise is uncorrelated.
  assert abs(np.corrcoef(first, second)[0, 1]) < 5 / np.sqrt(SIZE)


def test_the_clipped_sum_is_what_gets_noised(aggregate):
  clip, m = 0.5, 2
  big = np.full(SIZE, 1.0, np.float32)  # Norm sqrt(SIZE) = 141: scaled down to 0.5.
  small = np.zeros(SIZE, np.float32)
  small[0] = 0.1  # Below the clip: unchanged.
  (mean,) = aggregate(0.0, clip, m, (7, 8), [big, small])
  expected = (big * clip / np.linalg.norm(big) + small) / m
  np.testing.assert_allclose(mean, expected, rtol=1e-5, atol=1e-8)


def test_the_key_and_the_release_count_decide_the_noise(aggregate):
  zeros = [np.zeros(SIZE, np.float32)] * 2
  a = aggregate(1.0, 1.0, 2, (7, 8), zeros, rounds=2)
  b = aggregate(1.0, 1.0, 2, (7, 8), zeros, rounds=2)
  other = aggregate(1.0, 1.0, 2, (7, 9), zeros, rounds=2)
  np.testing.assert_array_equal(a[0], b[0])  # Same key, same release: bit for bit.
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.allclose(a[0], a[1]) and not np.allclose(a[0], other[0])


def test_the_entropy_key_is_drawn_anew_by_every_process():
  program = ('from tff_gan.core import seeds; '
             "print(*seeds.noise_key('entropy', 0), *seeds.noise_key('entropy', 0))")
  keys = []
  for _ in range(2):
    out = subprocess.run([sys.executable, '-c', program], capture_output=True, text=True,
                         check=True, cwd=REPO_ROOT).stdout.split()
    assert out[:2] == out[2:]  # One key per process.
    keys.append(tuple(int(word) for word in out[:2]))
  assert keys[0] != keys[1]
  assert keys[0] != seeds.noise_key('entropy', 0)  # Nor this process's.
  # The reproducible key is the run seed's, whatever the process.
  assert seeds.noise_key('reproducible', 3) == seeds.noise_key('reproducible', 3) != \
      seeds.noise_key('reproducible', 4)


@pytest.mark.parametrize('method', ['fixed', 'poisson'])
def test_a_client_sample_that_amplifies_dp_is_drawn_from_the_secret_key(method):
  from tff_gan.clients import sampling  # noqa: PLC0415
  from tff_gan.run import schemes  # noqa: PLC0415

  def ids(round_num, **settings):
    config = config_lib.TrainConfig(num_clients=1000, clients_per_round=20,
                                    client_sampling=method, **settings)
    return schemes.for_config(config).client_ids(config, 1000, round_num)

  seeded = ids(3, scheme='dp_fedavg_gan')  # No DP: the run seed decides.
  np.testing.assert_array_equal(seeded, sampling.sample_clients(1000, 20, round_num=3, seed=0,
                                                                method=method))
  private = ids(3, scheme='dp_fedavg_gan', dp_noise_multiplier=1.0)
  # Client-level DP credits amplification by sampling: this process's entropy key decides,
  # the same for a round's every call, and nobody can recompute it from config.json's seed.
  np.testing.assert_array_equal(private, sampling.sample_clients(
      1000, 20, round_num=3, seed=0, method=method, key=seeds.noise_key('entropy', 0)))
  np.testing.assert_array_equal(private, ids(3, scheme='dp_fedavg_gan', dp_noise_multiplier=1.0))
  assert not np.array_equal(private, seeded)
  assert not np.array_equal(private, ids(4, scheme='dp_fedavg_gan', dp_noise_multiplier=1.0))
  # --dp_noise=reproducible derives the key from the seed (no privacy claim): it repeats.
  reproducible = ids(3, scheme='fedgan', dp_noise_multiplier=1.0, dp_noise='reproducible')
  np.testing.assert_array_equal(reproducible, sampling.sample_clients(
      1000, 20, round_num=3, seed=0, method=method, key=seeds.noise_key('reproducible', 0)))
  # Example-level DP accounts each client's own rounds, without amplification by client
  # sampling: the seed decides (its ledger replays the rounds).
  np.testing.assert_array_equal(
      ids(3, scheme='fedgan', dp_noise_multiplier=1.0, dp_unit='example'), seeded)
  # The keyed draw is the sampling it claims: exactly 20, or each client at rate 20/1000.
  counts = [len(sampling.sample_clients(1000, 20, round_num=r, seed=0, method=method,
                                        key=(5, 7))) for r in range(300)]
  if method == 'fixed':
    assert set(counts) == {20}
  else:  # Binomial(1000, 0.02) mean over 300 rounds: std of the mean 0.26.
    assert np.mean(counts) == pytest.approx(20, abs=1.0) and len(set(counts)) > 5
  hits = np.bincount(np.concatenate([sampling.sample_clients(
      1000, 20, round_num=r, seed=0, method=method, key=(5, 7)) for r in range(300)]),
      minlength=1000)
  assert hits.max() < 20  # Uniform: each client expects 6 of 300 rounds; 20 is 5.6 std off.


DP_FEDAVG = ['--scheme=dp_fedavg_gan', '--dp_noise_multiplier=1.0', '--dp_clip=0.1',
             '--checkpoint_every=1']


def test_reproducible_dp_resumes_bit_for_bit_and_default_runs_differ(tmp_path):
  flags = [*[f for f in TINY if not f.startswith('--rounds')], *DP_FEDAVG]
  reproducible = [*flags, '--dp_noise=reproducible']

  def args(name, rounds, extra):
    return [*extra, f'--rounds={rounds}', f'--output_dir={tmp_path / name}']

  # Five runs, three then two at a time: the reproducible run whole, its first two rounds,
  # two default runs with the same seed; then the reproducible run resumed for round 3.
  for result in run_trains(args('whole', 3, reproducible), args('resumed', 2, reproducible),
                           args('default_a', 2, flags)):
    assert result.returncode == 0, result.stderr
  for result in run_trains(args('resumed', 3, reproducible), args('default_b', 2, flags)):
    assert result.returncode == 0, result.stderr

  def rows(name):
    return [{k: v for k, v in row.items() if k != 'round_seconds'}
            for row in read_rows(tmp_path / name / 'metrics.csv')]

  assert rows('resumed') == rows('whole')
  # dp_fedavg_gan's server generator trains against the noised discriminator: its loss
  # shows the noise. The default runs share the seed and nothing else.
  assert rows('default_a')[0]['g_loss'] != rows('default_b')[0]['g_loss']

  def saved(name):
    return json.loads((tmp_path / name / 'config.json').read_text())

  assert saved('whole')['dp_noise'] == 'reproducible'
  assert saved('whole')[config_lib.PRIVACY_CLAIM_NOTE].startswith('none')
  assert config_lib.PRIVACY_CLAIM_NOTE not in saved('default_a')
