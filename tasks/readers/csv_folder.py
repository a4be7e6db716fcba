"""Reading a federated table laid out as one CSV file per client.

    root/
      hospital_a.csv    age,weight,systolic      <- a header row of column names
                        54,81.5,130              <- numbers only, one row per record
      hospital_b.csv    age,weight,systolic      <- the same header in every file
                        ...

Every `*.csv` file in `root` is one client, named by the file's stem (hidden files are
ignored). Every problem with the files is a `TabularError` whose one-line message names the
file (and the line and column) and the fix.
"""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np

_MIN_COLUMNS = 2  # Correlations need a pair; a lone column is often a wrong delimiter.
_MIN_ROWS = 2  # In all files together: a std needs two rows.


# Values up to this size keep a column's sum of squares finite in float64 for up to 1e8 rows
# ((1e150)² · 1e8 = 1e308); beyond it the mean and std would become inf and training NaN.
MAX_ABS_VALUE = 1e150


class TabularError(ValueError):
  """The folder cannot be read as a federated table; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class CsvClients:
  """A federated table read from disk.

  Attributes:
    column_names: The header shared by every file.
    client_ids: The files' stems, sorted; client `k` is `client_ids[k]`.
    client_rows: For each client, its rows as float64 `[n_k, len(column_names)]`, n_k >= 1.
  """

  column_names: tuple[str, ...]
  client_ids: tuple[str, ...]
  client_rows: tuple[np.ndarray, ...]


def _is_number(text: str) -> bool:
  try:
    float(text)
  except ValueError:
    return False
  return True


def _check_header(path: str, header: list[str] | None) -> tuple[str, ...]:
  if header is None:
    raise TabularError(f'{path} is empty; write a header row of column names, then one row of '
                       'numbers per record.')
  names = tuple(name.strip() for name in header)
  if all(_is_number(name) for name in names):
    raise TabularError(f'{path}, line 1 holds numbers, not column names; add a header row of '
                       'column names above the data.')
  if len(names) < _MIN_COLUMNS:
    raise TabularError(f'{path} has 1 column ({names[0]!r}); the tabular task needs at least '
                       f'{_MIN_COLUMNS} numeric columns, separated by commas.')
  for position, name in enumerate(names):
    if not name:
      raise TabularError(f'{path}, line 1: column {position + 1} has no name; name every '
                         'column in the header row.')
    if names.index(name) != position:
      raise TabularError(f'{path}, line 1: column {name!r} appears twice; give every column '
                         'a name of its own.')
  return names


def _cell_error(path: str, line: int, names: tuple[str, ...], row: list[str]) -> TabularError:
  """The error for the first cell of `row` that is not a number."""
  for name, cell in zip(names, row, strict=True):
    text = cell.strip()
    where = f'{path}, line {line}, column {name!r}'
    if not text:
      return TabularError(f'{where}: empty cell; fill in the missing value or drop the row.')
    if not _is_number(text):
      return TabularError(f'{where}: {text!r} is not a number; the tabular task reads numbers '
                          'only: encode categories as numbers, or drop the column from every file.')
  raise AssertionError('_cell_error called on a row of numbers')


def _read_csv(path: str) -> tuple[tuple[str, ...], np.ndarray]:
  """The header and the float64 rows of one client's file."""
  rows, lines = [], []
  try:
    with open(path, newline='', encoding='utf-8-sig') as f:  # -sig: drops Excel's BOM.
      reader = csv.reader(f, strict=True)  # Bad quoting is an error, not a silent guess.
      try:
        names = _check_header(path, next(reader, None))
        for row in reader:
          if not row:  # A blank line.
            continue
          if len(row) != len(names):
            raise TabularError(f'{path}, line {reader.line_num}: {len(row)} fields, but the header '
                               f'has {len(names)} columns; write one value per column.')
          try:
            rows.append([float(cell) for cell in row])
          except ValueError:
            raise _cell_error(path, reader.line_num, names, row) from None
          lines.append(reader.line_num)
      except csv.Error as e:
        raise TabularError(f'{path}, line {reader.line_num}: {e}; fix the CSV quoting.') from None
  except UnicodeDecodeError:
    raise TabularError(f'{path} is not UTF-8 text; save it as UTF-8 CSV.') from None
  except OSError as e:
    raise TabularError(f'{path} cannot be read ({e.strerror}); check its '
                       'permissions.') from None
  if not rows:
    raise TabularError(f'{path} has a header but no data rows; add rows or remove the file.')
  values = np.array(rows, np.float64)
  not_finite = np.argwhere(~np.isfinite(values))
  if len(not_finite):
    row, column = not_finite[0]
    raise TabularError(f'{path}, line {lines[row]}, column {names[column]!r}: '
                       f'{values[row, column]} is not a finite number; replace NaN and infinite '
                       'values, or drop the row.')
  too_large = np.argwhere(np.abs(values) > MAX_ABS_VALUE)
  if len(too_large):
    row, column = too_large[0]
    raise TabularError(f'{path}, line {lines[row]}, column {names[column]!r}: '
                       f'{values[row, column]:g} is beyond ±{MAX_ABS_VALUE:g}, where the column\'s '
                       'sums of squares overflow; rescale the column (e.g. to other units).')
  return names, values


def _header_difference(names: tuple[str, ...], reference: tuple[str, ...]) -> str:
  missing = [name for name in reference if name not in names]
  extra = [name for name in names if name not in reference]
  parts = []
  if missing:
    parts.append(f"missing {', '.join(map(repr, missing))}")
  if extra:
    parts.append(f"extra {', '.join(map(repr, extra))}")
  return '; '.join(parts) or 'the same columns in another order'


def load_csv_clients(root: str) -> CsvClients:
  """Reads `root/<client_id>.csv` (see the module docstring).

  Args:
    root: The folder of CSV files, one per client. Sub-folders, other files and hidden files
      (starting with '.') are ignored.

  Raises:
    TabularError: If `root` is not a folder or holds no CSV file; a file cannot be read, is
      empty, has no data rows, fewer than 2 columns, unnamed or repeated column names, or
      another header than the first file; a row has the wrong number of fields; or a cell is
      empty, not a number, NaN or infinite. Also if all files hold fewer than 2 rows in all.
  """
  root = os.path.expanduser(root)
  if not os.path.isdir(root):
    raise TabularError(f'{root} is not a folder; pass the folder that holds one CSV file per '
                       'client (<client_id>.csv).')
  files = sorted(name for name in os.listdir(root)
                 if name.lower().endswith('.csv') and not name.startswith('.')
                 and os.path.isfile(os.path.join(root, name)))
  if not files:
    raise TabularError(f"{root} holds no .csv files; put each client's rows in a file of its "
                       f'own ({root}/<client_id>.csv).')
  client_ids = [name[:-len('.csv')] for name in files]
  if len(set(client_ids)) < len(client_ids):
    repeated = next(stem for stem in client_ids if client_ids.count(stem) > 1)
    raise TabularError(f'{root} holds several files named {repeated}.csv (in other letter '
                       'cases); rename one, since the file name is the client id.')
  reference_path, reference = None, None
  client_rows = []
  for name in files:
    path = os.path.join(root, name)
    names, values = _read_csv(path)
    if reference is None:
      reference_path, reference = path, names
    elif names != reference:
      raise TabularError(f'{path} has other columns than {reference_path} '
                         f'({_header_difference(names, reference)}); give every file the same '
                         'header row.')
    client_rows.append(values)
  num_rows = sum(len(rows) for rows in client_rows)
  if num_rows < _MIN_ROWS:
    raise TabularError(f'{root} holds only {num_rows} data row in all its files; the tabular '
                       f'task needs at least {_MIN_ROWS} (and a GAN many more): add rows.')
  return CsvClients(column_names=reference, client_ids=tuple(client_ids),
                    client_rows=tuple(client_rows))
