"""Runs `bin/train.py` for every scheme x server optimizer x aggregator on `ring`, briefly.

The federated schemes run with every server optimizer and aggregator; `centralized`, which
has neither, runs once.

Each combination trains 2 tiny rounds in its own process, exactly as a user would start it;
the script prints one line per combination and a summary, and exits non-zero if any failed.
A combination the program refuses as a usage error (exit status 2 with one line on stderr,
e.g. an aggregator a scheme does not build) is counted as refused, not failed;
a refusal of more than one line is a failure. It checks that every combination runs or is
refused cleanly, not how well it trains (see bench/aggregators.py).

Usage: python bench/combinations.py [--output_root=/tmp/combinations] [--parallel=2]
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from concurrent import futures

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
from tff_gan import choices  # noqa: E402 (no TensorFlow import)

TINY = ['--rounds=2', '--eval_every=2', '--model_width=0.125', '--num_clients=4',
        '--clients_per_round=3', '--local_steps=2', '--batch_size=16', '--num_eval_samples=200',
        '--noprogress']


def run(scheme: str, server_optimizer: str, aggregator: str, output_root: str):
  name = f'{scheme}-{server_optimizer}-{aggregator}'
  start = time.perf_counter()
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'bin', 'train.py'), *TINY,
       f'--scheme={scheme}', f'--server_optimizer={server_optimizer}',
       f'--aggregator={aggregator}', f'--output_dir={os.path.join(output_root, name)}'],
      capture_output=True, text=True, check=False, timeout=600)
  lines = result.stderr.strip().splitlines()
  if result.returncode == 0:
    outcome, detail = 'ok', ''
  elif result.returncode == 2 and len(lines) == 1:
    outcome, detail = 'refused', f': {lines[0]}'
  else:
    outcome, detail = 'FAILED', f' ({result.returncode}): {(lines or [""])[-1]}'
  return name, outcome, detail, time.perf_counter() - start


def main(argv):
  output_root, parallel = '/tmp/combinations', 2
  for arg in argv[1:]:
    if arg.startswith('--output_root='):
      output_root = arg.split('=', 1)[1]
    elif arg.startswith('--parallel='):
      parallel = int(arg.split('=', 1)[1])
    else:
      print(__doc__)
      return 0 if arg in ('-h', '--help') else 2
  # `centralized` has no server optimizer or aggregator of its own: it runs once, as is.
  federated = [scheme for scheme in choices.SCHEMES if scheme != 'centralized']
  combinations = list(itertools.product(federated, choices.SERVER_OPTIMIZERS,
                                        choices.AGGREGATORS))
  combinations.append(('centralized', 'sgd', 'mean'))
  outcomes = []
  with futures.ThreadPoolExecutor(parallel) as pool:
    jobs = [pool.submit(run, *combination, output_root) for combination in combinations]
    for job in futures.as_completed(jobs):
      name, outcome, detail, seconds = job.result()
      outcomes.append(outcome)
      print(f'{name}: {outcome}{detail} [{seconds:.0f} s]', flush=True)
  failures = outcomes.count('FAILED')
  print(f'{outcomes.count("ok")} of {len(combinations)} combinations ran, '
        f'{outcomes.count("refused")} were refused in one line, {failures} failed '
        f'(schemes: {", ".join(federated)}, plus centralized; server optimizers: '
        f'{", ".join(choices.SERVER_OPTIMIZERS)}; aggregators: '
        f'{", ".join(choices.AGGREGATORS)}).')
  return 1 if failures else 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
