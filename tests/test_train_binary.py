"""`bin/train.py` end to end: outputs, determinism, usage errors, no worker left behind."""

import csv
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

TRAIN = os.path.join(REPO_ROOT, 'bin', 'train.py')
TINY = ['--rounds=2', '--eval_every=1', '--model_width=0.03125', '--num_clients=4',
        '--clients_per_round=3', '--local_steps=2', '--batch_size=16', '--num_eval_samples=200',
        '--noprogress']


def run_train(*args, timeout=300):
  return run_trains(list(args), timeout=timeout)[0]


def run_trains(*arg_lists, timeout=300, env=None):
  """`run_train` of each argument list, all at once (most of a tiny run is single-threaded
  start-up, so two share 2 cores well); their `CompletedProcess`es, in order."""
  processes = [subprocess.Popen([sys.executable, TRAIN, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=env)
               for args in arg_lists]
  results = []
  for process in processes:
    stdout, stderr = process.communicate(timeout=timeout)
    results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
  return results


def read_rows(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def run_whole_and_resumed(tmp_path, *flags):
  """3 rounds in one go (`whole/`) and as 2 + 1 after a restart (`resumed/`).

  Returns:
    `rows(name)`: the metrics rows of `whole` or `resumed`, without `round_seconds`.
  """
  whole, first = run_trains([*flags, '--rounds=3', f'--output_dir={tmp_path / "whole"}'],
                            [*flags, '--rounds=2', f'--output_dir={tmp_path / "resumed"}'])
  assert whole.returncode == 0, whole.stderr
  assert first.returncode == 0, first.stderr
  second = run_train(*flags, '--rounds=3', f'--output_dir={tmp_path / "resumed"}')
  assert second.returncode == 0, second.stderr

  def rows(name):
    return [{k: v for k, v in row.items() if k != 'round_seconds'}
            for row in read_rows(tmp_path / name / 'metrics.csv')]

  return rows


def test_writes_config_metrics_and_samples(tiny_runs):
  (output_dir, result), _ = tiny_runs[0]
  config = json.loads((output_dir / 'config.json').read_text())
  assert config['task'] == 'ring' and config['rounds'] == 2 and config['num_clients'] == 4
  rows = read_rows(output_dir / 'metrics.csv')
  assert [row['round'] for row in rows] == ['1', '2']
  for column in ('round', 'round_seconds', 'd_loss', 'g_loss', 'modes_captured',
                 'high_quality_fraction', 'reverse_kl'):
    assert column in rows[0]
  for row in rows:
    assert float(row['round_seconds']) > 0
    assert 0 <= int(row['modes_captured']) <= 8
    assert 0 <= float(row['high_quality_fraction']) <= 1
    # IID clients hold every mode: each client's coverage is the run's modes captured / 8.
    assert float(row['min_client_coverage']) == int(row['modes_captured']) / 8
  assert sorted(os.listdir(output_dir / 'samples')) == ['round_00001.png', 'round_00002.png']
  assert (output_dir / 'training_curves.png').read_bytes()[:4] == b'\x89PNG'
  assert 'done' in result.stdout


def test_bytes_columns_match_the_model_size(tiny_runs):
  """Down: every weight as float32 plus the int64[2] round seed; up: the float32 delta, its
  weight, and a few scalar metrics."""
  import tasks
  (output_dir, _), _ = tiny_runs[0]
  models = tasks.get_task('ring', width=0.03125).gan_models()
  num_params = models.generator_fn().count_params() + models.discriminator_fn().count_params()
  for row in read_rows(output_dir / 'metrics.csv'):
    clients, completed = int(row['clients']), int(row['clients_completed'])
    assert int(row['bytes_down']) == clients * (4 * num_params + 16)
    metrics_bytes = int(row['bytes_up']) - completed * (4 * num_params + 4)
    assert 0 < metrics_bytes <= completed * 32


def test_same_seed_gives_identical_loss_columns(tiny_runs):
  (dir_a, _), (dir_b, _) = tiny_runs[0]
  rows_a, rows_b = read_rows(dir_a / 'metrics.csv'), read_rows(dir_b / 'metrics.csv')
  for column in ('d_loss', 'g_loss', 'modes_captured', 'high_quality_fraction'):
    assert [r[column] for r in rows_a] == [r[column] for r in rows_b]


def test_no_worker_survives_a_run(tiny_runs):
  _, survivors = tiny_runs
  assert not survivors()


def test_tensorflow_start_up_noise_is_hidden(tiny_runs):
  for _, result in tiny_runs[0]:
    for noise in ('cuda', 'oneDNN', 'TensorRT', 'cpu_feature_guard'):
      assert noise not in result.stderr


@pytest.mark.parametrize('args, message', [
    (['--task=mnist'], "unknown --task 'mnist'"),
    (['--scheme=fedsomething'], "unknown --scheme 'fedsomething'"),
    (['--num_clients=5', '--clients_per_round=6'], '--clients_per_round=6 exceeds'),
    (['--rounds=0'], '--rounds must be positive'),
    (['--batch_size=-3'], '--batch_size must be positive'),
    (['--rounds=many'], 'flag --rounds=many'),
    (['--output_dir=/proc/version/out'], 'cannot create --output_dir'),
    (['--model=dcgan'], "unknown model 'dcgan' for task 'ring'"),
    (['--partition=pathological', '--labels_per_client=9'], 'labels_per_client'),
    (['stray_argument'], 'unexpected arguments'),
    (['--dp_noise_multiplier=-0.5'], '--dp_noise_multiplier must be >= 0'),
    (['--dp_noise_multiplier=1', '--dp_clip=0'], '--dp_clip must be positive'),
    (['--dp_noise_multiplier=1', '--dp_delta=1'], '--dp_delta must be in (0, 1)'),
    (['--dp_noise_multiplier=1', '--dp_adaptive_clip_quantile=1.5'],
     '--dp_adaptive_clip_quantile must be in (0, 1)'),
    (['--dp_clip=0.1'], '--dp_clip has no effect without --dp_noise_multiplier'),
    (['--dp_noise_multiplier=1', '--dp_accountant=pld'], 'needs --client_sampling=poisson'),
    (['--client_sampling=bernoulli'], "unknown --client_sampling 'bernoulli'"),
    (['--proximal_mu=-1'], '--proximal_mu must be >= 0'),
    (['--dropout_rate=1'], '--dropout_rate must be in [0, 1)'),
    (['--aggregator=robust', '--dp_noise_multiplier=1'], 'cannot be combined with differential'),
    (['--aggregator=median'], "unknown --aggregator 'median'"),
    (['--scheme=centralized', '--dp_noise_multiplier=1'],
     '--dp_noise_multiplier has no meaning for --scheme=centralized'),
    (['--bits=4'], '--bits applies only to --aggregator=compressed'),
    (['--hadamard'], '--hadamard applies only to --aggregator=compressed'),
    (['--aggregator=compressed', '--bits=17'], '--bits must be from 1 to 16'),
    (['--scheme=fedsgd', '--proximal_mu=0.1'], 'fedsgd takes no local steps'),
    (['--proximal_networks=discriminator'], 'set --scheme=fedgan and --proximal_mu > 0'),
    (['--dp_noise_multiplier=1', '--dp_adaptive_clip_quantile=0.5'],
     'adaptive clipping cannot reach noise multiplier 1.0'),
])
def test_usage_errors_exit_2_with_one_line(args, message, tmp_path):
  result = run_train(f'--output_dir={tmp_path}/out', '--noprogress', *args)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith('train.py: error: ') and message in lines[0], lines[0]
  assert not os.path.exists(tmp_path / 'out' / 'metrics.csv')


def test_help_lists_the_flags_and_exits_0():
  result = run_train('--help')
  assert result.returncode == 0
  for flag in ('--task', '--scheme', '--num_clients', '--clients_per_round', '--rounds',
               '--partition', '--dirichlet_alpha', '--labels_per_client', '--local_steps',
               '--batch_size', '--client_optimizer', '--client_learning_rate',
               '--server_optimizer', '--server_learning_rate', '--server_lr_half_life',
               '--loss', '--eval_every',
               '--seed', '--output_dir', '--aggregator', '--bits', '--[no]hadamard',
               '--checkpoint_every', '--[no]overwrite'):
    assert flag in result.stdout
  assert 'SIMULATED' in result.stdout  # --aggregator=secure says plainly what is not real.
