"""Serve TFF's executor on this machine, for `bin/train.py --executor=remote` elsewhere.

Runs the `worker_binary` that ships in the tensorflow-federated wheel (TFF's C++ executor
service), with one client per core by default, until Ctrl-C or SIGTERM (exit status 130 or
143, after stopping it). That binary speaks plaintext gRPC on every interface and
authenticates no one, so it always runs confined here: in a network namespace of its own
(`unshare`), which no other host can reach, spoken to through a Unix socket only this user
can open. In front of it, on --port:

  TLS (--tls_cert, --tls_key): on every interface, with TLS; with --tls_client_ca, only
      clients holding a certificate that CA signed; with --auth_token_file, only calls
      carrying that token. What the trainer and the worker exchange is encrypted.
  --insecure: plaintext, on the loopback interface only (this machine's processes, or an SSH
      tunnel). Refused on any other address.

bin/make_certs.py makes a CA, a worker and a trainer certificate and a token, to try it.

Examples:
  python bin/worker.py --port=8000 --tls_cert=certs/worker.pem --tls_key=certs/worker.key \\
      --tls_client_ca=certs/ca.pem --auth_token_file=certs/token
  python bin/worker.py --port=8000 --insecure        # this machine only
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import sys
import tempfile
import time

import _cli
from absl import flags

flags.DEFINE_integer('port', 8000, 'TCP port to listen on: every interface with TLS, loopback '
                     'with --insecure.')
flags.DEFINE_string('tls_cert', '', 'PEM certificate chain the worker presents (TLS).')
flags.DEFINE_string('tls_key', '', 'PEM private key of --tls_cert.')
flags.DEFINE_string('tls_client_ca', '', 'PEM CA certificates: with it, only trainers holding '
                    'a certificate this CA signed may connect.')
flags.DEFINE_string('auth_token_file', '', 'File holding a token every call must carry (the '
                    "trainer's --auth_token_file); needs TLS.")
flags.DEFINE_bool('insecure', False, 'Serve plaintext, on the loopback interface only (for '
                  'this machine, or an SSH tunnel); without TLS this is required.')
flags.DEFINE_integer('max_concurrent_computation_calls', 0, 'Computations (e.g. clients) the '
                     'worker runs at once; 0 means one per core. Each gets an equal share of '
                     'the cores for its TensorFlow ops.')
flags.DEFINE_string('log_file', '', "File for the worker's own output (TensorFlow and gRPC "
                    'messages); default: a new file in the temp dir, named at start and deleted '
                    'when the worker stops, unless it died on its own and wrote something '
                    'there.')
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


def server_tls(program: str):
  """The worker's `tls.ServerTls` from its flags, or None for --insecure (usage errors exit)."""
  from tff_gan.runtime import tls  # noqa: PLC0415 (no TensorFlow)

  secure = [name for name in ('tls_cert', 'tls_key', 'tls_client_ca', 'auth_token_file')
            if FLAGS[name].value]
  if FLAGS.insecure:
    if secure:
      _cli.usage_error(program, f'--insecure serves plaintext; drop --{secure[0]}, or drop '
                       '--insecure to serve TLS.')
    return None
  if not (FLAGS.tls_cert and FLAGS.tls_key):
    _cli.usage_error(program, 'give --tls_cert and --tls_key (bin/make_certs.py makes a pair to '
                     'try), or --insecure for a plaintext worker reached from this machine '
                     'only.')
  try:
    return tls.ServerTls.from_files(FLAGS.tls_cert, FLAGS.tls_key, FLAGS.tls_client_ca,
                                    FLAGS.auth_token_file)
  except (OSError, ValueError) as e:
    _cli.usage_error(program, f'cannot read the TLS files: {e}')


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
  credentials = server_tls(program)
  if port_taken(FLAGS.port):
    print(f'{program}: error: port {FLAGS.port} is taken: another program listens there; '
          'stop it or choose another --port.', file=sys.stderr)
    return 1

  _cli.quiet_tensorflow()
  from tff_gan.runtime import tls, workers  # noqa: PLC0415

  cores = workers.available_cores()
  threads = workers.WorkerThreads.for_parallel_clients(
      FLAGS.max_concurrent_computation_calls or cores, cores)
  stop = []
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, lambda number, frame: stop.append(number))
  private_dir = tempfile.mkdtemp(prefix='tff_gan_worker_')  # 0700: this user's only.
  worker = workers.LocalWorker(log_path=FLAGS.log_file or None, threads=threads,
                               confined_socket=os.path.join(private_dir, 'executor.sock'))
  address = f'[::]:{FLAGS.port}' if credentials else f'127.0.0.1:{FLAGS.port}'
  front = None
  try:
    worker.start()
    front = tls.serve(f'unix:{worker.confined_socket}', address, credentials)
    if credentials:
      checks = ', '.join(['TLS'] + (['client certificates'] if credentials.client_ca else [])
                         + (['token'] if credentials.token else []))
      where = f'port {FLAGS.port} of every interface of {socket.gethostname()} ({checks})'
    else:
      where = (f'127.0.0.1:{FLAGS.port}, plaintext: this machine only (--insecure; use TLS '
               'for other hosts)')
    print(f'{program}: TFF worker on {where}; the worker itself has no network (pid '
          f'{worker.pid}; {threads.concurrent_calls} computations at once, '
          f'{threads.intra_op_threads} thread(s) each; log: {worker.log_path}). Ctrl-C stops '
          'it.', flush=True)
    while not stop:
      if not worker.running:
        print(f'{program}: error: the TFF worker exited on its own; {worker.see_log()}.',
              file=sys.stderr)
        return 1
      time.sleep(0.2)
  except (workers.WorkerError, RuntimeError) as e:
    print(f'{program}: error: {e}', file=sys.stderr)
    return 1
  finally:
    if front is not None:
      front.stop(grace=1.0).wait()
    worker.stop()
    shutil.rmtree(private_dir, ignore_errors=True)
  signum = stop[0]
  print(f'{program}: stopped by {signal.Signals(signum).name}.', flush=True)
  return 128 + signum


if __name__ == '__main__':
  sys.exit(main(sys.argv))
