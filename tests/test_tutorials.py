"""The Colab tutorials (tutorials/*.ipynb) run top to bottom with smoke settings.

Each notebook runs in a fresh Jupyter kernel (nbclient) with `TFF_GAN_TUTORIAL_SMOKE=1`
(a few tiny rounds) and `TFF_GAN_TUTORIAL_OUTPUT` pointing into the test's temp dir, so the
tests can read what the notebook wrote. A cell that raises fails the test, naming the cell.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys

import dp_accounting
import nbclient
import nbformat
import numpy as np
import pytest
from conftest import REPO_ROOT, pid_alive, started_by_this_session, worker_pids

from tff_gan.privacy import accounting as privacy

TUTORIALS = os.path.join(REPO_ROOT, 'tutorials')
NOTEBOOKS = ('quickstart', 'privacy', 'remote_workers', 'secure_deployment', 'hospitals',
             'secure_aggregation', 'non_iid')


def read_notebook(name: str) -> nbformat.NotebookNode:
  return nbformat.read(os.path.join(TUTORIALS, f'{name}.ipynb'), as_version=4)


def read_rows(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def worker_programs() -> set[int]:
  """Pids of running `bin/worker.py` programs (each wraps a TFF worker)."""
  found = subprocess.run(['pgrep', '-f', os.path.join('bin', 'worker.py')],
                         capture_output=True, text=True, check=False)
  return {int(pid) for pid in found.stdout.split()}


def aggregator_programs() -> set[int]:
  """Pids of running `--aggregator=he` aggregator processes (`tff_gan.secure.he_process`)."""
  found = subprocess.run(['pgrep', '-f', 'tff_gan.secure.he_process'],
                         capture_output=True, text=True, check=False)
  return {int(pid) for pid in found.stdout.split()}


@pytest.fixture
def no_worker_survives():
  """Fails the test if the notebook left a TFF worker, a bin/worker.py or an HE aggregator
  process running.

  Survivors are killed (by pid) before the failure is reported, so they do not outlive the
  test session either.
  """
  before = worker_pids() | worker_programs() | aggregator_programs()
  yield
  leaked = {pid for pid in (worker_pids() | worker_programs() | aggregator_programs()) - before
            if pid_alive(pid) and started_by_this_session(pid)}
  for pid in leaked:
    os.kill(pid, signal.SIGKILL)
  assert not leaked, f'the notebook left worker processes running: {sorted(leaked)}'


def execute(name: str, output_dir, monkeypatch) -> nbformat.NotebookNode:
  """Runs tutorials/<name>.ipynb with smoke settings in a new kernel; returns it executed."""
  monkeypatch.setenv('TFF_GAN_TUTORIAL_SMOKE', '1')  # Read by the kernel, started below.
  monkeypatch.setenv('TFF_GAN_TUTORIAL_OUTPUT', str(output_dir))
  notebook = read_notebook(name)
  client = nbclient.NotebookClient(
      notebook, timeout=600, kernel_name='python3', interrupt_on_timeout=True,
      resources={'metadata': {'path': REPO_ROOT}})
  client.execute()  # Raises CellExecutionError, with the cell and its traceback, on an error.
  errors = [output for cell in notebook.cells if cell.cell_type == 'code'
            for output in cell.outputs if output.output_type == 'error']
  assert not errors, errors
  return notebook


def images_shown(notebook) -> int:
  return sum('image/png' in output.get('data', {}) for cell in notebook.cells
             if cell.cell_type == 'code' for output in cell.outputs)


def printed(notebook) -> str:
  return ''.join(output.text for cell in notebook.cells if cell.cell_type == 'code'
                 for output in cell.outputs
                 if output.output_type == 'stream' and output.name == 'stdout')


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_committed_notebooks_are_valid_and_start_with_the_install_cell(name):
  notebook = read_notebook(name)
  nbformat.validate(notebook)
  code = [cell for cell in notebook.cells if cell.cell_type == 'code']
  assert "find_spec('tff_gan')" in code[0].source and 'TFF_GAN_REPO' in code[0].source
  assert "os.environ.get('TFF_GAN_TUTORIAL_SMOKE') == '1'" in code[1].source


def test_quickstart(tmp_path, monkeypatch, no_worker_survives):
  notebook = execute('quickstart', tmp_path, monkeypatch)
  config = json.loads((tmp_path / 'config.json').read_text())
  assert (config['task'], config['model'], config['rounds']) == ('digits', 'dcgan', 3)
  rows = read_rows(tmp_path / 'metrics.csv')
  assert [int(row['round']) for row in rows] == [1, 2, 3]
  for name in ('frechet_distance', 'classifier_score'):
    assert math.isfinite(float(rows[-1][name]))
  assert (tmp_path / 'samples' / 'round_00003.png').exists()
  # The data and the splits, the metric curves, real next to generated, the samples PNGs.
  assert images_shown(notebook) == 4
  assert '3 rounds in metrics.csv' in printed(notebook)


def test_privacy(tmp_path, monkeypatch, no_worker_survives):
  notebook = execute('privacy', tmp_path, monkeypatch)
  summary = json.loads((tmp_path / 'summary.json').read_text())
  populations = summary['populations']
  lowest, highest = populations['lowest_accuracy'], populations['highest_accuracy']
  # Inverted writers are those the deployed classifier fails on, and the lowest-accuracy group.
  assert summary['mean_accuracy']['inverted'] < 0.2
  assert summary['mean_accuracy']['clean'] > 0.9
  assert lowest['inverted_writers'] == len(lowest['writers'])
  assert highest['inverted_writers'] == 0
  run = json.loads((tmp_path / 'lowest_accuracy' / 'config.json').read_text())
  sampling = privacy.Sampling(run['client_sampling'], len(lowest['writers']),
                              run['clients_per_round'])
  expected = privacy.epsilon(
      privacy.clipped_sum_event(dp_accounting.GaussianDpEvent(run['dp_noise_multiplier']),
                                sampling), sampling, run['rounds'], run['dp_delta'])
  for population in (lowest, highest):
    assert math.isfinite(population['epsilon']) and population['epsilon'] > 0
    assert math.isclose(population['epsilon'], expected, rel_tol=1e-5)  # z stored as float32.
    assert 0 <= population['bright_background_fraction'] <= 1
  assert (tmp_path / 'bug_finding.png').stat().st_size > 0
  # Writers' digits, the accuracy histogram, the ε curves, bug_finding.png, the bright bars.
  assert images_shown(notebook) == 5, 'a plot did not show (is the inline backend still on?)'
  assert f"the run reports ε = {lowest['epsilon']:.4f}" in printed(notebook)


def test_remote_workers(tmp_path, monkeypatch, no_worker_survives):
  notebook = execute('remote_workers', tmp_path, monkeypatch)
  local = read_rows(tmp_path / 'local' / 'metrics.csv')
  remote = read_rows(tmp_path / 'remote' / 'metrics.csv')
  assert len(local) == len(remote) == 3
  for want, got in zip(local, remote, strict=True):
    assert got.keys() == want.keys()
    for name, value in want.items():
      if name != 'round_seconds' and got[name] != value:  # Two workers: merged in another order.
        assert math.isclose(float(got[name]), float(value), rel_tol=1e-4), (name, got, want)
  logs = sorted(tmp_path.glob('worker_*.log'))
  assert len(logs) == 2
  for log in logs:
    assert 'ExecutorService started' in log.read_text()
  output = printed(notebook)
  assert output.count('TFF worker on 127.0.0.1:') == 2
  assert output.count("exited with status 143: ['worker.py: stopped by SIGTERM.']") == 2
  assert 'same clients, examples and bytes in all 3 rounds: True' in output
  assert 'the two runs agree within 1e-4 in all 3 rounds' in output
  assert images_shown(notebook) == 2  # The differences per round, the round times.


def test_hospitals(tmp_path, monkeypatch, no_worker_survives):
  notebook = execute('hospitals', tmp_path, monkeypatch)
  for name, z in (('zDP', None), ('z_1', 1.0), ('z_3', 3.0)):
    run = tmp_path / ('noDP' if z is None else name)
    rows = read_rows(run / 'metrics.csv')
    assert [int(row['round']) for row in rows] == [1, 2, 3]
    if z is None:
      assert not (run / 'client_epsilon.csv').exists() and not rows[-1].get('epsilon')
      continue
    table = read_rows(run / 'client_epsilon.csv')
    assert len(table) == 4
    for row in table:  # Each hospital's ε from its own (q, z, steps), independently.
      steps = int(row['steps'])
      expected = privacy.example_epsilon(int(row['examples']), 16, z, steps, 1e-5) if steps else 0
      assert float(row['epsilon']) == pytest.approx(expected, rel=1e-5)
    # 2 of 4 hospitals a round: some were sampled less than others, and spent less.
    sampled = [int(row['rounds_sampled']) for row in table]
    assert sum(sampled) == 2 * 3
    assert float(rows[-1]['epsilon']) == pytest.approx(
        max(float(row['epsilon']) for row in table), rel=1e-5)
  # ε per hospital, quality against ε, the samples side by side.
  assert images_shown(notebook) == 3
  assert printed(notebook).count('largest difference from dp_accounting') == 2


def test_non_iid(tmp_path, monkeypatch, no_worker_survives):
  notebook = execute('non_iid', tmp_path, monkeypatch)
  # The printed split: 10 clients of 2,000 examples, each mode's 2,500 spread over clients
  # that hold 2 or 3 modes (shards of 1,000 straddle the modes' boundaries).
  output = printed(notebook)
  table = output.split('on each client:\n')[1].split(']]')[0]  # numpy's [[...] ... [...]]
  counts = [[int(n) for n in re.findall(r'\d+', line)] for line in table.splitlines()]
  assert [sum(row) for row in counts] == [2000] * 10
  assert [sum(column) for column in zip(*counts, strict=True)] == [2500] * 8
  assert all(2 <= sum(n > 0 for n in row) <= 3 for row in counts), counts
  runs = {'fedgan_iid': ('fedgan', 'iid'), 'fedgan': ('fedgan', 'pathological'),
          'multi_d': ('multi_d', 'pathological'), 'scaffold': ('scaffold', 'pathological')}
  up = {}
  for name, (scheme, split) in runs.items():
    config = json.loads((tmp_path / name / 'config.json').read_text())
    assert (config['scheme'], config['partition'], config['rounds']) == (scheme, split, 3)
    rows = read_rows(tmp_path / name / 'metrics.csv')
    assert [int(row['round']) for row in rows] == [1, 2, 3]
    up[name] = int(rows[-1]['bytes_up'])
    samples = np.load(tmp_path / name / 'export' / 'samples_round_3.npy')
    assert samples.shape == (1000, 2)
  # multi_d's discriminators stay home; scaffold also sends its control variates' change.
  assert up['fedgan'] == up['fedgan_iid'] and up['multi_d'] < up['fedgan'] / 3, up
  assert up['scaffold'] == pytest.approx(2 * up['fedgan'], rel=0.01), up
  assert 'last evaluation at round 3' in output
  # The clients' data, modes and quality over the rounds, the samples side by side.
  assert images_shown(notebook) == 3


def test_secure_deployment(tmp_path, monkeypatch, no_worker_survives):
  notebook = execute('secure_deployment', tmp_path, monkeypatch)
  tls = read_rows(tmp_path / 'tls' / 'metrics.csv')
  local = read_rows(tmp_path / 'local' / 'metrics.csv')
  assert len(tls) == len(local) == 3
  for got, want in zip(tls, local, strict=True):  # One TLS worker: exactly the local run.
    assert {k: v for k, v in got.items() if k != 'round_seconds'} == \
        {k: v for k, v in want.items() if k != 'round_seconds'}
  assert not (tmp_path / 'refused' / 'metrics.csv').exists()  # Refused before training.
  output = printed(notebook)
  assert output.count('exit 1, 1 line(s)') == 3, output
  assert 'refused this trainer\'s token' in output
  assert 'the worker is still running: True' in output
  assert "exited with status 143: ['worker.py: stopped by SIGTERM.']" in output
  assert 'columns that differ besides round_seconds: none' in output
  for name in ('token', 'worker.key', 'trainer.key'):
    assert (tmp_path / 'certs' / name).stat().st_mode & 0o077 == 0
  assert images_shown(notebook) == 2  # The losses of both runs, the round times.


def test_secure_aggregation(tmp_path, monkeypatch, no_worker_survives):
  notebook = execute('secure_aggregation', tmp_path, monkeypatch)
  output = printed(notebook)
  # Four clients' real updates were tapped from one round of ring.
  assert '4 clients, each update' in output and 'n_k = [32, 32, 32, 32]' in output
  assert 'the aggregator holds a secret key: False' in output
  # The masked vector's bytes pass a chi-square test for uniformity; the input's fail it.
  masked = re.search(r'masked vector: chi-square ([\d.]+) on 255 degrees of freedom, '
                     r'p = ([\d.]+)', output)
  assert masked and float(masked[2]) > 1e-4, output  # Fails 1 run in 10,000 by chance.
  unmasked = re.search(r'same input unmasked: chi-square \S+, p = (\S+)', output)
  assert unmasked and float(unmasked[1]) < 1e-6, output
  # Each decoded mean is within 2^-f of numpy's, per coordinate.
  errors = re.findall(r'largest difference from the numpy weighted mean ([\d.e+-]+) '
                      r'\(2\^-f = ([\d.e+-]+)\)', output)
  assert len(errors) == 2 and all(float(got) <= float(bound) for got, bound in errors), errors
  # k = 3, t = 2 for 4 clients: one dropout is recovered exactly, two abort in one line.
  recovered = re.search(r'1 of 4 dropped: recovered; .* within ([\d.e+-]+) of numpy\'s '
                        r'\(2\^-f = ([\d.e+-]+)\)', output)
  assert recovered and float(recovered[1]) <= float(recovered[2]), output
  aborted = [line for line in output.splitlines() if line.startswith('2 of 4 dropped:')]
  assert len(aborted) == 1 and 'SecAggAborted: secagg: the round fails' in aborted[0]
  rows = {name: read_rows(tmp_path / name / 'metrics.csv') for name in ('mean', 'he', 'secagg')}
  for name, table in rows.items():
    assert [int(row['round']) for row in table] == [1, 2], name
    assert all(int(row['clients_completed']) == 4 for row in table), name
  # The ciphertexts cost many times mean's upload; secagg's masked vectors about the same.
  up = {name: float(table[-1]['bytes_up']) for name, table in rows.items()}
  assert up['he'] > 5 * up['mean'] and up['mean'] < up['secagg'] < 1.2 * up['mean'], up
  # The secure sums release mean's update within 2^-f: the same losses to 3 decimals.
  for name in ('he', 'secagg'):
    assert float(rows[name][-1]['d_loss']) == pytest.approx(
        float(rows['mean'][-1]['d_loss']), abs=1e-3)
  # The four views, the cost bars, the samples side by side.
  assert images_shown(notebook) == 3


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_the_install_cell_on_another_python_says_so_in_one_line(name, monkeypatch, capsys):
  install = read_notebook(name).cells[2].source
  monkeypatch.setattr(sys, 'version_info', (3, 12, 1, 'final', 0))  # Hosted Colab's.
  monkeypatch.setattr(sys, 'version', '3.12.1 (main, Dec  1 2026) [GCC 11.4.0]')
  with pytest.raises(SystemExit) as exited:
    exec(compile(install, f'{name}.ipynb, cell 3', 'exec'), {})  # noqa: S102
  assert exited.value.code == 1
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1, lines
  assert 'needs Python 3.11' in lines[0] and 'this kernel runs 3.12.1' in lines[0]
  assert 'make notebook' in lines[0]


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_each_stored_notebook_was_executed_top_to_bottom_with_full_settings(name):
  # `make tutorials` stores them executed, so a reader sees the figures without running
  # anything; a code change without a re-render shows here.
  cells = [cell for cell in read_notebook(name).cells if cell.cell_type == 'code']
  assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1)), (
      f'{name}.ipynb is not stored executed top to bottom: run `make tutorials`.')
  outputs = [output for cell in cells for output in cell.outputs]
  assert not [output for output in outputs if output.output_type == 'error']
  printed = ''.join(output.get('text', '') for output in outputs)
  assert 'SMOKE=False' in printed and 'SMOKE=True' not in printed, (
      f'{name}.ipynb is stored with smoke settings: run `make tutorials`.')
  assert images_shown(read_notebook(name)) >= 2
