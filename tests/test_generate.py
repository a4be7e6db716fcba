"""`bin/generate.py` and `bin/evaluate.py` on one tiny finished run: exports, metrics, errors."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO_ROOT, truncate_checkpoint
from PIL import Image
from test_train_binary import run_train

import tasks
from tff_gan import files
from tff_gan.run import config as config_lib
from tff_gan.run import export, rundir, schemes
from tff_gan.run import persistence as program
from tff_gan.runtime import contexts

GENERATE = os.path.join(REPO_ROOT, 'bin', 'generate.py')
EVALUATE = os.path.join(REPO_ROOT, 'bin', 'evaluate.py')
# Checkpoints at rounds 1 and 2; 2000 evaluation samples so that the ring metrics at round 2
# are not all zero (a few samples already land near a mode).
TINY = ['--rounds=2', '--eval_every=1', '--checkpoint_every=1', '--model_width=0.03125',
        '--num_clients=4', '--clients_per_round=3', '--local_steps=2', '--batch_size=16',
        '--num_eval_samples=2000', '--noprogress']
METRICS = ('modes_captured', 'high_quality_fraction', 'reverse_kl')
# A save bin/train.py would be writing right now: readers must leave it alone.
IN_PROGRESS_SAVE = 'round_3_temp1234'


def run(script, *args, timeout=120):
  return subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                        timeout=timeout, cwd=REPO_ROOT)


def start(script, *args):
  return subprocess.Popen([sys.executable, script, *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)


def one_error_line(result, program):
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith(f'{program}: error: '), lines[0]
  return lines[0]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A finished two-round ring run, plus a copy with a damaged round-2 checkpoint."""
  root = tmp_path_factory.mktemp('generate')
  run_dir = root / 'run'
  result = run_train(*TINY, f'--output_dir={run_dir}')
  assert result.returncode == 0, result.stderr
  damaged = root / 'damaged'
  shutil.copytree(run_dir, damaged)
  truncate_checkpoint(damaged, 2)
  reference = root / 'reference'  # Read in-process by program.Checkpoints (which cleans up).
  shutil.copytree(run_dir, reference)
  (run_dir / rundir.CHECKPOINT_DIR / IN_PROGRESS_SAVE).mkdir()
  return root


@pytest.fixture(scope='module')
def launched(trained):
  """The slow commands (each imports TensorFlow and TFF), started together."""
  run_dir = trained / 'run'
  return {
      'latest': start(GENERATE, f'--output_dir={run_dir}'),
      'round_1': start(GENERATE, f'--output_dir={run_dir}', '--round=1', '--num_samples=10',
                       '--seed=3', f'--export_dir={trained / "round_1"}'),
      'damaged': start(GENERATE, f'--output_dir={trained / "damaged"}'),
      'evaluate': start(EVALUATE, f'--output_dir={run_dir}', '--round=2'),
      'evaluate_json': start(EVALUATE, f'--output_dir={run_dir}', '--json'),
  }


@pytest.fixture(scope='module')
def reference(trained, launched):
  """The run's task and models, and the generator weights of rounds 1 and 2, read here."""
  del launched  # Started first, so that they run while this loads.
  output_dir = str(trained / 'reference')
  with open(os.path.join(output_dir, rundir.CONFIG_FILE)) as f:
    config = config_lib.TrainConfig(**json.load(f))
  task = tasks.get_task(config.task, seed=config.seed, model=config.model,
                        width=config.model_width)
  models = task.gan_models()
  process = schemes.build_process(config, models)
  with contexts.local_cpp_context(log_path=str(trained / 'worker.log')):
    template = process.initialize()
  checkpoints = program.Checkpoints(output_dir)
  weights = {r: checkpoints.load(r, template).weights.generator for r in checkpoints.rounds()}
  return config, task, models, weights


@pytest.fixture(scope='module')
def results(launched, reference):
  del reference  # Loaded while the commands ran.
  finished = {}
  for name, process in launched.items():
    stdout, stderr = process.communicate(timeout=300)
    finished[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout,
                                                 stderr)
  return finished


def rebuilt_generator(models, weights):
  generator = models.generator_fn()
  for variable, value in zip(generator.trainable_variables, weights, strict=True):
    variable.assign(value)
  return generator


def test_writes_png_npy_and_keras_of_the_latest_round(trained, results):
  result = results['latest']
  assert result.returncode == 0, result.stderr
  export_dir = trained / 'run' / 'export'
  names = ['samples_round_2.png', 'samples_round_2.npy', 'generator_round_2.keras']
  assert sorted(os.listdir(export_dir)) == sorted(names)  # No temporary files left.
  assert result.stdout.splitlines() == [f'generate.py: wrote {export_dir / n}' for n in names]
  with Image.open(export_dir / 'samples_round_2.png') as image:
    assert image.format == 'PNG' and image.size == (512, 512)
  assert not result.stderr.strip(), result.stderr


def test_npy_holds_the_samples_of_the_checkpoint_weights(trained, results, reference):
  assert results['latest'].returncode == 0, results['latest'].stderr
  _, _, models, weights = reference
  saved = np.load(trained / 'run' / 'export' / 'samples_round_2.npy')
  assert saved.shape == (64, 2) and saved.dtype == np.float32  # Defaults: 64 samples, seed 0.
  np.testing.assert_array_equal(saved, export.SampleGenerator(models)(weights[2], 64, 0))


def test_keras_file_reloads_and_matches_the_checkpoint_generator(trained, results, reference):
  assert results['latest'].returncode == 0, results['latest'].stderr
  _, _, models, weights = reference
  loaded = tf.keras.models.load_model(str(trained / 'run' / 'export' /
                                          'generator_round_2.keras'))
  assert loaded.input_shape == (None, models.noise_dim)
  noise = tf.random.stateless_normal([100, models.noise_dim], seed=[11, 1])
  expected = rebuilt_generator(models, weights[2])(noise, training=False).numpy()
  np.testing.assert_array_equal(loaded(noise, training=False).numpy(), expected)
  assert expected.shape == (100, 2)
  # The .npy samples are the exported model's output for the noise of seed 0.
  saved = np.load(trained / 'run' / 'export' / 'samples_round_2.npy')
  noise = tf.random.stateless_normal([64, models.noise_dim], seed=[0, 1])
  np.testing.assert_array_equal(loaded(noise, training=False).numpy(), saved)


def test_round_flag_selects_a_saved_round(trained, results, reference):
  result = results['round_1']
  assert result.returncode == 0, result.stderr
  _, _, models, weights = reference
  export_dir = trained / 'round_1'
  assert sorted(os.listdir(export_dir)) == ['generator_round_1.keras', 'samples_round_1.npy',
                                            'samples_round_1.png']
  saved = np.load(export_dir / 'samples_round_1.npy')
  np.testing.assert_array_equal(saved, export.SampleGenerator(models)(weights[1], 10, 3))
  assert not np.array_equal(saved, export.SampleGenerator(models)(weights[2], 10, 3))


def test_a_save_in_progress_is_left_alone(trained, results):
  assert results['latest'].returncode == 0, results['latest'].stderr
  assert (trained / 'run' / rundir.CHECKPOINT_DIR / IN_PROGRESS_SAVE).is_dir()


def test_damaged_checkpoint_gives_one_line_and_exit_1(trained, results):
  result = results['damaged']
  assert result.returncode == 1, result.stderr
  line = one_error_line(result, 'generate.py')
  assert 'checkpoint' in line and 'round_2 cannot be read' in line
  assert not (trained / 'damaged' / 'export').exists()


def read_round(output_dir, round_num):
  with open(output_dir / 'metrics.csv', newline='') as f:
    return next(row for row in csv.DictReader(f) if row['round'] == str(round_num))


def test_evaluate_prints_the_metrics_training_computed(trained, results):
  result = results['evaluate']
  assert result.returncode == 0, result.stderr
  row = read_round(trained / 'run', 2)
  assert result.stdout.splitlines() == [f'{name}={row[name]}' for name in METRICS]


def test_evaluate_json_defaults_to_the_latest_round(trained, results):
  result = results['evaluate_json']
  assert result.returncode == 0, result.stderr
  values = json.loads(result.stdout)
  row = read_round(trained / 'run', 2)
  assert list(values) == list(METRICS)
  for name in METRICS:
    if row[name] == 'nan':
      assert values[name] is None
    else:
      assert values[name] == pytest.approx(float(row[name]), rel=1e-5)


def test_unsaved_round_lists_the_saved_ones(trained):
  for script, program_name in ((GENERATE, 'generate.py'), (EVALUATE, 'evaluate.py')):
    result = run(script, f'--output_dir={trained / "run"}', '--round=7')
    assert result.returncode == 2, result.stderr
    line = one_error_line(result, program_name)
    assert 'round 7 was not saved' in line and 'saved rounds: 1, 2' in line


def test_missing_directory_gives_one_line(tmp_path):
  for script, program_name in ((GENERATE, 'generate.py'), (EVALUATE, 'evaluate.py')):
    result = run(script, f'--output_dir={tmp_path / "nowhere"}')
    assert result.returncode == 2
    assert 'does not exist' in one_error_line(result, program_name)
  assert not (tmp_path / 'nowhere').exists()


def test_run_without_checkpoints_says_train_first(trained, tmp_path):
  shutil.copy(trained / 'run' / rundir.CONFIG_FILE, tmp_path)
  result = run(GENERATE, f'--output_dir={tmp_path}')
  assert result.returncode == 2
  line = one_error_line(result, 'generate.py')
  assert line.endswith(f'no checkpoint in {tmp_path / "checkpoints"}; train first.')
  assert sorted(os.listdir(tmp_path)) == [rundir.CONFIG_FILE]  # Nothing created.


@pytest.mark.parametrize('args, message', [
    ([], '--output_dir is required'),
    (['--num_samples=0'], '--num_samples must be positive'),
    (['--round=0'], '--round must be positive'),
    (['--round=last'], 'flag --round=last'),
    (['--seed=99999999999999999999'], '--seed must fit in 64 bits'),
    (['--export_dir=/proc/version/out'], 'cannot create --export_dir'),
    (['stray_argument'], 'unexpected arguments'),
])
def test_bad_flags_exit_2_with_one_line(trained, args, message):
  output_dir = [f'--output_dir={trained / "run"}'] if args else []
  result = run(GENERATE, *output_dir, *args)
  assert result.returncode == 2, result.stderr
  assert message in one_error_line(result, 'generate.py')


def test_no_config_json_gives_one_line(tmp_path):
  result = run(EVALUATE, f'--output_dir={tmp_path}')
  assert result.returncode == 2
  assert f'no config.json in {tmp_path}' in one_error_line(result, 'evaluate.py')


def test_saved_rounds_reads_the_directories_program_writes(trained):
  assert rundir.saved_rounds(str(trained / 'run')) == [1, 2]
  assert program.Checkpoints(str(trained / 'reference')).rounds() == [1, 2]


def test_help_lists_the_flags():
  for script, names in ((GENERATE, ('--output_dir', '--round', '--num_samples', '--seed',
                                    '--export_dir')),
                        (EVALUATE, ('--output_dir', '--round', '--num_samples', '--seed',
                                    '--json'))):
    result = run(script, '--help')
    assert result.returncode == 0
    for name in names:
      assert name in result.stdout


def test_outputs_are_written_all_or_nothing(tmp_path):
  (tmp_path / 'a.npy').write_text('old')

  def fail(path):
    with open(path, 'w') as f:
      f.write('half')
    raise OSError('disk full')

  writers = {str(tmp_path / 'a.npy'): lambda path: np.save(path, np.zeros(3)),
             str(tmp_path / 'b.keras'): fail}
  with pytest.raises(OSError, match='disk full'):
    files.write_outputs(writers)
  assert sorted(os.listdir(tmp_path)) == ['a.npy']  # No temporary file, no new file.
  assert (tmp_path / 'a.npy').read_text() == 'old'

  writers[str(tmp_path / 'b.keras')] = lambda path: open(path, 'w').close()
  assert files.write_outputs(writers) == list(writers)
  assert sorted(os.listdir(tmp_path)) == ['a.npy', 'b.keras']
  np.testing.assert_array_equal(np.load(tmp_path / 'a.npy'), np.zeros(3))
