"""Reading a training run back: its config, its checkpoints and its generator.

`bin/generate.py` and `bin/evaluate.py` use this to turn `<output_dir>/checkpoints/round_<N>`
(written by `bin/train.py`) into samples, metrics and a standalone Keras generator.

The checks on a run directory (`read_config`, `saved_rounds`, `resolve_round`,
`check_writable_dir`) need no TensorFlow, so a command line can be checked in milliseconds;
the functions that touch models import TensorFlow and TFF when called.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator

from tff_gan import config as config_lib

# `program.CHECKPOINT_DIR` and the prefix of its `FileProgramStateManager`; spelled out here
# because `tff_gan.program` imports TFF (tests/test_generate.py checks that they match).
CHECKPOINT_DIR = 'checkpoints'
_ROUND_DIR = re.compile(r'round_(\d+)')


class RunError(ValueError):
  """A run directory or a round in it cannot be used; the message says which and why."""


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def check_arguments(output_dir: str, round_num: int | None, num_samples: int | None,
                    seed: int | None) -> None:
  """Raises `RunError` for a value that cannot work (cheap: before TensorFlow loads).

  `None` stands for "the default" and always passes.
  """
  if not output_dir:
    raise RunError('--output_dir is required: the directory of a bin/train.py run.')
  if round_num is not None and round_num <= 0:
    raise RunError(f'--round must be positive, got {round_num}.')
  if num_samples is not None and num_samples <= 0:
    raise RunError(f'--num_samples must be positive, got {num_samples}.')
  if seed is not None and not _INT64_MIN <= seed <= _INT64_MAX:
    raise RunError(f'--seed must fit in 64 bits, got {seed}.')


def check_label(config: config_lib.TrainConfig, label: int | None) -> None:
  """Raises `RunError` if `--label` is given for an unconditional run or is negative."""
  if label is None:
    return
  if not config.conditional:
    raise RunError('--label needs a class-conditional run (bin/train.py --conditional); this '
                   'run is unconditional: drop --label.')
  if label < 0:
    raise RunError(f'--label must be a class number (0 or more), got {label}.')


def conditional_samples(generator, task, num_samples: int, seed: int,
                        label: int | None):
  """`(examples, labels)` numpy arrays from a conditional generator: class `label`, or all
  classes in turn.

  The noise is `tf.random.stateless_normal([num_samples, task.noise_dim], seed=[seed, 1])`.

  Raises:
    RunError: If `label` is not one of the task's classes.
  """
  import numpy as np  # noqa: PLC0415
  import tensorflow as tf  # noqa: PLC0415

  from tff_gan import conditional  # noqa: PLC0415

  if label is not None and label >= task.num_labels:
    raise RunError(f'--label must be below the task\'s {task.num_labels} classes, got {label}.')
  labels = (np.full(num_samples, label) if label is not None
            else np.arange(num_samples) % task.num_labels)
  noise = tf.random.stateless_normal([num_samples, task.noise_dim], seed=[seed, 1])
  inputs = conditional.generator_input(noise.numpy(), labels, task.num_labels)
  examples, _ = conditional.unpack(generator(inputs, training=False).numpy(), task.num_labels)
  return examples, labels.astype(np.int64)


def open_run(output_dir: str, round_num: int | None, num_samples: int | None,
             seed: int | None) -> tuple[config_lib.TrainConfig, int]:
  """`(config, round)` of the run in `output_dir` for readers' flags (no TensorFlow needed).

  Raises:
    RunError: See `check_arguments`, `read_config` and `resolve_round`.
  """
  check_arguments(output_dir, round_num, num_samples, seed)
  return read_config(output_dir), resolve_round(output_dir, round_num)


def read_config(output_dir: str) -> config_lib.TrainConfig:
  """The `TrainConfig` saved in `<output_dir>/config.json` by `bin/train.py`.

  Raises:
    RunError: If `output_dir` is not a directory, or holds no readable `config.json`.
  """
  if not os.path.isdir(output_dir):
    raise RunError(f'--output_dir {output_dir} does not exist; pass the --output_dir of a '
                   'bin/train.py run.')
  path = os.path.join(output_dir, config_lib.CONFIG_FILE)
  if not os.path.isfile(path):
    raise RunError(f'no {config_lib.CONFIG_FILE} in {output_dir}; pass the --output_dir of a '
                   'bin/train.py run.')
  try:
    with open(path) as f:
      values = json.load(f)
    return config_lib.TrainConfig(**values)
  except (OSError, ValueError, TypeError) as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise RunError(f'{path} cannot be read ({reason[:200]}).') from e


def saved_rounds(output_dir: str) -> list[int]:
  """The rounds with a checkpoint in `<output_dir>/checkpoints`, oldest first.

  Directories of saves still being written (`round_<N>_temp<K>`) are not counted.
  """
  root = os.path.join(output_dir, CHECKPOINT_DIR)
  try:
    entries = os.listdir(root)
  except (FileNotFoundError, NotADirectoryError):
    return []
  rounds = []
  for entry in entries:
    match = _ROUND_DIR.fullmatch(entry)
    if match and os.path.isdir(os.path.join(root, entry)):
      rounds.append(int(match.group(1)))
  return sorted(rounds)


def resolve_round(output_dir: str, round_num: int | None) -> int:
  """`round_num` if a checkpoint of it was saved; the latest saved round if it is None.

  Raises:
    RunError: If there is no checkpoint at all, or none of `round_num`.
  """
  rounds = saved_rounds(output_dir)
  root = os.path.join(output_dir, CHECKPOINT_DIR)
  if not rounds:
    raise RunError(f'no checkpoint in {root}; train first.')
  if round_num is None:
    return rounds[-1]
  if round_num not in rounds:
    raise RunError(f'round {round_num} was not saved in {root}; saved rounds: '
                   f'{", ".join(map(str, rounds))} (bin/train.py keeps the latest few, every '
                   '--checkpoint_every rounds).')
  return round_num


def check_writable_dir(path: str, flag: str) -> None:
  """Checks that directory `path` exists and is writable, or could be created.

  Creates nothing, so a run that fails later leaves no empty directory behind.

  Raises:
    RunError: Naming `flag`, if `path` is not a directory or cannot be written.
  """
  existing = os.path.abspath(path)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise RunError(f'cannot create {flag} {path}: {existing} is not a directory; choose '
                   'another directory.')
  if not os.access(existing, os.W_OK | os.X_OK):
    raise RunError(f'{flag} {path} is not writable ({existing} is read-only); choose a '
                   'writable directory.')


def load_state(output_dir: str, config: config_lib.TrainConfig, models, round_num: int):
  """The `ServerState` saved at `round_num` in `output_dir`.

  The template the checkpoint is read into is the initial state of the process `config`
  trains with, computed on a TFF worker that is stopped before this returns. Unlike
  `program.Checkpoints`, this never deletes anything in the run directory, so it is safe while
  `bin/train.py` is still writing checkpoints there.

  Args:
    output_dir: The run's directory.
    config: The run's `TrainConfig` (see `read_config`).
    models: `task.gan_models(config.conditional)` of the run's task.
    round_num: A saved round (see `resolve_round`).

  Raises:
    program.CheckpointError: With one line, if the checkpoint is missing or damaged.
    contexts.WorkerError: If the TFF worker cannot be started.
  """
  from tff_gan import contexts, program, training  # noqa: PLC0415 (imports TensorFlow)

  process = training.build_process(config, models)
  with contexts.local_cpp_context():
    template = process.initialize()
  return program.Checkpoints(output_dir, read_only=True).load(round_num, template)


class LoadError(Exception):
  """A saved round cannot be loaded; the message is one line."""


def load_round(output_dir: str, config: config_lib.TrainConfig, round_num: int):
  """`(task, models, state)` of the run in `output_dir` at the saved round `round_num`.

  Raises:
    LoadError: With the first line of what went wrong (a task this version cannot build,
      a damaged checkpoint, a TFF worker that would not start, an OS error).
  """
  import tasks  # noqa: PLC0415 (imports TensorFlow)
  from tff_gan import contexts, program  # noqa: PLC0415

  try:
    task = tasks.task_from_config(config)
    models = task.gan_models(config.conditional)
    return task, models, load_state(output_dir, config, models, round_num)
  except (ValueError, OSError, program.CheckpointError, contexts.WorkerError) as e:
    raise LoadError(first_line(e)) from e


def first_line(error: BaseException) -> str:
  """The first line of `error`'s message, or its type's name if it has none."""
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


def build_generator(models, generator_weights):
  """A fresh generator from `models.generator_fn()` holding `generator_weights`.

  Args:
    models: The run's `GanModels`.
    generator_weights: `ServerState.weights.generator`: the trainable weights in Keras
      variable order.
  """
  generator = models.generator_fn()
  for variable, value in zip(generator.trainable_variables, generator_weights, strict=True):
    variable.assign(value)
  return generator


@contextlib.contextmanager
def staged_files(paths: list[str]) -> Iterator[list[str]]:
  """Yields temporary paths, one per path of `paths`, renamed onto them if the block succeeds.

  Each temporary file is in its target's directory and ends with the same extension (Keras
  and numpy look at it). If the block raises, the temporary files are removed and no target
  is touched; otherwise every target is replaced (`os.replace`) by its complete new version.
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
      os.chmod(temporary, 0o644)  # mkstemp makes files readable by their owner only.
      os.replace(temporary, path)
  finally:
    for temporary in temporaries:
      with contextlib.suppress(FileNotFoundError):
        os.remove(temporary)


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
