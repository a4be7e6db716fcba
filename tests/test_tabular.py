"""The `tabular` task: CSV clients, federated column statistics, metrics, plots, bin/train."""

import concurrent.futures
import csv
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT, pid_alive, worker_pids, workers_logging_to
from PIL import Image

from tasks import federated_stats, tabular
from tff_gan.runtime import contexts

TRAIN = os.path.join(REPO_ROOT, 'bin', 'train.py')
HEADER = ('x', 'y', 'z')
# Three clients of known rows; z is a column with a large offset and a small spread.
CLIENTS = {
    'b_site': [[1.0, 2.0, 1e6 + 0.5], [3.0, -1.0, 1e6 - 0.25], [0.5, 4.0, 1e6]],
    'a_site': [[2.0, 2.0, 1e6 + 1.0], [-4.0, 0.0, 1e6 + 0.75]],
    'c_site': [[10.0, 7.5, 1e6 - 1.0]],
}
POOLED = np.array(CLIENTS['a_site'] + CLIENTS['b_site'] + CLIENTS['c_site'])  # Sorted ids.


def write_csv(path, header, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return path


def write_clients(root, clients=CLIENTS, header=HEADER):
  for client_id, rows in clients.items():
    write_csv(root / f'{client_id}.csv', header, rows)
  return root


@pytest.fixture(scope='module')
def worker():
  """One TFF worker for the module's federated computations."""
  with contexts.local_cpp_context() as local_worker:
    yield local_worker


@pytest.fixture(scope='module')
def task(worker, tmp_path_factory):
  del worker
  return tabular.TabularTask(data_dir=str(write_clients(tmp_path_factory.mktemp('table'))),
                             width=0.125)


def our_workers():
  """Live TFF workers started by this process (other test runs may share the machine)."""
  children = set()
  for pid in worker_pids():
    try:
      with open(f'/proc/{pid}/stat') as f:
        parent = int(f.read().split(') ')[-1].split()[1])
    except (OSError, ValueError, IndexError):
      continue
    if parent == os.getpid() and pid_alive(pid):
      children.add(pid)
  return children


def correlation_reference(values):
  """Pearson correlations by numpy's own `corrcoef`."""
  return np.corrcoef(np.asarray(values, np.float64), rowvar=False)


def metrics_reference(real, samples):
  off_diagonal = ~np.eye(real.shape[1], dtype=bool)
  difference = (correlation_reference(samples) - correlation_reference(real))[off_diagonal]
  return {
      'mean_gap': np.mean(np.abs(samples.mean(0) - real.mean(0))),
      'std_gap': np.mean(np.abs(samples.std(0) - real.std(0))),
      'correlation_distance': np.sqrt(np.mean(difference ** 2)),
  }


# Federated statistics.

def test_computation_type_signature_sends_only_column_sums():
  computation = federated_stats.build_column_moments_computation(3)
  assert str(computation.type_signature) == (
      '({float64[?,3]}@CLIENTS -> <count=int64,mean=float64[3],std=float64[3]>@SERVER)')
  # What leaves the clients: two federated sums (of counts and column sums, then of squares).
  intrinsics = set(re.findall(r'federated_\w+', computation.to_building_block()
                              .compact_representation()))
  assert intrinsics <= {'federated_map', 'federated_sum', 'federated_broadcast',
                        'federated_zip_at_server', 'federated_zip_at_clients',
                        'federated_apply'}, intrinsics
  assert 'federated_sum' in intrinsics


def test_federated_moments_equal_numpy_of_pooled_rows(worker):
  del worker
  mean, std = federated_stats.column_moments([np.array(rows) for rows in CLIENTS.values()])
  np.testing.assert_allclose(mean, POOLED.mean(axis=0), rtol=1e-15)
  np.testing.assert_allclose(std, POOLED.std(axis=0), rtol=1e-12)
  np.testing.assert_allclose(mean[:2], [12.5 / 6, 14.5 / 6], rtol=1e-15)  # By hand.


def test_federated_std_is_stable_for_a_large_offset(worker):
  """Timestamps: mean 1.7e9, std ~30. Raw sums of squares would lose most digits."""
  del worker
  rng = np.random.default_rng(0)
  clients = [1.7e9 + rng.normal(0, 30, (n, 2)).round(3) for n in (50, 7, 120)]
  pooled = np.concatenate(clients)
  _, std = federated_stats.column_moments(clients)
  np.testing.assert_allclose(std, pooled.std(axis=0), rtol=1e-9)
  one_pass = np.sqrt(np.abs(np.mean(pooled ** 2, axis=0) - pooled.mean(axis=0) ** 2))
  assert np.max(np.abs(one_pass / pooled.std(axis=0) - 1)) > 1e-4  # What the shift avoids.


def test_without_a_context_a_worker_is_started_and_stopped():
  """A fresh thread has no TFF context installed (the context stack is thread-local)."""
  before = our_workers()
  rows = [np.array(rows) for rows in CLIENTS.values()]
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    assert not pool.submit(contexts.execution_context_installed).result()
    mean, std = pool.submit(federated_stats.column_moments, rows).result()
  np.testing.assert_allclose(mean, POOLED.mean(axis=0), rtol=1e-15)
  np.testing.assert_allclose(std, POOLED.std(axis=0), rtol=1e-12)
  assert our_workers() == before


@pytest.mark.parametrize('client_rows, message', [
    ([], 'at least one client'),
    ([np.zeros((0, 2))], 'client 0 holds rows of shape \\(0, 2\\)'),
    ([np.zeros((2, 2)), np.zeros((2, 3))], 'client 1 holds rows of shape \\(2, 3\\)'),
    ([np.array([[1.0, np.nan]])], 'client 0 holds NaN'),
])
def test_column_moments_rejects_bad_rows(client_rows, message):
  with pytest.raises(ValueError, match=message):
    federated_stats.column_moments(client_rows)


def test_constant_columns_get_scale_one():
  scale = federated_stats.normalization_scale(np.array([5.0, 0.0, 1e6, 2.0]),
                                              np.array([0.0, 0.0, 1e-12, 0.5]))
  np.testing.assert_array_equal(scale, [1.0, 1.0, 1.0, 0.5])


# The task's data.

def test_examples_are_the_rows_normalized_by_pooled_statistics(task):
  assert task.client_ids == ['a_site', 'b_site', 'c_site']
  assert [list(i) for i in task.client_indices] == [[0, 1], [2, 3, 4], [5]]
  assert task.column_names == list(HEADER)
  assert task.examples.dtype == np.float32 and task.examples.shape == (6, 3)
  assert task.data_shape == (3,) and task.num_labels == 0 and not task.labelled
  np.testing.assert_array_equal(task.labels, np.zeros(6, np.int64))
  np.testing.assert_allclose(task.mean, POOLED.mean(axis=0), rtol=1e-15)
  np.testing.assert_allclose(task.std, POOLED.std(axis=0), rtol=1e-12)
  reference = (POOLED - POOLED.mean(axis=0)) / POOLED.std(axis=0)
  np.testing.assert_allclose(task.examples, reference, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(task.examples.mean(axis=0), 0, atol=1e-6)
  np.testing.assert_allclose(task.examples.std(axis=0), 1, rtol=1e-6)
  np.testing.assert_allclose(task.denormalize(task.examples), POOLED, rtol=1e-6, atol=1e-6)
  assert task.natural_population().client_sizes.tolist() == [2, 3, 1]
  assert task.reads_files and task.model_choices == ('mlp',)


def test_constant_column_normalizes_to_zeros(worker, tmp_path):
  del worker
  write_csv(tmp_path / 'one.csv', ['a', 'flag'], [[1, 7], [2, 7]])
  write_csv(tmp_path / 'two.csv', ['a', 'flag'], [[4, 7]])
  task = tabular.TabularTask(data_dir=str(tmp_path))
  np.testing.assert_array_equal(task.std, [np.std([1, 2, 4]), 1.0])
  np.testing.assert_array_equal(task.examples[:, 1], 0.0)
  np.testing.assert_allclose(task.denormalize([[0.0, 0.5]]), [[7 / 3, 7.5]])


def test_bom_blank_lines_and_spaces_are_accepted(worker, tmp_path):
  del worker
  (tmp_path / 'excel.csv').write_bytes(b'\xef\xbb\xbfa, b\r\n 1.5 ,2\r\n\r\n3,-4e1\r\n')
  (tmp_path / 'notes.txt').write_text('not a client')
  (tmp_path / '.hidden.csv').write_text('ignored')
  (tmp_path / 'sub.csv').mkdir()
  task = tabular.TabularTask(data_dir=str(tmp_path))
  assert task.client_ids == ['excel'] and task.column_names == ['a', 'b']
  np.testing.assert_allclose(task.mean, [2.25, -19.0])


def bad_layout(root, layout):
  """Writes the broken dataset `layout` under `root`; returns the file the error must name."""
  if layout == 'missing':
    return root
  root.mkdir()
  good = write_csv(root / 'a.csv', ['x', 'y'], [[1, 2], [3, 4]])
  if layout == 'no_csv':
    good.unlink()
    (root / 'rows.txt').write_text('x,y\n1,2\n')
    return root
  path = root / 'b.csv'
  contents = {
      'empty': '',
      'header_only': 'x,y\n',
      'other_columns': 'x,w\n1,2\n',
      'other_order': 'y,x\n1,2\n',
      'not_a_number': 'x,y\n1,2\n3,abc\n',
      'empty_cell': 'x,y\n1,2\n,4\n',
      'nan': 'x,y\n1,2\n3,NaN\n',
      'inf': 'x,y\n1,2\n3,2\n-inf,1\n',
      'huge': 'x,y\n1,2\n3,1e308\n',  # Finite, but its square overflows: the std was inf.
      'one_column': 'x\n1\n',
      'semicolons': 'x;y\n1;2\n',
      'wrong_field_count': 'x,y\n1,2,3\n',
      'no_header': '1,2\n3,4\n',
      'repeated_name': 'x,x\n1,2\n',
      'unnamed_column': 'x,\n1,2\n',
      'bad_quotes': 'x,y\n1,"2\n',
      'not_utf8': 'x,y\n1,2\n',
      'unreadable': 'x,y\n1,2\n',
  }
  if layout == 'too_few_rows':
    good.unlink()
    path.write_text('x,y\n1,2\n')
    return root
  path.write_text(contents[layout])
  if layout == 'not_utf8':
    path.write_bytes(b'x,\xff\n1,2\n')
  if layout == 'unreadable':
    if os.geteuid() == 0:
      pytest.skip('root reads files whatever their permissions')
    path.chmod(0)
  return path


@pytest.mark.parametrize('layout, message', [
    ('missing', 'is not a folder; pass the folder that holds one CSV file per client'),
    ('no_csv', "holds no .csv files; put each client's rows in a file of its own"),
    ('empty', 'is empty; write a header row of column names'),
    ('header_only', 'has a header but no data rows; add rows or remove the file'),
    ('other_columns', r"has other columns than .*a\.csv \(missing 'y'; extra 'w'\); give every "
                      'file the same header row'),
    ('other_order', r'\(the same columns in another order\)'),
    ('not_a_number', r"line 3, column 'y': 'abc' is not a number; .*encode categories"),
    ('empty_cell', "line 3, column 'x': empty cell; fill in the missing value or drop the row"),
    ('nan', "line 3, column 'y': nan is not a finite number; replace NaN and infinite"),
    ('inf', "line 4, column 'x': -inf is not a finite number"),
    ('huge', "line 3, column 'y': 1e[+]308 is beyond ±1e[+]150, .*rescale the column"),
    ('one_column', "has 1 column \\('x'\\); the tabular task needs at least 2 numeric columns"),
    ('semicolons', "has 1 column \\('x;y'\\);.*separated by commas"),
    ('wrong_field_count', 'line 2: 3 fields, but the header has 2 columns'),
    ('no_header', 'line 1 holds numbers, not column names; add a header row'),
    ('repeated_name', "column 'x' appears twice"),
    ('unnamed_column', 'column 2 has no name'),
    ('bad_quotes', 'line 2: unexpected end of data; fix the CSV quoting'),
    ('not_utf8', 'is not UTF-8 text; save it as UTF-8 CSV'),
    ('unreadable', r'cannot be read \(Permission denied\); check its permissions'),
    ('too_few_rows', 'holds only 1 data row in all its files; .*needs at least 2'),
])
def test_bad_files_get_one_line_naming_the_file(tmp_path, layout, message):
  named = bad_layout(tmp_path / 'data', layout)
  with pytest.raises(tabular.TabularError) as raised:
    tabular.TabularTask(data_dir=str(tmp_path / 'data'))
  text = str(raised.value)
  assert isinstance(raised.value, ValueError)
  assert '\n' not in text and text.startswith(str(named)), text
  assert re.search(message, text), text


# Metrics.

REAL = np.random.default_rng(3).multivariate_normal(
    [0, 1, -2], [[1.0, 0.6, -0.3], [0.6, 2.0, 0.1], [-0.3, 0.1, 0.5]], size=400)


def test_metrics_of_the_real_rows_themselves_are_zero():
  metrics = tabular.tabular_metrics(REAL, REAL)
  assert list(metrics) == list(tabular.TabularTask.metric_names)
  np.testing.assert_allclose(list(metrics.values()), 0, atol=1e-12)


def test_shifted_and_scaled_copies_give_the_known_gaps():
  shifted = tabular.tabular_metrics(REAL, REAL + [0.5, -1.0, 0.25])
  assert shifted['mean_gap'] == pytest.approx(1.75 / 3)
  assert shifted['std_gap'] == pytest.approx(0, abs=1e-12)
  assert shifted['correlation_distance'] == pytest.approx(0, abs=1e-12)
  scaled = tabular.tabular_metrics(REAL, REAL * [3.0, 1.0, 1.0])  # Correlations unchanged.
  assert scaled['std_gap'] == pytest.approx(2 * REAL[:, 0].std() / 3)
  assert scaled['mean_gap'] == pytest.approx(2 * abs(REAL[:, 0].mean()) / 3)
  assert scaled['correlation_distance'] == pytest.approx(0, abs=1e-12)


def test_correlation_distance_of_a_flipped_column():
  """Negating x flips the sign of C_xy and C_xz: each differs by twice its value."""
  flipped = REAL * [-1.0, 1.0, 1.0]
  metrics = tabular.tabular_metrics(REAL, flipped)
  c = correlation_reference(REAL)
  by_hand = np.sqrt((2 * (2 * c[0, 1]) ** 2 + 2 * (2 * c[0, 2]) ** 2) / 6)
  assert metrics['correlation_distance'] == pytest.approx(by_hand, rel=1e-12)
  for name, value in metrics_reference(REAL, flipped).items():
    assert metrics[name] == pytest.approx(value, rel=1e-12, abs=1e-12)


def test_independent_samples_match_numpy_reference():
  samples = np.random.default_rng(4).normal(size=(300, 3)) * [1, 2, 3]
  metrics = tabular.tabular_metrics(REAL, samples)
  for name, value in metrics_reference(REAL, samples).items():
    assert metrics[name] == pytest.approx(value, rel=1e-12)


def test_a_constant_sample_column_has_zero_correlations():
  samples = REAL.copy()
  samples[:, 1] = 4.0
  c = correlation_reference(REAL)
  np.testing.assert_allclose(tabular.correlation_matrix(samples),
                             [[1, 0, c[0, 2]], [0, 1, 0], [c[0, 2], 0, 1]], atol=1e-12)
  by_hand = np.sqrt((2 * c[0, 1] ** 2 + 2 * c[1, 2] ** 2) / 6)
  metrics = tabular.tabular_metrics(REAL, samples)
  assert metrics['correlation_distance'] == pytest.approx(by_hand, rel=1e-12)
  assert metrics['std_gap'] == pytest.approx(REAL[:, 1].std() / 3)


def test_non_finite_samples_give_nan_metrics():
  samples = REAL.copy()
  samples[5, 2] = np.nan
  assert all(np.isnan(v) for v in tabular.tabular_metrics(REAL, samples).values())


def test_task_evaluates_against_all_rows_and_checks_shapes(task):
  assert task.evaluate(task.examples) == pytest.approx(
      {'mean_gap': 0, 'std_gap': 0, 'correlation_distance': 0}, abs=1e-6)
  assert task.evaluate(task.examples + 1)['mean_gap'] == pytest.approx(1, rel=1e-6)
  with pytest.raises(ValueError, match='expects samples of shape'):
    task.evaluate(np.zeros((4, 2)))


def test_reference_metrics_are_a_fixed_held_out_split(task):
  order = np.random.default_rng(0).permutation(6)
  heldout, rest = order[:1], order[1:]  # round(0.2 * 6) = 1 row held out.
  expected = tabular.tabular_metrics(task.examples[rest], task.examples[heldout])
  assert task.prepare_evaluation('unused') == expected
  # One held-out row has std 0 and no correlations: std_gap is the rest's mean std.
  assert expected['std_gap'] == pytest.approx(task.examples[rest].std(axis=0).mean(), rel=1e-6)
  assert expected['mean_gap'] > 0 and expected['correlation_distance'] > 0


# Networks and rendering.

def test_networks_are_mlps_with_a_linear_output(task):
  models = task.gan_models()
  generator, discriminator = models.generator_fn(), models.discriminator_fn()
  assert models.noise_dim == 32 and models.data_shape == (3,)
  assert generator.output_shape == (None, 3) and discriminator.output_shape == (None, 1)
  assert [layer.units for layer in generator.layers if hasattr(layer, 'units')] == [32, 32, 3]
  assert generator.layers[-1].get_config()['activation'] == 'linear'
  big = np.full((1, 32), 50.0, np.float32)  # Far from tanh's [-1, 1].
  for layer in generator.layers:
    if hasattr(layer, 'kernel'):
      layer.kernel.assign(np.full(layer.kernel.shape, 0.5, np.float32))
  assert generator(big).numpy().min() > 1000  # Unbounded: reaches any number of stds.
  with pytest.raises(ValueError, match='no classes to condition on'):
    task.gan_models(conditional_gan=True)


def test_render_writes_a_png_and_no_temp_file(task, tmp_path):
  samples = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
  samples[0] = np.nan  # Left out of the plots.
  samples[1] = 100.0  # Beyond the real range: piled into the edge bins.
  path = tmp_path / 'samples.png'
  task.render(samples, str(path))
  with Image.open(path) as image:
    assert image.format == 'PNG' and image.width > 500 and image.height > 400
  task.render(np.full((8, 3), np.nan), str(tmp_path / 'all_nan.png'))
  assert sorted(os.listdir(tmp_path)) == ['all_nan.png', 'samples.png']


# bin/train.py end to end.

def run_train(*args):
  return subprocess.run([sys.executable, TRAIN, *args], capture_output=True, text=True,
                        timeout=300, cwd=REPO_ROOT)


def test_bin_train_on_csv_files(tmp_path):
  rng = np.random.default_rng(0)
  for client_id, size in (('clinic_1', 30), ('clinic_2', 20), ('clinic_3', 25)):
    x = rng.normal(size=(size, 1))
    write_csv(tmp_path / 'data' / f'{client_id}.csv', ['age', 'weight', 'dose'],
              np.hstack([50 + 10 * x, 70 + 5 * x + rng.normal(size=(size, 1)),
                         rng.exponential(2.0, (size, 1))]).round(2))
  output_dir = tmp_path / 'out'
  result = run_train('--task=tabular', f'--data_dir={tmp_path / "data"}', '--rounds=2',
                     '--clients_per_round=2', '--model_width=0.0625', '--batch_size=8',
                     '--eval_every=1', '--num_eval_samples=64', '--noprogress',
                     f'--output_dir={output_dir}')
  assert result.returncode == 0, result.stderr
  with open(output_dir / 'metrics.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert [row['round'] for row in rows] == ['1', '2']
  for row in rows:
    for name in tabular.TabularTask.metric_names:
      assert np.isfinite(float(row[name])) and float(row[name]) >= 0
  assert sorted(os.listdir(output_dir / 'samples')) == ['round_00001.png', 'round_00002.png']
  assert (output_dir / 'real_data_metrics.json').exists()
  assert not workers_logging_to(output_dir / 'worker.log')
  # bin/generate exports the samples normalized (.npy) and in the columns' units (.csv).
  result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, 'bin', 'generate.py'),
                           f'--output_dir={output_dir}', '--num_samples=16'],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
  assert result.returncode == 0, result.stderr
  normalized = np.load(output_dir / 'export' / 'samples_round_2.npy')
  with open(output_dir / 'export' / 'samples_round_2.csv', newline='') as f:
    exported = list(csv.reader(f))
  assert exported[0] == ['age', 'weight', 'dose']
  real = np.loadtxt(tmp_path / 'data' / 'clinic_1.csv', delimiter=',', skiprows=1)
  for other in ('clinic_2', 'clinic_3'):
    real = np.vstack([real, np.loadtxt(tmp_path / 'data' / f'{other}.csv', delimiter=',',
                                       skiprows=1)])
  np.testing.assert_allclose(np.array(exported[1:], float),
                             real.mean(axis=0) + real.std(axis=0) * normalized, rtol=1e-5)


def test_bin_train_bad_file_exits_2_with_one_line(tmp_path):
  write_csv(tmp_path / 'data' / 'a.csv', ['x', 'y'], [[1, 2], [3, 4]])
  write_csv(tmp_path / 'data' / 'b.csv', ['x', 'y'], [[1, 2], [3, 'n/a']])
  result = run_train('--task=tabular', f'--data_dir={tmp_path / "data"}', '--noprogress',
                     f'--output_dir={tmp_path / "out"}')
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith('train.py: error: ') and f'{tmp_path}/data/b.csv, line 3' in lines[0]
  assert not (tmp_path / 'out' / 'metrics.csv').exists()
