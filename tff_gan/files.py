"""Writing files whole or not at all: the one atomic writer of the project.

Every file a run, an export or a task writes goes through `staged_files`: the content is
written to a temporary file beside its target and renamed onto it (`os.replace`) only once
complete, so a crash, a full disk or Ctrl-C never leaves a half-written file behind.
Importable before TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def staged_files(paths: list[str]) -> Iterator[list[str]]:
  """Yields temporary paths, one per path of `paths`, renamed onto them if the block succeeds.

  Each temporary file is in its target's directory and ends with the same extension (Keras,
  numpy and matplotlib look at it). If the block raises, the temporary files are removed and
  no target is touched; otherwise every target is replaced by its complete new version.
  """
  temporaries = []
  try:
    for path in paths:
      name, extension = os.path.splitext(os.path.basename(path))
      handle, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                           prefix=f'.{name}.', suffix=f'.tmp{extension}')
      os.close(handle)
      temporaries.append(temporary)
    yield list(temporaries)
    for temporary, path in zip(temporaries, paths, strict=True):
      _sync(temporary)  # On disk before it takes the target's name.
      os.chmod(temporary, 0o644)  # mkstemp makes files readable by their owner only.
      os.replace(temporary, path)
  finally:
    for temporary in temporaries:
      with contextlib.suppress(FileNotFoundError):
        os.remove(temporary)


def _sync(path: str) -> None:
  descriptor = os.open(path, os.O_RDONLY)
  try:
    os.fsync(descriptor)
  finally:
    os.close(descriptor)


def write_outputs(writers: dict[str, Callable[[str], None]]) -> list[str]:
  """Calls `writers[path](temporary_path)` for each path, then moves the files into place.

  Returns:
    The paths written, in the order of `writers`.
  """
  paths = list(writers)
  with staged_files(paths) as temporaries:
    for path, temporary in zip(paths, temporaries, strict=True):
      writers[path](temporary)
  return paths


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically."""

  def write(temporary: str) -> None:
    with open(temporary, 'w') as f:
      f.write(text)

  write_outputs({path: write})
