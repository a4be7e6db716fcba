"""TLS workers (`bin/worker.py --tls_*`): confined, encrypted, authenticated, same results."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import portpicker
import pytest
from conftest import REPO_ROOT, pid_alive
from test_remote import without_timing
from test_train_binary import TINY, read_rows, run_train

from tff_gan.runtime import remote, tls, workers

sys.path.insert(0, os.path.join(REPO_ROOT, 'bin'))
import make_certs  # noqa: E402

WORKER = os.path.join(REPO_ROOT, 'bin', 'worker.py')


@pytest.fixture(scope='module')
def certs(tmp_path_factory):
  directory = tmp_path_factory.mktemp('certs')
  make_certs.make(str(directory), ['localhost', '127.0.0.1'])
  return directory


def start_worker(*flags):
  """`bin/worker.py` on a free port; returns (process, port, launcher pid) once it serves."""
  port = portpicker.pick_unused_port()
  process = subprocess.Popen([sys.executable, WORKER, f'--port={port}', *flags],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=REPO_ROOT)
  banner = process.stdout.readline()
  assert 'TFF worker on' in banner, banner + process.stderr.read()
  return process, port, int(banner.split('(pid ')[1].split(';')[0])


def stop_worker(process):
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=30) == 128 + signal.SIGTERM
  assert process.stdout.read().strip() == 'worker.py: stopped by SIGTERM.'


@pytest.fixture(scope='module')
def tls_worker(certs):
  process, port, pid = start_worker(
      f'--tls_cert={certs / "worker.pem"}', f'--tls_key={certs / "worker.key"}',
      f'--tls_client_ca={certs / "ca.pem"}', f'--auth_token_file={certs / "token"}')
  yield port, pid
  stop_worker(process)
  assert not pid_alive(pid)


def trainer_flags(certs, **changes):
  files = {'tls_ca': certs / 'ca.pem', 'tls_client_cert': certs / 'trainer.pem',
           'tls_client_key': certs / 'trainer.key', 'auth_token_file': certs / 'token'}
  files.update(changes)
  return [f'--{name}={path}' for name, path in files.items() if path]


def test_a_tls_run_equals_the_local_run(tls_worker, certs, local_rows, tmp_path):
  port, _ = tls_worker
  result = run_train(*TINY, '--executor=remote', f'--workers=localhost:{port}',
                     *trainer_flags(certs), f'--output_dir={tmp_path}')
  assert result.returncode == 0, result.stderr
  assert without_timing(read_rows(tmp_path / 'metrics.csv')) == without_timing(local_rows)


def test_a_wrong_token_is_one_line_and_exit_1(tls_worker, certs, tmp_path):
  port, _ = tls_worker
  (tmp_path / 'token').write_text('not-the-token\n')
  result = run_train(*TINY, '--executor=remote', f'--workers=localhost:{port}',
                     '--worker_timeout=10', *trainer_flags(certs, auth_token_file=tmp_path /
                                                          'token'),
                     f'--output_dir={tmp_path / "run"}')
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      f"train.py: error: the TFF worker at localhost:{port} refused this trainer's token "
      '(--auth_token_file): give both sides the same token file.']
  assert not (tmp_path / 'run').exists()


def client(certs, other_certs=None, *, ca=True, certificate=True, token=True):
  source = other_certs or certs
  return tls.ClientTls(
      ca=(source / 'ca.pem').read_bytes() if ca else None,
      certificate=(certs / 'trainer.pem').read_bytes() if certificate else None,
      private_key=(certs / 'trainer.key').read_bytes() if certificate else None,
      token=(certs / 'token').read_text().strip() if token else None)


@pytest.mark.parametrize('case, message', [
    ('other CA', 'no TLS connection to the TFF worker'),
    ('no client certificate', 'needs a client certificate'),
    ('plaintext', r'needs TLS from this trainer \(--tls_ca\)'),
    ('no token', "refused this trainer's token"),
])
def test_every_wrong_credential_is_refused_at_connection(tls_worker, certs, tmp_path, case,
                                                         message):
  port, _ = tls_worker
  other = tmp_path / 'other'
  make_certs.make(str(other), ['localhost'])
  settings = {'other CA': client(certs, other), 'no client certificate':
              client(certs, certificate=False), 'plaintext': None,
              'no token': client(certs, token=False)}[case]
  with pytest.raises(workers.WorkerError, match=message) as raised:
    remote.RemoteWorker(f'localhost:{port}', timeout_seconds=20, tls=settings).connect()
  assert '\n' not in str(raised.value)


def children(pid):
  with open(f'/proc/{pid}/task/{pid}/children') as f:
    return [int(child) for child in f.read().split()]


def test_the_plaintext_executor_is_unreachable_from_the_network(tls_worker):
  _, launcher = tls_worker
  (worker_binary,) = children(launcher)
  with open(f'/proc/{worker_binary}/cmdline') as f:
    assert f.read().split('\0')[0] == workers.WORKER_BINARY
  # Its own network namespace, whose only interface is loopback.
  assert os.readlink(f'/proc/{worker_binary}/ns/net') != os.readlink('/proc/self/ns/net')
  with open(f'/proc/{worker_binary}/cmdline') as f:
    inner_port = int(next(a for a in f.read().split('\0') if a.startswith('--port='))[7:])
  with socket.socket() as probe:
    assert probe.connect_ex(('127.0.0.1', inner_port)) != 0


def listening_addresses(port):
  """Local addresses of this machine's listening TCP sockets on `port` (IPv4 and IPv6)."""
  found = []
  for table in ('/proc/net/tcp', '/proc/net/tcp6'):
    with open(table) as f:
      for line in f.readlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(':')
        if state == '0A' and int(hex_port, 16) == port:
          found.append(address)
  return found


def test_insecure_serves_loopback_only_and_nothing_else_is_refused():
  process, port, _ = start_worker('--insecure')
  try:
    # 127.0.0.1 (as IPv4, or IPv4-mapped IPv6 as gRPC binds it), nothing else.
    loopback = {'0100007F', '0000000000000000FFFF00000100007F'}
    assert listening_addresses(port) and set(listening_addresses(port)) <= loopback
    remote.RemoteWorker(f'127.0.0.1:{port}', timeout_seconds=20).connect().close()
  finally:
    stop_worker(process)
  refused = subprocess.run([sys.executable, WORKER, '--port=1'], capture_output=True,
                           text=True, timeout=60, cwd=REPO_ROOT)
  assert refused.returncode == 2
  assert 'give --tls_cert and --tls_key' in refused.stderr and '--insecure' in refused.stderr


def test_the_local_training_worker_is_confined_too():
  from tff_gan.runtime import contexts  # noqa: PLC0415

  # TFF's worker would otherwise accept anyone's computations on every interface while a
  # local run trains.
  with contexts.local_cpp_context(parallel_clients=1) as worker:
    assert worker.confined_socket and os.path.exists(worker.confined_socket)
    (worker_binary,) = children(worker.pid)
    assert os.readlink(f'/proc/{worker_binary}/ns/net') != os.readlink('/proc/self/ns/net')
    with socket.socket() as probe:
      assert probe.connect_ex(('127.0.0.1', worker.port)) != 0
  assert not os.path.exists(os.path.dirname(worker.confined_socket))
