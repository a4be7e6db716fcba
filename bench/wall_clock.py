"""Wall time a user waits: start-up, and time until `ring` first shows all 8 modes.

Runs `bin/train.py` with the README's defaults (the `make demo` run) plus any extra flags,
and watches its `metrics.csv`:

* start-up: from the command's start until the first round's row is written (importing
  TensorFlow and TFF, building the computations, starting the worker, the first round);
* time to quality: from the command's start until the first evaluation with 8 of 8 modes
  captured, and until the first with 8 of 8 and at least `--high_quality` of the samples
  within 3σ of a mode; the run is then stopped.

Usage: python bench/wall_clock.py [--eval_every=10] [--max_rounds=300] [--train_flags=...]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'bin'))
import _cli  # noqa: E402  (sets TF_CPP_MIN_LOG_LEVEL and the import path)
import procs  # noqa: E402
from absl import flags  # noqa: E402

flags.DEFINE_integer('eval_every', 10, 'Evaluate every this many rounds (README default 10).')
flags.DEFINE_integer('max_rounds', 300, 'Give up after this many rounds (README default 300).')
flags.DEFINE_float('high_quality', 0.8, 'High-quality fraction the second time waits for.')
flags.DEFINE_list('train_flags', [], 'Extra bin/train.py flags, e.g. --train_flags=--seed=1.')
FLAGS = flags.FLAGS


def all_modes(row, high_quality: float = 0.0) -> bool:
  return (row.get('modes_captured') not in (None, '') and float(row['modes_captured']) == 8
          and float(row['high_quality_fraction']) >= high_quality)


def good_enough(run: procs.TrainRun) -> bool:
  return any(all_modes(row, FLAGS.high_quality) for row in run.rows)


def main(argv):
  _cli.parse_flags(argv, __doc__)
  with tempfile.TemporaryDirectory() as output_dir:
    run = procs.TrainRun(output_dir, [f'--eval_every={FLAGS.eval_every}',
                                      f'--rounds={FLAGS.max_rounds}', *FLAGS.train_flags])
    run.wait(until=good_enough)
  if not run.rows:
    print('no round finished')
    return 1
  lines = [f'start-up (command start to end of round 1): {run.row_times[0]:6.1f} s']
  if len(run.rows) > 1:
    seconds = statistics.median(float(row['round_seconds']) for row in run.rows[1:])
    lines.append(f'later rounds: median {seconds * 1000:.0f} ms')
  for label, high_quality in (('8/8 modes', 0.0),
                              (f'8/8 modes, >= {FLAGS.high_quality:.0%} high quality',
                               FLAGS.high_quality)):
    hits = [i for i, row in enumerate(run.rows) if all_modes(row, high_quality)]
    if hits:
      row = run.rows[hits[0]]
      lines.append(f'{label}: first at round {row["round"]}, {run.row_times[hits[0]]:6.1f} s '
                   f'from the command start ({float(row["high_quality_fraction"]):.0%} high '
                   'quality)')
    else:
      lines.append(f'{label}: not reached in {len(run.rows)} rounds ({run.row_times[-1]:.1f} s)')
  print('\n'.join(lines))
  return 0


if __name__ == '__main__':
  sys.exit(_cli.run(main))
