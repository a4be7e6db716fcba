"""Every evaluation of the DP benchmarks' finished runs, kept beside their record.

The record (`procs.recorded_figures`) keeps a run's figures at its last round; `runs/` is not
committed. So that the README's figures at each evaluated round come from a committed file
too, every finished run's evaluated rows of `metrics.csv` (round, ε spent, each figure) are
appended to the record's curves CSV (`path`), and `print_table` prints them side by side.
"""

from __future__ import annotations

import csv
import io
import os

COLUMNS = ('run', 'round', 'epsilon', 'modes_captured', 'high_quality_fraction', 'reverse_kl',
           'frechet_distance', 'classifier_score', 'source')


def path(record: str) -> str:
  """The curves CSV of the record `record`: `<record>_curves.csv` beside it."""
  base, extension = os.path.splitext(record)
  return f'{base}_curves{extension}'


def append(curves_csv: str, run: str, rows: list[dict[str, str]], columns: tuple[str, ...],
           source: str) -> None:
  """Appends the rows of `rows` (a run's `metrics.csv`) that hold an evaluation (a value in
  the first of `columns`), each with its round, ε spent and `columns`."""
  evaluated = [row for row in rows if row.get(columns[0])]
  text = io.StringIO()
  writer = csv.DictWriter(text, COLUMNS, lineterminator='\n')
  if not os.path.exists(curves_csv) or os.path.getsize(curves_csv) == 0:
    writer.writeheader()
  for row in evaluated:
    writer.writerow({'run': run, 'round': row['round'], 'epsilon': row.get('epsilon', ''),
                     **{c: row.get(c, '') for c in columns}, 'source': source})
  with open(curves_csv, 'a', newline='') as f:
    f.write(text.getvalue())


def read(curves_csv: str, run: str) -> list[dict[str, str]]:
  """The recorded evaluations of `run`, by round; [] if it has none."""
  try:
    with open(curves_csv, newline='') as f:
      rows = [row for row in csv.DictReader(f) if row['run'] == run]
  except FileNotFoundError:
    return []
  return sorted(rows, key=lambda row: int(row['round']))


def print_table(curves_csv: str, runs: dict[str, str], columns: tuple[str, ...]) -> None:
  """A Markdown table of the recorded evaluations of `runs` (a label each: a row of the
  table), one column a round, each cell the values of `columns` (as recorded, 3 significant
  digits) joined by ' / '. Runs with no recorded evaluation are left out; prints nothing if
  none has one."""
  curves = {label: read(curves_csv, run) for label, run in runs.items()}
  curves = {label: rows for label, rows in curves.items() if rows}
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


def _value(text: str) -> str:
  return f'{float(text):.3g}' if text else 'n/a'
