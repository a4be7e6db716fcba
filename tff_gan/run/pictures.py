"""A run's pictures: titled sample PNGs and `training_curves.png` (metrics against rounds)."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from tff_gan import files

_LOSSES = ('d_loss', 'g_loss')
_TITLE_POINTS = 14
_TITLE_MARGIN = 6


def metrics_title(round_num: int, row: dict, names: tuple[str, ...]) -> str:
  """`round N · name=value · ...` for the `names` that `row` holds a number for."""
  parts = [f'round {round_num}']
  for name in names:
    value = row.get(name)
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
      parts.append(f'{name}={value:.3g}')
  return ' · '.join(parts)


def add_title(path: str, title: str) -> None:
  """Puts `title` in a white band above the PNG at `path` (rewritten atomically).

  The band is as wide as the image; a title longer than fits wraps onto more lines.
  """
  with Image.open(path) as opened:
    image = opened.convert('RGB')
  font = ImageFont.load_default(size=_TITLE_POINTS)
  measure = ImageDraw.Draw(image)
  lines, line = [], ''
  for word in title.split(' '):
    candidate = f'{line} {word}'.strip()
    if line and measure.textlength(candidate, font=font) > image.width - 2 * _TITLE_MARGIN:
      lines.append(line)
      line = word
    else:
      line = candidate
  lines.append(line)
  line_height = _TITLE_POINTS + 4
  band = len(lines) * line_height + 2 * _TITLE_MARGIN
  titled = Image.new('RGB', (image.width, image.height + band), 'white')
  titled.paste(image, (0, band))
  draw = ImageDraw.Draw(titled)
  for index, text in enumerate(lines):
    draw.text((_TITLE_MARGIN, _TITLE_MARGIN + index * line_height), text, fill='black',
              font=font)
  files.write_outputs({path: lambda temporary: titled.save(temporary, format='PNG')})


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
