"""Every configuration of the DP benchmarks is a command `bin/train.py` accepts, with DP and
without: a typo, or a combination a later check refuses, fails here rather than an hour
into a benchmark."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT
from test_train_binary import run_trains

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


@pytest.mark.parametrize('bench', ['dp_quality', 'dp_example'])
def test_every_configuration_passes_train_checks(bench, tmp_path):
  listed = subprocess.run([sys.executable, '-c', COMMANDS, bench, REPO_ROOT, str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, check=True)
  commands = json.loads(listed.stdout.splitlines()[-1])
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
