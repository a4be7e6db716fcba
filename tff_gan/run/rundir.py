"""A run directory: what a training run writes where, and the checks on it (no TensorFlow).

`bin/train.py` writes a run to its `--output_dir`; `bin/generate.py` and `bin/evaluate.py`
read it back. Every name a run writes is defined here once, and every check that needs no
TensorFlow (the saved configuration, the saved rounds, writable directories) is here, so a
command line can be checked in milliseconds.

* `config.json` (`CONFIG_FILE`): the run's `TrainConfig`;
* `metrics.csv` (`METRICS_FILE`), `tb/` (`TENSORBOARD_DIR`): one row per round;
* `samples/` (`SAMPLES_DIR`): the task's rendering of samples at each evaluation;
* `checkpoints/round_N/` (`CHECKPOINT_DIR`, `CHECKPOINT_PREFIX`): the full state;
* `worker.log` (`WORKER_LOG`): the local TFF worker's output;
* `real_data_metrics.json` (`REFERENCE_FILE`), `classifier/` (`CLASSIFIER_DIR`): tasks with
  real data.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import json
import os
import re
import shutil
from typing import Any

from tff_gan.run.config import PRIVACY_CLAIM_NOTE, ConfigError, TrainConfig

CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.csv'
SAMPLES_DIR = 'samples'
CHECKPOINT_DIR = 'checkpoints'
CHECKPOINT_PREFIX = 'round_'  # `round_<N>`: the versions of the checkpoint manager.
TENSORBOARD_DIR = 'tb'
WORKER_LOG = 'worker.log'
CLASSIFIER_DIR = 'classifier'  # The evaluation classifier of image tasks, cached.
REFERENCE_FILE = 'real_data_metrics.json'  # The task's metrics of held-out real data.
# What `remove_outputs` deletes (`--overwrite`); the cached classifier is kept.
CURVES_FILE = 'training_curves.png'  # Losses, quality and ε against rounds, at the end.
CLIENT_EPSILON_FILE = 'client_epsilon.csv'  # Each client's ε: --dp_unit=example, gs_wgan, async.
LOCK_FILE = '.lock'  # Held by the run writing here (`run_lock`); never removed by it.
OUTPUTS = (CONFIG_FILE, METRICS_FILE, SAMPLES_DIR, WORKER_LOG, REFERENCE_FILE, CHECKPOINT_DIR,
           TENSORBOARD_DIR, CURVES_FILE, CLIENT_EPSILON_FILE)
_ROUND_DIR = re.compile(rf'{CHECKPOINT_PREFIX}(\d+)')

# Fields a rerun on the same output directory may change: they do not alter the rounds run so
# far (`rounds` extends or shortens the run; the rest are where and how often state is saved,
# and where the computations run).
RESUMABLE_FIELDS = ('rounds', 'checkpoint_every', 'output_dir', 'executor', 'workers',
                    'worker_timeout', 'tls_ca', 'tls_client_cert', 'tls_client_key',
                    'auth_token_file')


def remove_outputs(output_dir: str) -> None:
  """Deletes what a run writes to `output_dir` (and nothing else there)."""
  for name in OUTPUTS:
    path = os.path.join(output_dir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)


def read_metrics(output_dir: str) -> list[dict[str, str]]:
  """The rows of `metrics.csv` as strings by column ([] if there is no file yet)."""
  path = os.path.join(output_dir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def last_released_row(output_dir: str) -> dict[str, Any]:
  """The last row of `metrics.csv` (empty fields dropped), or {} if there is none."""
  rows = read_metrics(output_dir)
  return {k: v for k, v in rows[-1].items() if v != ''} if rows else {}


def check_same_run(config: TrainConfig) -> None:
  """Refuses to resume a run in `config.output_dir` that was started with other settings.

  Raises:
    ConfigError: Naming each differing flag with its saved and its new value.
  """
  path = os.path.join(config.output_dir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f'{path} cannot be read ({e}); rerun with --overwrite to start over, or '
                      'choose another --output_dir.') from e
  current = dataclasses.asdict(config)
  saved.pop(PRIVACY_CLAIM_NOTE, None)
  # A setting added after the run was saved took its default there.
  saved = dataclasses.asdict(TrainConfig()) | saved
  # Settings resolved only once the data is read (0 now) match whatever the data gave.
  unresolved = {name for name in ('clients_per_round', 'buffer_size', 'max_concurrent_clients')
                if not current[name]}
  differences = [f'--{name}={saved.get(name)!r} there, {current[name]!r} now'
                 for name in sorted(current)
                 if name not in RESUMABLE_FIELDS and name not in unresolved
                 and saved.get(name) != current[name]]
  if differences:
    raise ConfigError(f'--output_dir {config.output_dir} holds a run with other settings '
                      f'({"; ".join(differences)}); rerun with the same flags to resume it, '
                      'with --overwrite to start over, or choose another --output_dir.')


def check_output_dir_writable(output_dir: str) -> None:
  """Raises `ConfigError` if `output_dir` could not be created or written (creates nothing)."""
  try:
    check_writable_dir(output_dir, '--output_dir')
  except RunError as e:
    raise ConfigError(str(e)) from None


@contextlib.contextmanager
def run_lock(output_dir: str):
  """Holds `output_dir` for one writer for the `with` block (creating the directory).

  An exclusive `flock` on `LOCK_FILE`, which holds the writer's pid: a second writer gets a
  `ConfigError` naming it. The kernel drops the lock when its process ends, however it ends,
  so the lock file of a killed run never blocks the next. If the block fails before anything
  but the lock was written to a directory it created, the directory is removed again.
  """
  created = not os.path.isdir(output_dir)
  try:
    os.makedirs(output_dir, exist_ok=True)
    descriptor = os.open(os.path.join(output_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise ConfigError(f'cannot create --output_dir {output_dir}: {e.strerror}; choose a '
                      'writable directory.') from e
  try:
    try:
      fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(descriptor, 32).decode(errors='replace').strip() or 'unknown'
      raise ConfigError(f'another trainer (pid {holder}) is writing to --output_dir '
                        f'{output_dir}; wait for it to end, or choose another '
                        '--output_dir.') from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f'{os.getpid()}\n'.encode())
    try:
      yield
    except BaseException:
      if created and set(os.listdir(output_dir)) <= {LOCK_FILE}:
        shutil.rmtree(output_dir, ignore_errors=True)
      raise
  finally:
    os.close(descriptor)


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


def check_label(config: TrainConfig, label: int | None) -> None:
  """Raises `RunError` if `--label` is given for an unconditional run or is negative."""
  if label is None:
    return
  if not config.conditional:
    raise RunError('--label needs a class-conditional run (bin/train.py --conditional); this '
                   'run is unconditional: drop --label.')
  if label < 0:
    raise RunError(f'--label must be a class number (0 or more), got {label}.')


def open_run(output_dir: str, round_num: int | None, num_samples: int | None,
             seed: int | None) -> tuple[TrainConfig, int]:
  """`(config, round)` of the run in `output_dir` for readers' flags (no TensorFlow needed).

  Raises:
    RunError: See `check_arguments`, `read_config` and `resolve_round`.
  """
  check_arguments(output_dir, round_num, num_samples, seed)
  return read_config(output_dir), resolve_round(output_dir, round_num)


def read_config(output_dir: str) -> TrainConfig:
  """The `TrainConfig` saved in `<output_dir>/config.json` by `bin/train.py`.

  Raises:
    RunError: If `output_dir` is not a directory, or holds no readable `config.json`.
  """
  if not os.path.isdir(output_dir):
    raise RunError(f'--output_dir {output_dir} does not exist; pass the --output_dir of a '
                   'bin/train.py run.')
  path = os.path.join(output_dir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise RunError(f'no {CONFIG_FILE} in {output_dir}; pass the --output_dir of a '
                   'bin/train.py run.')
  try:
    with open(path) as f:
      values = json.load(f)
    values.pop(PRIVACY_CLAIM_NOTE, None)
    return TrainConfig(**values)
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


def first_line(error: BaseException) -> str:
  """The first line of `error`'s message, or its type's name if it has none."""
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__
