"""Every evaluation of the DP benchmarks' finished runs, read back from beside their record.

The record (`procs.recorded_figures`) keeps a run's figures at its last round; `runs/` is not
committed. So that the README's figures at each evaluated round come from a committed file
too, `recorded_figures` also appends every finished run's evaluated rows of `metrics.csv`
(round, ε spent, each figure) to the record's curves CSV (`procs.curves_path`), and
`print_table` prints them side by side.
"""

from __future__ import annotations

import procs


def print_table(curves_csv: str, runs: dict[str, str], columns: tuple[str, ...]) -> None:
  """A Markdown table of the recorded evaluations of `runs` (a label each: a row of the
  table), one column a round, each cell the values of `columns` (as recorded, 3 significant
  digits) joined by ' / '. Runs with no recorded evaluation are left out; prints nothing if
  none has one."""
  recorded = _by_run(procs.read_rows(curves_csv))
  curves = {label: recorded[run] for label, run in runs.items() if run in recorded}
  if not curves:
    return
  rounds = sorted({int(row['round']) for rows in curves.values() for row in rows})
  print(f'{" / ".join(columns)} at each evaluated round ({curves_csv}):')
  print('| run | ' + ' | '.join(str(r) for r in rounds) + ' |')
  print('|---|' + '---:|' * len(rounds))
  for label, rows in curves.items():
    by_round = {int(row['round']): row for row in rows}
    cells = [' / '.join(_value(by_round[r].get(c, '')) for c in columns) if r in by_round
             else '' for r in rounds]
    print(f'| {label} | ' + ' | '.join(cells) + ' |')


def _by_run(rows: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
  """`rows` of the curves CSV grouped by run, each run's by round."""
  runs: dict[str, list[dict[str, str]]] = {}
  for row in sorted(rows, key=lambda row: int(row['round'])):
    runs.setdefault(row['run'], []).append(row)
  return runs


def _value(text: str) -> str:
  return f'{float(text):.3g}' if text else 'n/a'
