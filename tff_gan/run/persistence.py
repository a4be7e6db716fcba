"""The run's persistence over `tff.program`: checkpoints of the full state, released metrics.

* `Checkpoints` wraps a `tff.program.FileProgramStateManager` under `<output_dir>/checkpoints`:
  one version per saved round (`round_<N>`), written by TFF to a temporary directory and
  renamed into place, so a crash mid-write leaves the previous versions intact. The saved
  state is the whole `ServerState`: weights, every optimizer state, the aggregator's state
  (DP and clipping estimates included), the round number and the seed. Client sampling,
  dropouts, shuffling and evaluation noise are all derived from (seed, round), so nothing else
  is needed to continue the run exactly.
* `MetricsRelease` publishes each round's row to `metrics.csv`
  (`tff.program.CSVFileReleaseManager`, keyed by `round`: releasing round r first drops any
  rows ≥ r left by an interrupted run), to TensorBoard event files under `<output_dir>/tb`
  (`tff.program.TensorBoardReleaseManager`) and to the log
  (`tff.program.LoggingReleaseManager`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_federated as tff

from tff_gan.run.rundir import (
  CHECKPOINT_DIR,
  CHECKPOINT_PREFIX,
  METRICS_FILE,
  TENSORBOARD_DIR,
  first_line,
)


def _run(coroutine):
  """Runs `coroutine` to completion and returns its result, even inside a running event loop.

  Notebook kernels (Jupyter, Colab) execute cells inside a running asyncio loop, where
  `asyncio.run` refuses to start; there the coroutine runs on a fresh loop in a helper thread.
  """
  try:
    asyncio.get_running_loop()
  except RuntimeError:
    return asyncio.run(coroutine)
  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
    return pool.submit(asyncio.run, coroutine).result()


class CheckpointError(Exception):
  """A checkpoint cannot be read; the message names it and what to do."""


class StorageError(Exception):
  """The run directory cannot be written (disk full, permissions); the message is one line."""


class Checkpoints:
  """Saves and loads the server state by round number."""

  def __init__(self, output_dir: str, *, keep: int = 3, read_only: bool = False):
    """Opens (creating if needed) `<output_dir>/checkpoints`.

    Args:
      output_dir: The run's output directory.
      keep: How many of the latest checkpoints to keep.
      read_only: For readers (e.g. `bin/generate.py`) that may run while training writes:
        leave temporary directories alone, since one may be a save in progress.
    """
    self.root = os.path.join(output_dir, CHECKPOINT_DIR)
    if not read_only:
      os.makedirs(self.root, exist_ok=True)
      self._remove_interrupted_writes()
    self._manager = tff.program.FileProgramStateManager(
        self.root, prefix=CHECKPOINT_PREFIX, keep_total=keep, keep_first=False)

  def rounds(self) -> list[int]:
    """The rounds saved, oldest first."""
    return _run(self._manager.get_versions()) or []

  def latest_round(self) -> int | None:
    rounds = self.rounds()
    return rounds[-1] if rounds else None

  def path(self, round_num: int) -> str:
    return os.path.join(self.root, f'{CHECKPOINT_PREFIX}{round_num}')

  def save(self, state, round_num: int) -> None:
    """Saves `state` as round `round_num`, or leaves the saved rounds as they were.

    Raises:
      StorageError: If the save fails (a full disk, permissions); its partial files are
        removed first.
    """
    try:
      _run(self._manager.save(state, round_num))
    except Exception as e:  # noqa: BLE001  (TF raises its own kinds for a failed write)
      self._remove_interrupted_writes()
      kept = self.latest_round()
      raise StorageError(
          f'cannot save the checkpoint of round {round_num} in {self.root} '
          f'({first_line(e)[:200]}); '
          + (f'the checkpoint of round {kept} is kept: ' if kept else '')
          + 'free space or fix permissions, then rerun the same command to resume.') from e

  def load(self, round_num: int, template):
    """The state saved at `round_num`, in the structure of `template` (e.g. the initial state).

    Raises:
      CheckpointError: If the checkpoint is missing, truncated, corrupt or of another
        structure.
    """
    path = self.path(round_num)
    try:
      state = _run(self._manager.load(round_num, template))
      _check_like(state, template)
    except Exception as e:  # noqa: BLE001  (TF raises many kinds for a damaged SavedModel)
      raise CheckpointError(
          f'checkpoint {path} cannot be read ({first_line(e)[:200]}); delete that directory to '
          'resume from the one before, or rerun with --overwrite to start over.') from e
    return state

  def _remove_interrupted_writes(self) -> None:
    """Deletes temporary directories of saves a crash interrupted (never valid versions)."""
    for entry in os.listdir(self.root):
      if entry.startswith(CHECKPOINT_PREFIX) and '_temp' in entry:
        shutil.rmtree(os.path.join(self.root, entry), ignore_errors=True)


def _check_like(state, template) -> None:
  import tensorflow as tf  # noqa: PLC0415
  tf.nest.assert_same_structure(state, template)
  for got, want in zip(tf.nest.flatten(state), tf.nest.flatten(template), strict=True):
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype:
      raise ValueError(f'a saved tensor is {got.dtype}{list(got.shape)}, the model needs '
                       f'{want.dtype}{list(want.shape)}')


class MetricsRelease:
  """Releases one row per round to `metrics.csv`, TensorBoard and the log."""

  def __init__(self, output_dir: str, columns: Sequence[str], *, key: str = 'round'):
    self.columns = tuple(c for c in columns if c != key)
    # TFF flattens dicts in sorted key order; a named tuple keeps the columns in ours.
    self._row_type = collections.namedtuple('MetricsRow', self.columns)
    self._csv = tff.program.CSVFileReleaseManager(
        os.path.join(output_dir, METRICS_FILE), key_fieldname=key)
    self._tensorboard = tff.program.TensorBoardReleaseManager(
        os.path.join(output_dir, TENSORBOARD_DIR))
    self._logging = tff.program.LoggingReleaseManager()

  def release(self, row: Mapping[str, Any], round_num: int) -> None:
    """Publishes `row` as round `round_num` (later rows of an earlier attempt are dropped)."""
    csv_row = self._row_type(*(_csv_value(row.get(column)) for column in self.columns))
    numbers = {column: float(value) for column, value in row.items()
               if column in self.columns and _is_number(value)}

    async def release_all():
      await asyncio.gather(self._csv.release(csv_row, round_num),
                           self._tensorboard.release(numbers, round_num),
                           self._logging.release(numbers, round_num))

    _run(release_all())


def _is_number(value) -> bool:
  return (isinstance(value, int | float | np.integer | np.floating)
          and not isinstance(value, bool) and np.isfinite(value))


def _csv_value(value):
  if value is None:
    return ''
  if isinstance(value, float | np.floating):
    return f'{float(value):.6g}'
  return value
