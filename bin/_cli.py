"""Shared start-up of the `bin/` programs: quiet TensorFlow, absl flag parsing, exit codes.

Exit status 2 means a usage error (bad flag value, unknown choice, unwritable path), printed
as one line on stderr; 0 means success; anything else is a failure during the run.
"""

from __future__ import annotations

import os
import signal
import sys

# TensorFlow's C++ start-up messages (CUDA plugin registration, CPU feature notes) would
# drown our output; set before TensorFlow is imported anywhere.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# gRPC's own informational lines (e.g. about fork() while channels are open) likewise.
os.environ.setdefault('GRPC_VERBOSITY', 'ERROR')
# Behave like a Unix tool when piped into `head`: end quietly instead of a BrokenPipeError.
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
# Let `python bin/x.py` import the project packages from a source checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _stop_before_run(signum, frame):
  """Ctrl-C or SIGTERM while the program's modules load: nothing is open or written yet."""
  del frame
  name = signal.Signals(signum).name
  os.write(2, f'{os.path.basename(sys.argv[0])}: stopped by {name}.\n'.encode())
  os._exit(128 + signum)


def _stop_on_signals() -> dict:
  """Makes SIGINT and SIGTERM end the program at once; returns the handlers they had."""
  return {signum: signal.signal(signum, _stop_before_run)
          for signum in (signal.SIGINT, signal.SIGTERM)}


# From here until `run` takes over (a traceback from the middle of an import otherwise).
_stop_on_signals()

from absl import flags, logging  # noqa: E402

USAGE_ERROR = 2


def run(main) -> int:
  """`main(sys.argv)`'s exit status; Ctrl-C and SIGTERM end it with one line (130 / 143).

  A run that training stopped says where and how to resume (`signals.RunStopped`); a stop
  anywhere else (loading, preparing) just says so. Never a traceback.
  """
  from tff_gan.runtime import signals  # noqa: PLC0415 (no TensorFlow)

  program = os.path.basename(sys.argv[0])
  signals.install()
  try:
    return main(sys.argv)
  except signals.RunStopped as e:
    print(f'{program}: {e}', file=sys.stderr)
    return e.exit_code
  except (KeyboardInterrupt, signals.Terminated) as e:
    terminated = isinstance(e, signals.Terminated)
    print(f'{program}: stopped by {"SIGTERM" if terminated else "SIGINT"}.', file=sys.stderr)
    return 128 + (signal.SIGTERM if terminated else signal.SIGINT)


def usage_error(program: str, message: str) -> None:
  """Prints `program: error: message` on stderr and exits with status 2."""
  print(f'{program}: error: {message}', file=sys.stderr)
  sys.exit(USAGE_ERROR)


def parse_flags(argv: list[str], doc: str) -> list[str]:
  """Parses absl flags; `--help` prints the flags and exits 0; bad flags exit 2."""
  program = os.path.basename(argv[0])
  if any(arg in ('-h', '--help', '-help', '--helpfull') for arg in argv[1:]):
    print(doc.strip() + '\n')
    print(flags.FLAGS.main_module_help())
    sys.exit(0)
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as e:
    usage_error(program, f'{e}. See --help.')
  if len(remaining) > 1:
    usage_error(program, f"unexpected arguments {remaining[1:]}; flags look like --name=value.")
  logging.set_verbosity(logging.WARNING)
  return remaining


def quiet_tensorflow() -> None:
  """Imports TensorFlow with its Python logger limited to errors, and TFF with no context.

  TFF's default execution context would start a worker nobody stops; from here on, only the
  contexts of `tff_gan.runtime.contexts` run computations.

  An import cut short by a signal leaves modules half made (later errors that are not the
  user's), and every program calls this before writing anything: a signal meanwhile ends
  the program at once, in one line.
  """
  previous = _stop_on_signals()
  import tensorflow as tf  # noqa: PLC0415 (after the environment is set)

  from tff_gan.runtime import contexts  # noqa: PLC0415 (imports TFF)

  tf.keras.layers  # noqa: B018 (Keras loads lazily: here, with the rest)
  tf.get_logger().setLevel('ERROR')
  contexts.refuse_unowned_execution()
  for signum, handler in previous.items():
    signal.signal(signum, handler)


class LoadError(Exception):
  """A saved round cannot be loaded; the message is one line."""


def load_round(output_dir: str, config, round_num: int):
  """`(task, models, generator_weights)` of the run in `output_dir` at the saved `round_num`.

  Imports TensorFlow. Raises `LoadError` with the first line of what went wrong (a task this
  version cannot build, a damaged checkpoint, a TFF worker that would not start, an OS error).
  """
  import tasks  # noqa: PLC0415 (imports TensorFlow)
  from tff_gan.algorithms.composition import GanProcess  # noqa: PLC0415
  from tff_gan.run import export, persistence, rundir, schemes  # noqa: PLC0415
  from tff_gan.runtime.workers import WorkerError  # noqa: PLC0415

  try:
    task = tasks.task_from_config(config)
    models = task.gan_models(config.conditional)
    scheme = schemes.for_config(config)
    num_clients = (scheme.population(config, task).num_clients if scheme.keeps_client_state
                   else 0)
    state = export.load_state(output_dir, config, models, round_num, num_clients)
  except (ValueError, OSError, persistence.CheckpointError, WorkerError) as e:
    raise LoadError(rundir.first_line(e)) from e
  return task, models, GanProcess.generator_weights(state)
