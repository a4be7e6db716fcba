"""Reading TFF's federated EMNIST file (`emnist_all.sqlite`) without downloading anything.

Checks the file first and raises `EmnistError` (one line: which file goes where, and where to
get it); reads the writers' sizes and the test split with SQL, each writer's examples through
TFF's own SQL client data (see `tasks.emnist`).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sqlite3

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.simulation.datasets import sql_client_data

DATABASE_FILE = 'emnist_all.sqlite'
DATABASE_URL = 'https://storage.googleapis.com/tff-datasets-public/emnist_all.sqlite.lzma'
# (train split, test split, number of classes) of the file, as TFF's loader names them.
SPLITS = {True: ('digits_only_train', 'digits_only_test', 10),
           False: ('all_train', 'all_test', 62)}
IMAGE_SIDE = 28
_PARSE_SPEC = {  # The features of TFF's EMNIST protos, as its loader parses them.
    'pixels': tf.io.FixedLenFeature(shape=(IMAGE_SIDE, IMAGE_SIDE), dtype=tf.float32),
    'label': tf.io.FixedLenFeature(shape=(), dtype=tf.int64),
}
_READ_CHUNK = 4096  # Test-split protos parsed at a time.
_MIN_TEST_EXAMPLES = 10  # The evaluation needs at least 2 held-out and 2 classifier examples.


class EmnistError(ValueError):
  """The EMNIST file is missing or cannot be read; the message says which file and the fix."""


def to_model_pixels(pixels):
  """TFF's pixels `[..., 28, 28]` in [0, 1] (1 = background) as `[..., 28, 28, 1]` in [-1, 1]
  (-1 = background, +1 = ink)."""
  return (1.0 - 2.0 * pixels)[..., None]


def database_path(data_dir: str) -> str:
  """The absolute path of the database in `data_dir`; EmnistError if it is not there."""
  if not data_dir:
    raise EmnistError(f'no data_dir given: put {DATABASE_FILE} (from {DATABASE_URL}, '
                      'decompressed with `xz -d`) in a folder and pass that folder.')
  directory = os.path.abspath(os.path.expanduser(data_dir))
  path = os.path.join(directory, DATABASE_FILE)
  if os.path.isfile(path):
    return path
  if os.path.isfile(f'{path}.lzma'):
    raise EmnistError(f'{path}.lzma is still compressed: run `xz -d {path}.lzma` to get '
                      f'{DATABASE_FILE} there (nothing is downloaded).')
  raise EmnistError(f'{DATABASE_FILE} not found in {directory}: download {DATABASE_URL}, '
                    f'decompress it with `xz -d` and put {DATABASE_FILE} in that folder '
                    '(nothing is downloaded here).')


def load_with_tff(path: str, only_digits: bool):
  """TFF's (train, test) `ClientData` of the file at `path`, which exists."""
  try:
    return tff.simulation.datasets.emnist.load_data(only_digits=only_digits,
                                                    cache_dir=os.path.dirname(path))
  except sqlite3.Error as e:
    raise EmnistError(f'{path} is not a readable SQLite database ({e}); download it again '
                      f'from {DATABASE_URL} and decompress it with `xz -d`.') from e
  except sql_client_data.DatabaseFormatError as e:
    raise EmnistError(f'{path} lacks the tables of federated EMNIST (examples, '
                      f'client_metadata); download it again from {DATABASE_URL}.') from e
  except StopIteration as e:  # TFF's loader peeks at the first writer of each split.
    train_split, test_split, _ = SPLITS[only_digits]
    raise EmnistError(f"{path} has no writers in split '{train_split}' or '{test_split}' "
                      f'(only_digits={only_digits}); download the full file again from '
                      f'{DATABASE_URL}.') from e


def connect(path: str) -> contextlib.closing:
  """A read-only connection to `path`, closed when its `with` block ends."""
  return contextlib.closing(sqlite3.connect(f'{pathlib.Path(path).as_uri()}?mode=ro', uri=True))


def client_sizes(connection, path: str, split: str, client_ids: list[str]) -> np.ndarray:
  """Examples per writer of `split`, in `client_ids` order, from `client_metadata`."""
  try:
    rows = connection.execute(
        'SELECT client_id, num_examples FROM client_metadata WHERE split_name = ?',
        (split,)).fetchall()
  except sqlite3.Error as e:
    raise EmnistError(f'{path} has no readable client_metadata.num_examples ({e}); download '
                      f'it again from {DATABASE_URL}.') from e
  sizes = dict(rows)
  missing = [writer for writer in client_ids if not sizes.get(writer, 0) > 0]
  if missing:
    raise EmnistError(f"{path} lists no examples of writer {missing[0]!r} in split '{split}' "
                      f'({len(missing)} such writers); download it again from {DATABASE_URL}.')
  return np.array([sizes[writer] for writer in client_ids], np.int64)


def read_split(connection, path: str, split: str,
                num_labels: int) -> tuple[np.ndarray, np.ndarray]:
  """All examples `[N, 28, 28, 1]` in [-1, 1] and int64 labels `[N]` of `split`, in row order.

  One query over the split, parsed as TFF parses a client's protos; reading the split writer
  by writer through TFF would run one query per writer.
  """
  examples, labels = [], []
  try:
    cursor = connection.execute(
        'SELECT serialized_example_proto FROM examples WHERE split_name = ? ORDER BY rowid',
        (split,))
    while rows := cursor.fetchmany(_READ_CHUNK):
      parsed = tf.io.parse_example(tf.constant([row[0] for row in rows], tf.string),
                                   _PARSE_SPEC)
      examples.append(to_model_pixels(parsed['pixels'].numpy()).astype(np.float32))
      labels.append(parsed['label'].numpy())
  except sqlite3.Error as e:
    raise EmnistError(f"{path}: cannot read split '{split}' ({e}); download it again from "
                      f'{DATABASE_URL}.') from e
  except tf.errors.InvalidArgumentError as e:
    raise EmnistError(f"{path}: the examples of split '{split}' are not EMNIST protos "
                      f'(28x28 pixels and a label); download it again from {DATABASE_URL}.'
                      ) from e
  num_examples = sum(len(chunk) for chunk in labels)
  if num_examples < _MIN_TEST_EXAMPLES:
    raise EmnistError(f"{path} has {num_examples} examples in split '{split}', fewer than the "
                      f'{_MIN_TEST_EXAMPLES} the evaluation needs; use the full file from '
                      f'{DATABASE_URL}.')
  labels = np.concatenate(labels).astype(np.int64)
  if labels.min() < 0 or labels.max() >= num_labels:
    raise EmnistError(f"{path}: split '{split}' has labels in [{labels.min()}, {labels.max()}]"
                      f', outside [0, {num_labels}); download it again from {DATABASE_URL}.')
  return np.concatenate(examples), labels


def has_client_index(connection) -> bool:
  """Whether an index of `examples` starts with `client_id` (per-writer reads seek, not scan)."""
  try:
    for index in connection.execute('PRAGMA index_list(examples)').fetchall():
      columns = connection.execute(f'PRAGMA index_info("{index[1]}")').fetchall()
      if columns and columns[0][2] == 'client_id':
        return True
  except sqlite3.Error:
    return False
  return False


