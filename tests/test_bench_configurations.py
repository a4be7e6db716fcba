"""Every configuration of the DP benchmarks is a command `bin/train.py` accepts, with DP and
without: a typo, or a combination a later check refuses, fails here rather than an hour
into a benchmark."""

import functools
import json
import os
import subprocess
import sys

import dp_accounting
import pytest
from conftest import REPO_ROOT
from test_train_binary import run_trains

from tff_gan.privacy import accounting

# Prints, as JSON, the `bin/train.py` flags of every configuration of benchmark `argv[1]` at
# its first default ε and without DP, as its `run` builds them (the record is bypassed).
COMMANDS = """
import importlib, json, math, os, sys
sys.path.insert(0, os.path.join(sys.argv[2], 'bench'))
bench = importlib.import_module(sys.argv[1])
import procs
commands = []
def record(path, output_dir, flags, rounds, private, *figures):
  commands.append([*flags, f'--rounds={rounds}', f'--output_dir={output_dir}'])
procs.recorded_figures = record
bench.FLAGS([sys.argv[1], f'--work_dir={sys.argv[3]}'])
for configuration in bench.CONFIGURATIONS:
  for target in (float(bench.FLAGS.epsilons[0]), math.inf):
    bench.run(configuration, target, 0)
print(json.dumps(commands))
"""

SEED_THERE = -12345


@pytest.fixture(scope='module')
def bench_commands(tmp_path_factory):
  """`bench_commands(bench)`: COMMANDS' list for benchmark `bench`, its runs under a
  directory of its own; listed once for the module's tests."""

  @functools.cache
  def commands(bench: str) -> list[list[str]]:
    work_dir = tmp_path_factory.mktemp(bench)
    listed = subprocess.run([sys.executable, '-c', COMMANDS, bench, REPO_ROOT, str(work_dir)],
                            capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
                            check=True)
    return json.loads(listed.stdout.splitlines()[-1])

  return commands


@pytest.mark.parametrize('bench', ['dp_quality', 'dp_example'])
def test_every_configuration_passes_train_checks(bench, bench_commands):
  commands = bench_commands(bench)
  assert len(commands) >= 2 * 3
  # Each output directory holds a run of another seed, so a command whose flags pass every
  # check stops at the check that follows them, before TensorFlow loads: the one that
  # refuses to resume a run of other settings (the seed among them).
  for command in commands:
    output_dir = command[-1].removeprefix('--output_dir=')
    os.makedirs(output_dir)
    with open(os.path.join(output_dir, 'config.json'), 'w') as f:
      json.dump({'seed': SEED_THERE}, f)
  for command, result in zip(commands, run_trains(*commands, timeout=120), strict=True):
    assert result.returncode == 2, (command, result.stderr)
    assert 'holds a run with other settings' in result.stderr, (command, result.stderr)
    assert f'--seed={SEED_THERE} there, 0 now' in result.stderr, (command, result.stderr)


def test_dp_quality_noise_spends_its_target_epsilon_at_the_commands_own_sampling(
    bench_commands):
  # Configurations sample different numbers of clients a round: each DP command's z, read
  # back through the forward accountant at that command's own population, clients a round
  # and rounds, spends the bench's first target ε (10), so z was calibrated to what runs.
  def value(command, name):
    return next(f.split('=', 1)[1] for f in command if f.startswith(f'--{name}='))

  private = [c for c in bench_commands('dp_quality')
             if any(f.startswith('--dp_noise_multiplier=') for f in c)]
  assert {value(c, 'clients_per_round') for c in private} >= {'100', '400'}
  for command in private:
    sampling = accounting.Sampling(value(command, 'client_sampling'),
                                   int(value(command, 'num_clients')),
                                   int(value(command, 'clients_per_round')))
    spent = accounting.epsilon(
        dp_accounting.GaussianDpEvent(float(value(command, 'dp_noise_multiplier'))), sampling,
        int(value(command, 'rounds')), float(value(command, 'dp_delta')))
    assert 9.99 <= spent <= 10 + 1e-6, command  # The calibration's search stops just below.
