"""Simulated time to 8/8 modes on `ring` with stragglers: synchronous FedAvg against FedBuff.

100 clients of 200 examples (8 local epochs in batches of 128); 20% of them are stragglers
whose work takes 10x longer; a client's work takes exp(N(0, 0.5²)) simulated seconds
otherwise. Both runs use the same seed, data split, networks and client work:

* sync: rounds of `--clients_per_round` (10) sampled clients; a round lasts as long as its
  slowest client, so most rounds wait for a straggler;
* FedBuff: 20 clients at work at all times, the model updated from every 10 reports
  (staleness exponent 0.5).

Each run is stopped at its first evaluation with all 8 modes captured; the table gives the
simulated seconds and the server steps it took, and the ratio sync / FedBuff.

Usage: python bench/async_vs_sync.py [--eval_every=10] [--max_rounds=400] [--seed=0]
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'bin'))
import _cli  # noqa: E402  (sets TF_CPP_MIN_LOG_LEVEL and the import path)
import procs  # noqa: E402
from absl import flags  # noqa: E402

flags.DEFINE_integer('eval_every', 10, 'Evaluate every this many server steps.')
flags.DEFINE_integer('max_rounds', 400, 'Give up after this many server steps.')
flags.DEFINE_integer('seed', 0, 'Seed of both runs.')
FLAGS = flags.FLAGS

COMMON = ['--task=ring', '--num_clients=100', '--clients_per_round=10', '--local_epochs=8',
          '--client_latency=lognormal:0,0.5', '--straggler_fraction=0.2',
          '--straggler_slowdown=10']
RUNS = {
    'sync (FedAvg)': [],
    'FedBuff (K=10, 20 at work)': ['--mode=async', '--async_rule=fedbuff', '--buffer_size=10',
                                   '--max_concurrent_clients=20', '--staleness_exponent=0.5'],
}


def all_modes(row) -> bool:
  return row.get('modes_captured') not in (None, '') and float(row['modes_captured']) == 8


def main(argv):
  _cli.parse_flags(argv, __doc__)
  results = {}
  for name, extra in RUNS.items():
    with tempfile.TemporaryDirectory() as output_dir:
      run = procs.TrainRun(output_dir, [*COMMON, *extra, f'--seed={FLAGS.seed}',
                                        f'--eval_every={FLAGS.eval_every}',
                                        f'--rounds={FLAGS.max_rounds}'])
      run.wait(until=lambda r: any(all_modes(row) for row in r.rows))
    done = next((row for row in run.rows if all_modes(row)), None)
    last = run.rows[-1] if run.rows else {}
    results[name] = (done, last)
    print(f'{name}: ' + (f"8/8 modes at step {done['round']}, simulated "
                         f"{float(done['simulated_time']):.1f} s" if done else
                         f"no 8/8 within {last.get('round')} steps"), flush=True)
  print()
  print('| run | server steps to 8/8 | simulated seconds to 8/8 | mean staleness |')
  print('|---|---:|---:|---:|')
  for name, (done, last) in results.items():
    staleness = done.get('mean_staleness', '') if done else ''
    steps = done['round'] if done else f"> {last.get('round')}"
    seconds = f"{float(done['simulated_time']):.1f}" if done else '—'
    print(f'| {name} | {steps} | {seconds} | {staleness or "—"} |')
  (sync, _), (fedbuff, _) = results.values()
  if sync and fedbuff:
    ratio = float(sync['simulated_time']) / float(fedbuff['simulated_time'])
    print(f'\nsync / FedBuff simulated time to 8/8 modes: {ratio:.2f}x')


if __name__ == '__main__':
  sys.exit(_cli.run(main))
