"""`training_curves.png`: the losses, quality metrics and ε of a run against rounds."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from tff_gan import files

_LOSSES = ('d_loss', 'g_loss')


def _series(rows: list[dict[str, str]], column: str) -> tuple[np.ndarray, np.ndarray]:
  """The rounds where `column` has a finite value, and those values."""
  points = []
  for row in rows:
    try:
      value = float(row.get(column) or 'nan')
    except ValueError:
      continue
    if math.isfinite(value):
      points.append((int(row['round']), value))
  if not points:
    return np.zeros(0), np.zeros(0)
  rounds, values = zip(*points, strict=True)
  return np.array(rounds), np.array(values)


def write_training_curves(rows: list[dict[str, str]], metric_names: tuple[str, ...],
                          path: str, title: str = '') -> bool:
  """Draws one panel for the losses, one per quality metric and one for ε, as a PNG.

  Args:
    rows: `metrics.csv` rows (as `csv.DictReader` gives them).
    metric_names: The evaluation columns to draw, one panel each (those with values).
    path: Where to write the PNG (atomically).
    title: The figure's title.

  Returns:
    Whether a figure was written (False when no column has a value to draw).
  """
  panels = [('losses', [c for c in _LOSSES if len(_series(rows, c)[0])])]
  panels += [(name, [name]) for name in metric_names if len(_series(rows, name)[0])]
  if len(_series(rows, 'epsilon')[0]):
    panels.append(('ε (privacy spent)', ['epsilon']))
  panels = [(name, columns) for name, columns in panels if columns]
  if not panels:
    return False
  columns_per_row = min(3, len(panels))
  grid_rows = math.ceil(len(panels) / columns_per_row)
  figure = Figure(figsize=(4.2 * columns_per_row, 3.2 * grid_rows), layout='constrained')
  for index, (name, columns) in enumerate(panels):
    axis = figure.add_subplot(grid_rows, columns_per_row, index + 1)
    for column in columns:
      rounds, values = _series(rows, column)
      axis.plot(rounds, values, marker='.' if len(rounds) < 40 else None, label=column)
    axis.set(title=name, xlabel='round')
    if len(columns) > 1:
      axis.legend()
    axis.grid(alpha=0.3)
  if title:
    figure.suptitle(title)
  files.write_outputs({path: lambda temporary: figure.savefig(temporary, format='png')})
  return True
