"""Remote TFF workers on loopback: bin/worker, one and two workers, failures, resuming."""

import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import portpicker
import pytest
import tensorflow as tf
from conftest import (
  REPO_ROOT,
  as_numpy,
  linear_gan_models,
  pid_alive,
  worker_pids,
  workers_started_since,
)
from tensorflow_federated.proto.v0 import executor_pb2
from test_train_binary import TINY, TRAIN, read_rows, run_train

from tff_gan.algorithms import fedgan, optimizers
from tff_gan.clients import populations as data
from tff_gan.run import config as config_lib
from tff_gan.run import rundir
from tff_gan.runtime import contexts
from tff_gan.runtime import remote as remote_lib
from tff_gan.runtime import workers as worker_lib
from tff_gan.runtime.addresses import parse_address

WORKER = os.path.join(REPO_ROOT, 'bin', 'worker.py')


@pytest.fixture(scope='module')
def workers():
  """Two TFF workers on free loopback ports, as `bin/worker.py` runs them."""
  started = [worker_lib.LocalWorker().start() for _ in range(2)]
  yield started
  for worker in started:
    worker.stop()


def addresses(workers) -> str:
  return ','.join(f'localhost:{worker.port}' for worker in workers)


def without_timing(rows):
  return [{k: v for k, v in row.items() if k != 'round_seconds'} for row in rows]


def test_one_remote_worker_gives_the_local_run_exactly(workers, local_rows, tmp_path):
  result = run_train(*TINY, '--executor=remote', f'--workers=localhost:{workers[0].port}',
                     f'--output_dir={tmp_path}')
  assert result.returncode == 0, result.stderr
  assert without_timing(read_rows(tmp_path / 'metrics.csv')) == without_timing(local_rows)


def test_two_remote_workers_give_the_local_run(workers, local_rows, tmp_path):
  """Equal up to float rounding: the merged sums add the clients in another order."""
  result = run_train(*TINY, '--executor=remote', f'--workers={addresses(workers)}',
                     f'--output_dir={tmp_path}')
  assert result.returncode == 0, result.stderr
  remote_rows = without_timing(read_rows(tmp_path / 'metrics.csv'))
  assert len(remote_rows) == len(local_rows) == 2
  for got, want in zip(remote_rows, without_timing(local_rows), strict=True):
    assert got.keys() == want.keys()
    for name in got:
      if got[name] == want[name]:
        continue
      assert math.isclose(float(got[name]), float(want[name]), rel_tol=1e-4), (name, got, want)


def test_each_worker_runs_part_of_the_clients(tff_context, workers):
  process = fedgan.build_fedgan_process(
      linear_gan_models(), client_optimizer=optimizers.build_optimizer('sgd', 0.05), seed=3)
  rng = np.random.default_rng(0)
  clients = data.ClientPopulation(rng.normal(size=(40, 2)).astype(np.float32),
                                  np.array_split(np.arange(40), 10))
  keyed = process.with_client_data(clients, data.LocalWork(batch_size=2))
  keys = data.round_keys(np.arange(10), round_num=1, seed=3)
  state = keyed.initialize()
  with contexts.remote_context([f'localhost:{w.port}' for w in workers]) as remote:
    before = [len(worker.clients_served) for worker in remote]
    merged, metrics = keyed.next(state, keys)
    served = [max(worker.clients_served[start:])
              for worker, start in zip(remote, before, strict=True)]
  assert served == [5, 5]
  assert metrics['num_examples'] == 40
  local, _ = keyed.next(state, keys)  # The session's local worker, outside the block.
  for got, want in zip(tf.nest.flatten(as_numpy(merged.weights)),
                       tf.nest.flatten(as_numpy(local.weights)), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_an_unreachable_worker_is_one_line_naming_it(tmp_path):
  port = portpicker.pick_unused_port()
  start = time.monotonic()
  result = run_train(*TINY, '--executor=remote', f'--workers=localhost:{port}',
                     '--worker_timeout=1', f'--output_dir={tmp_path}')
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and f'localhost:{port}' in lines[0], result.stderr
  assert time.monotonic() - start < 60
  assert not (tmp_path / 'metrics.csv').exists()


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_bin_worker_serves_refuses_a_taken_port_and_stops_on_signals(tmp_path, signum):
  port = portpicker.pick_unused_port()
  server = subprocess.Popen(
      [sys.executable, WORKER, f'--port={port}', '--insecure',
       f'--log_file={tmp_path / "worker.log"}'],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  try:
    banner = server.stdout.readline()
    assert f'127.0.0.1:{port}, plaintext' in banner, banner + server.stderr.read()
    worker_pid = int(banner.split('(pid ')[1].split(';')[0])
    assert pid_alive(worker_pid)
    remote_lib.RemoteWorker(f'localhost:{port}', timeout_seconds=10).connect().close()

    second = subprocess.run([sys.executable, WORKER, f'--port={port}', '--insecure'],
                            capture_output=True,
                            text=True, timeout=60, cwd=REPO_ROOT)
    assert second.returncode == 1
    assert f'port {port} is taken' in second.stderr and len(second.stderr.splitlines()) == 1

    server.send_signal(signum)
    assert server.wait(timeout=30) == 128 + signum
    assert server.stdout.read().strip() == f'worker.py: stopped by {signal.Signals(signum).name}.'
    assert not pid_alive(worker_pid)
  finally:
    server.kill()
    server.wait()


def test_a_lost_worker_ends_the_run_and_the_same_command_resumes(tmp_path):
  before = worker_pids()
  ports = [portpicker.pick_unused_port() for _ in range(2)]
  live = [worker_lib.LocalWorker(port=port).start() for port in ports]
  # --checkpoint_every=10: no periodic checkpoint within the 4 rounds, so the one found after
  # the loss is the last recorded round's, saved because the worker was lost.
  command = [sys.executable, TRAIN, *TINY, '--rounds=4', '--checkpoint_every=10',
             '--executor=remote', f'--workers={addresses(live)}', '--worker_timeout=3',
             f'--output_dir={tmp_path}']
  try:
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True, cwd=REPO_ROOT)
    deadline = time.monotonic() + 120
    while len(read_rows(tmp_path / 'metrics.csv') if (tmp_path / 'metrics.csv').exists()
              else []) < 2:
      assert run.poll() is None and time.monotonic() < deadline, run.stderr.read()
      time.sleep(0.1)
    os.kill(live[1].pid, signal.SIGKILL)
    lost_at = time.monotonic()
    assert run.wait(timeout=60) == 1
    assert time.monotonic() - lost_at < 3 + 30  # The timeout, plus the round under way.
    lines = run.stderr.read().strip().splitlines()
    assert len(lines) == 1 and f'lost the TFF worker at localhost:{ports[1]}' in lines[0]
    assert workers_started_since(before) == {live[0].pid}  # Nothing else left running.
    rows_before = len(read_rows(tmp_path / 'metrics.csv'))
    assert rows_before < 4
    assert os.listdir(tmp_path / 'checkpoints') == [f'round_{rows_before}']

    live[1] = worker_lib.LocalWorker(port=ports[1]).start()  # The worker is back.
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300,
                             cwd=REPO_ROOT)
    assert resumed.returncode == 0, resumed.stderr
    assert [int(row['round']) for row in read_rows(tmp_path / 'metrics.csv')] == list(
        range(1, 5))
  finally:
    for worker in live:
      worker.stop()


def test_freeing_values_on_a_lost_worker_neither_raises_nor_waits():
  # TFF frees remote values from finalizers, at exit too: an error there is a traceback
  # after the run's one line, and a wait for the lost worker delays the exit.
  live = worker_lib.LocalWorker(port=portpicker.pick_unused_port()).start()
  try:
    worker = remote_lib.RemoteWorker(f'localhost:{live.port}', timeout_seconds=8).connect()
  finally:
    live.stop()
  start = time.monotonic()
  assert worker.stub.dispose(executor_pb2.DisposeRequest()) is None
  assert worker.stub.dispose_executor(executor_pb2.DisposeExecutorRequest()) is None
  assert time.monotonic() - start < 4  # Not the worker's timeout.
  with pytest.raises(remote_lib.WorkerLostError, match=f'localhost:{live.port}'):
    worker.stub.compute(executor_pb2.ComputeRequest())  # Computing waits, then says so.
  worker.close()
  assert worker.stub.dispose(executor_pb2.DisposeRequest()) is None  # A closed channel.


@pytest.mark.parametrize('flags, message', [
    (dict(workers='localhost:8000'), '--workers needs --executor=remote'),
    (dict(executor='remote'), '--executor=remote needs --workers'),
    (dict(executor='remote', workers='localhost'), "'localhost' is not host:port"),
    (dict(executor='remote', workers='a:8000,a:8000'), 'lists a worker twice'),
    (dict(executor='remote', workers='a:70000'), 'is not host:port'),
    (dict(executor='remote', workers='a:1', worker_timeout=0), '--worker_timeout must be'),
])
def test_executor_flags_are_checked(flags, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.TrainConfig(**flags).validate()


def test_a_run_may_resume_on_other_workers(tmp_path):
  first = config_lib.TrainConfig(output_dir=str(tmp_path)).validate()
  (tmp_path / rundir.CONFIG_FILE).write_text(first.to_json())
  moved = config_lib.TrainConfig(output_dir=str(tmp_path), executor='remote',
                                 workers='[::1]:8000,10.0.0.6:8000', worker_timeout=5)
  rundir.check_same_run(moved.validate())  # No error: where it runs is not the run.
  assert moved.worker_addresses == ['[::1]:8000', '10.0.0.6:8000']
  assert parse_address('[::1]:8000') == ('::1', 8000)
