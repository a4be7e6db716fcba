"""Serve TFF's executor on this machine, for `bin/train.py --executor=remote` elsewhere.

Runs the `worker_binary` that ships in the tensorflow-federated wheel (TFF's C++ executor
service) on --port, with one client per core by default, until Ctrl-C or SIGTERM. It listens
on every network interface and speaks plain gRPC: no TLS, no authentication. Run it only on a
private network or behind a firewall that admits the trainer alone (docs/deployment.md).

Examples:
  python bin/worker.py --port=8000
  python bin/worker.py --port=8000 --max_concurrent_computation_calls=4 --log_file=worker.log
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import time

import _cli
from absl import flags

flags.DEFINE_integer('port', 8000, 'TCP port to listen on (all interfaces).')
flags.DEFINE_integer('max_concurrent_computation_calls', 0, 'Computations (e.g. clients) the '
                     'worker runs at once; 0 means one per core. Each gets an equal share of '
                     'the cores for its TensorFlow ops.')
flags.DEFINE_string('log_file', '', "File for the worker's own output (TensorFlow and gRPC "
                    'messages); default: a new file in the temp dir, named at start and deleted '
                    'when the worker stops cleanly.')
FLAGS = flags.FLAGS


def port_taken(port: int) -> bool:
  """Whether another program listens on `port` (gRPC itself would silently share it)."""
  for family, address in ((socket.AF_INET6, '::'), (socket.AF_INET, '0.0.0.0')):
    try:
      with socket.socket(family, socket.SOCK_STREAM) as probe:
        # Ignores connections of a stopped server still in TIME_WAIT, not live listeners.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((address, port))
      return False
    except OSError as e:
      if e.errno == errno.EADDRINUSE:
        return True
      if e.errno != errno.EAFNOSUPPORT:  # No IPv6 here: try IPv4.
        raise
  return False


def main(argv: list[str]) -> int:
  program = os.path.basename(argv[0])
  _cli.parse_flags(argv, __doc__)
  if not 0 < FLAGS.port < 65536:
    _cli.usage_error(program, f'--port must be between 1 and 65535, got {FLAGS.port}.')
  if FLAGS.max_concurrent_computation_calls < 0:
    _cli.usage_error(program, '--max_concurrent_computation_calls must be 0 (one per core) or '
                     f'positive, got {FLAGS.max_concurrent_computation_calls}.')
  if FLAGS.log_file and not os.path.isdir(os.path.dirname(os.path.abspath(FLAGS.log_file))):
    _cli.usage_error(program, f'--log_file: directory of {FLAGS.log_file} does not exist.')
  if port_taken(FLAGS.port):
    print(f'{program}: error: port {FLAGS.port} is taken: another program listens there; '
          'stop it or choose another --port.', file=sys.stderr)
    return 1

  _cli.quiet_tensorflow()
  from tff_gan.runtime import workers  # noqa: PLC0415

  cores = workers.available_cores()
  threads = workers.WorkerThreads.for_parallel_clients(
      FLAGS.max_concurrent_computation_calls or cores, cores)
  worker = workers.LocalWorker(log_path=FLAGS.log_file or None, threads=threads,
                                port=FLAGS.port)
  stop = []
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, lambda number, frame: stop.append(number))
  try:
    worker.start()
    print(f'{program}: TFF worker listening on port {FLAGS.port} of every interface of '
          f'{socket.gethostname()} (pid {worker.pid}; {threads.concurrent_calls} computations '
          f'at once, {threads.intra_op_threads} thread(s) each; log: {worker.log_path}). '
          'Ctrl-C stops it.', flush=True)
    while not stop:
      if not worker.running:
        print(f'{program}: error: the TFF worker exited on its own; see {worker.log_path}.',
              file=sys.stderr)
        return 1
      time.sleep(0.2)
  except workers.WorkerError as e:
    print(f'{program}: error: {e}', file=sys.stderr)
    return 1
  finally:
    worker.stop()
  print(f'{program}: stopped.', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
