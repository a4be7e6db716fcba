"""Round time on a local worker, on one remote worker and on two remote workers (loopback).

The same FedGAN process (the `bin/train.py` defaults: `ring`, 10 clients × 16 steps of batch
128) runs its rounds three ways, in alternating blocks so machine noise hits all alike:

* local: `contexts.local_cpp_context`, the worker `bin/train.py` starts by default;
* one remote worker: a worker as `bin/worker.py` runs it, reached over gRPC at
  `localhost:PORT` through `contexts.remote_context` (`--executor=remote`);
* two remote workers: two such workers, each given half the cores, sharing each round's
  clients through TFF's mergeable-computation context;
* one TLS worker: `bin/worker.py --tls_cert ... --tls_client_ca ... --auth_token_file ...`
  itself, as a deployment runs it: its worker confined in its own network namespace, behind
  the TLS front in the `bin/worker.py` process (client certificate and token checked on
  every call), with certificates `make_certs` makes; its time is also printed as a ratio to
  the plaintext remote worker's.

On one machine the remote cases cannot be faster (the cores are shared); the benchmark shows
what the remote path costs: its gRPC hops and, with two workers, the split and the merge.

Usage: python bench/remote.py [--blocks=3] [--rounds_per_block=3]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'bin'))
import _cli  # noqa: E402  (sets TF_CPP_MIN_LOG_LEVEL and the import path)
import make_certs  # noqa: E402
from absl import flags  # noqa: E402

flags.DEFINE_integer('blocks', 3, 'Blocks of rounds per setup, alternating between setups.')
flags.DEFINE_integer('rounds_per_block', 3, 'Timed rounds per block (after one warm-up).')
FLAGS = flags.FLAGS


def main(argv):
  _cli.parse_flags(argv, __doc__)
  _cli.quiet_tensorflow()
  import numpy as np  # noqa: PLC0415
  import portpicker  # noqa: PLC0415

  import tasks  # noqa: PLC0415
  from tff_gan.clients import populations as data
  from tff_gan.run import config as config_lib  # noqa: PLC0415
  from tff_gan.run import schemes  # noqa: PLC0415
  from tff_gan.runtime import contexts, tls  # noqa: PLC0415
  from tff_gan.runtime import workers as worker_lib

  config = config_lib.TrainConfig().validate()
  task = tasks.get_task(config.task, seed=config.seed)
  clients = schemes.build_population(config, task)
  work = data.LocalWork(batch_size=config.batch_size, local_epochs=config.local_epochs)
  process = schemes.build_process(config, task.gan_models()).with_client_data(
      clients, work)
  cores = worker_lib.available_cores()
  one = worker_lib.LocalWorker(threads=worker_lib.WorkerThreads.for_parallel_clients(cores)).start()
  halves = [worker_lib.LocalWorker(threads=worker_lib.WorkerThreads.for_parallel_clients(
      max(1, cores // 2), max(1, cores // 2))).start() for _ in range(2)]
  private = tempfile.mkdtemp(prefix='bench_tls_')
  make_certs.make(private, ['localhost', '127.0.0.1'])

  def path(name):
    return os.path.join(private, name)

  tls_port = portpicker.pick_unused_port()
  tls_worker = subprocess.Popen(
      [sys.executable, os.path.join(os.path.dirname(_cli.__file__), 'worker.py'),
       f'--port={tls_port}', f'--tls_cert={path("worker.pem")}', f'--tls_key={path("worker.key")}',
       f'--tls_client_ca={path("ca.pem")}', f'--auth_token_file={path("token")}'],
      stdout=subprocess.PIPE, text=True)
  if 'TFF worker on' not in tls_worker.stdout.readline():
    raise RuntimeError('bin/worker.py did not start; run it by hand to see why.')
  client = tls.ClientTls.from_files(path('ca.pem'), path('trainer.pem'), path('trainer.key'),
                                    path('token'))
  setups = {
      'local worker': lambda: contexts.local_cpp_context(
          parallel_clients=config.clients_per_round),
      'one remote worker': lambda: contexts.remote_context([f'localhost:{one.port}']),
      'two remote workers': lambda: contexts.remote_context(
          [f'localhost:{worker.port}' for worker in halves]),
      'one TLS worker': lambda: contexts.remote_context([f'localhost:{tls_port}'], tls=client),
  }
  times = {name: [] for name in setups}
  client_ids = np.arange(config.clients_per_round)
  try:
    with contexts.local_cpp_context():
      state = process.initialize()
    round_num = 0
    for _ in range(FLAGS.blocks):
      for name, setup in setups.items():
        with setup():
          for index in range(FLAGS.rounds_per_block + 1):
            round_num += 1
            keys = data.round_keys(client_ids, round_num=round_num, seed=config.seed)
            start = time.perf_counter()
            state, _ = process.next(state, keys)
            if index:  # The first round of a block warms the context up (compiling).
              times[name].append(time.perf_counter() - start)
  finally:
    tls_worker.terminate()
    tls_worker.wait()
    for worker in [one, *halves]:
      worker.stop()
    shutil.rmtree(private, ignore_errors=True)

  base = statistics.median(times['local worker'])
  print(f'ring, {config.clients_per_round} clients x {work.local_epochs} epoch of batch '
        f'{config.batch_size}, {cores} cores, median of {len(times["local worker"])} rounds:')
  for name, seconds in times.items():
    median = statistics.median(seconds)
    print(f'  {name:20s} {median * 1000:7.0f} ms   x{median / base:.2f} of local')
  ratio = statistics.median(times['one TLS worker']) / statistics.median(
      times['one remote worker'])
  print(f'  TLS worker / plaintext remote worker: x{ratio:.2f} (goal: at most x1.10)')
  return 0


if __name__ == '__main__':
  sys.exit(_cli.run(main))
