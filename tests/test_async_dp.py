"""Differential privacy in --mode=async: each client's ε composes its reports unamplified.

Checked against `dp_accounting` directly (per-step Gaussian events composed in a fresh
accountant), against a schedule worked out by hand, and across a resume.
"""

import csv
import os
import shutil

import dp_accounting
import numpy as np
import pytest
from test_async import TINY, fast_and_slow_seed, read_rows

import tasks
from tff_gan.run import config as config_lib
from tff_gan.run import ledgers, persistence, training

Z = 1.0  # The tests' noise multiplier.
DP = dict(mode='async', scheme='dp_fedavg_gan', dp_noise_multiplier=Z, dp_clip=0.1)
# 6 clients, half of them stragglers 10x slower, 4 at work, K = 3: fast clients report two or
# three times into one buffer (with seed 5, client 5 fills step 6's buffer alone).
STRAGGLERS = dict(num_clients=6, clients_per_round=3, buffer_size=3, max_concurrent_clients=4,
                  straggler_fraction=0.5, straggler_slowdown=10.0, seed=5)


def run(output_dir, **settings):
  """Trains (or resumes) an async DP run of the tiny ring GAN; returns its metrics rows."""
  config = config_lib.TrainConfig(**{**TINY, **DP, **settings}, output_dir=str(output_dir))
  training.train(config, tasks.task_from_config(config), show_progress=False)
  return read_rows(config.output_dir)


def rdp_epsilon(*noise_multipliers, delta=1e-5):
  """ε of Gaussian mechanisms of these noise multipliers, composed by a fresh RDP accountant."""
  accountant = dp_accounting.rdp.RdpAccountant()
  for z in noise_multipliers:
    accountant.compose(dp_accounting.GaussianDpEvent(z))
  return accountant.get_epsilon(delta)


def honest_epsilon(steps, num_clients):
  """The largest client ε: each step a Gaussian of noise multiplier Z / c for a client that
  reported c times into it, composed step by step (no shortcut through S_k)."""
  per_client = [[] for _ in range(num_clients)]
  for _, client_ids in steps:
    for client, reports in zip(*np.unique(client_ids, return_counts=True), strict=True):
      per_client[client].append(Z / reports)
  return max(rdp_epsilon(*multipliers) if multipliers else 0.0 for multipliers in per_client)


def ledger_over(tmp_path, steps, num_clients, accountant='rdp'):
  record = ledgers.AsyncReports(str(tmp_path))
  for round_num, client_ids in steps:
    record.append(round_num, client_ids)
  ledger = ledgers.AsyncClientLedger(
      config_lib.TrainConfig(mode='async', output_dir=str(tmp_path), dp_noise_multiplier=Z,
                             dp_accountant=accountant), num_clients)
  ledger.noise_multiplier = Z  # As the DP aggregator's event in the server state says.
  return ledger


def test_a_client_reporting_twice_in_one_buffer_counts_four(tmp_path):
  ledger = ledger_over(tmp_path, [(1, [3, 3, 5])], num_clients=6)
  assert ledger.epsilon(None) == pytest.approx(rdp_epsilon(Z / 2))  # Sensitivity 2C.
  np.testing.assert_array_equal(ledger.squared_reports, [0, 0, 0, 4, 0, 1])
  # Counting the two reports as two steps (sensitivity C each) would understate ε.
  assert ledger.epsilon(None) > rdp_epsilon(Z, Z) * 1.3
  ledger_over(tmp_path, [(2, [0, 3])], num_clients=6)  # Appends a step to the same record.
  assert ledger.epsilon(None) == pytest.approx(rdp_epsilon(Z / 2, Z))
  np.testing.assert_array_equal(ledger.reports, [1, 0, 0, 3, 0, 1])
  np.testing.assert_array_equal(ledger.squared_reports, [1, 0, 0, 5, 0, 1])
  assert ledger.client_table(2).splitlines()[4:6] == [
      f'3,3,5,{rdp_epsilon(Z / 2, Z):.6g}', '4,0,0,0']


def test_pld_accounts_the_same_gaussian(tmp_path):
  ledger = ledger_over(tmp_path, [(1, [0, 0, 1]), (2, [0, 1])], num_clients=2,
                       accountant='pld')
  accountant = dp_accounting.pld.PLDAccountant()
  accountant.compose(dp_accounting.GaussianDpEvent(Z / 2))
  accountant.compose(dp_accounting.GaussianDpEvent(Z))
  assert ledger.epsilon(None) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-3)


def test_noise_multiplier_of_composed_gaussians():
  gaussian = dp_accounting.GaussianDpEvent
  assert ledgers.gaussian_noise_multiplier(gaussian(0.8)) == 0.8
  # Adaptive clipping: the value noise and the clipped-count noise, on the same reports.
  composed = dp_accounting.ComposedDpEvent([gaussian(1.2), gaussian(3.0)])
  assert ledgers.gaussian_noise_multiplier(composed) == pytest.approx((1.2**-2 + 3**-2) ** -0.5)
  assert ledgers.gaussian_noise_multiplier(
      dp_accounting.SelfComposedDpEvent(gaussian(2.0), 4)) == pytest.approx(1.0)
  with pytest.raises(ValueError, match='Gaussian mechanisms only'):
    ledgers.gaussian_noise_multiplier(dp_accounting.LaplaceDpEvent(1.0))


def test_the_record_reads_whole_lines_and_names_what_is_missing(tmp_path):
  record = ledgers.AsyncReports(str(tmp_path))
  assert record.read() == ([], 0) and record.resume_problem(0) is None
  record.append(1, [4, 2, 4])
  record.append(3, [1])
  steps, offset = record.read()
  assert [(r, ids.tolist()) for r, ids in steps] == [(1, [2, 4, 4]), (3, [1])]
  assert record.read(offset) == ([], offset)
  assert record.resume_problem(1) is None
  assert 'lacks the clients of 1 of the 3 checkpointed steps (first: 2)' in (
      record.resume_problem(3))
  with open(record.path, 'a') as f:
    f.write('4,0 ')  # A crash mid-line.
  assert record.read(offset) == ([], offset)
  assert record.resume_problem(1).endswith('ends in a cut line')


def test_fedbuff_epsilon_by_hand(tmp_path):
  """Client 0 takes 1 s, client 1 takes 3 s; K = 2, both always at work (see test_async's
  `test_event_loop_staleness_by_hand`). t=2: 0 has reported twice → buffer [0, 0];
  t=3: 1 and 0 → [0, 1]; t=5: [0, 0]; t=6: [0, 1]. S_0 = 4, 5, 9, 10."""
  rows = run(tmp_path, num_clients=2, clients_per_round=2, rounds=4, buffer_size=2,
             max_concurrent_clients=2, client_latency='lognormal:0,0', straggler_fraction=0.5,
             straggler_slowdown=3.0, seed=fast_and_slow_seed())
  assert [float(r['epsilon']) for r in rows] == pytest.approx(
      [rdp_epsilon(Z / np.sqrt(s)) for s in (4, 5, 9, 10)], rel=1e-5)


def test_fedasync_epsilon_is_the_most_reporting_clients(tmp_path):
  rows = run(tmp_path, num_clients=6, clients_per_round=3, rounds=5, async_rule='fedasync',
             max_concurrent_clients=3, seed=5)
  assert [int(r['clients']) for r in rows] == [1] * 5
  steps, _ = ledgers.AsyncReports(str(tmp_path)).read()
  assert [len(ids) for _, ids in steps] == [1] * 5
  reports = np.zeros(6, np.int64)
  for (_, ids), row in zip(steps, rows, strict=True):
    reports[ids] += 1
    assert float(row['epsilon']) == pytest.approx(rdp_epsilon(Z / np.sqrt(reports.max())),
                                                  rel=1e-5)
  assert reports.max() >= 2  # Some client reported more than once.


@pytest.fixture(scope='module')
def resumed_run(tmp_path_factory):
  """`STRAGGLERS` run to step 3, then resumed to step 6 in the same directory."""
  output_dir = tmp_path_factory.mktemp('resumed')
  run(output_dir, **STRAGGLERS, rounds=3)
  first_steps, _ = ledgers.AsyncReports(str(output_dir)).read()
  run(output_dir, **STRAGGLERS, rounds=6)
  return str(output_dir), first_steps


def test_reported_epsilon_is_the_recounts(resumed_run):
  output_dir, _ = resumed_run
  rows = read_rows(output_dir)
  steps, _ = ledgers.AsyncReports(output_dir).read()
  assert [r for r, _ in steps] == [1, 2, 3, 4, 5, 6]
  assert [len(ids) for _, ids in steps] == [int(r['clients']) for r in rows] == [3] * 6
  assert max(np.unique(ids, return_counts=True)[1].max() for _, ids in steps) >= 2
  for round_num, row in enumerate(rows, start=1):
    assert float(row['epsilon']) == pytest.approx(honest_epsilon(steps[:round_num], 6),
                                                  rel=1e-5)


def test_client_epsilon_file_lists_every_clients_reports(resumed_run):
  output_dir, _ = resumed_run
  steps, _ = ledgers.AsyncReports(output_dir).read()
  reports, squared = np.zeros(6, np.int64), np.zeros(6, np.int64)
  for _, ids in steps:
    clients, counts = np.unique(ids, return_counts=True)
    reports[clients] += counts
    squared[clients] += counts**2
  with open(os.path.join(output_dir, 'client_epsilon.csv'), newline='') as f:
    table = list(csv.DictReader(f))
  assert [int(r['client']) for r in table] == list(range(6))
  assert [int(r['reports']) for r in table] == reports.tolist()
  assert [int(r['sum_squared_reports']) for r in table] == squared.tolist()
  for row, s in zip(table, squared, strict=True):
    assert float(row['epsilon']) == pytest.approx(
        rdp_epsilon(Z / np.sqrt(s)) if s else 0.0, rel=1e-5)


def test_resume_keeps_the_counts_of_the_steps_before(resumed_run):
  output_dir, first_steps = resumed_run
  steps, _ = ledgers.AsyncReports(output_dir).read()
  assert [(r, ids.tolist()) for r, ids in steps[:3]] == [
      (r, ids.tolist()) for r, ids in first_steps]
  last = float(read_rows(output_dir)[-1]['epsilon'])
  assert last == pytest.approx(honest_epsilon(steps, 6), rel=1e-5)
  # Counting the resumed steps alone would have reported less.
  assert last > honest_epsilon(steps[3:], 6) * 1.05


def test_steps_a_crash_abandoned_stay_counted(resumed_run, tmp_path):
  """Steps 4-6 applied, then the checkpoint of step 6 lost: the rerun repeats steps 4-6 from
  step 3's checkpoint, and ε counts both attempts (the first one's outputs were released)."""
  output_dir, _ = resumed_run
  shutil.copytree(output_dir, tmp_path / 'run')
  shutil.rmtree(tmp_path / 'run' / 'checkpoints' / 'round_6')
  rows = run(tmp_path / 'run', **STRAGGLERS, rounds=6)
  steps, _ = ledgers.AsyncReports(str(tmp_path / 'run')).read()
  assert [r for r, _ in steps] == [1, 2, 3, 4, 5, 6, 4, 5, 6]
  assert float(rows[-1]['epsilon']) == pytest.approx(honest_epsilon(steps, 6), rel=1e-5)


def test_resuming_without_the_record_is_refused(resumed_run, tmp_path):
  output_dir, _ = resumed_run
  shutil.copytree(output_dir, tmp_path / 'run')
  os.remove(tmp_path / 'run' / 'checkpoints' / ledgers.ASYNC_REPORTS_FILE)
  with pytest.raises(persistence.CheckpointError, match='lacks the clients of 6 of the 6 '
                     'checkpointed steps .*so ε cannot be accounted; rerun with --overwrite'):
    run(tmp_path / 'run', **STRAGGLERS, rounds=7)
