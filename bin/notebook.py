"""Start JupyterLab on this project's environment, to run the tutorials where they can run.

TensorFlow 2.14 and TFF 0.87 install only on Python 3.11, which hosted Colab no longer
offers: the tutorials run in a checkout, on this server. It registers the project's `.venv`
as the kernel "tff-gan (.venv)" (inside `.venv`, nothing in your home directory), opens in
`tutorials/`, and prints the URL to open, with its access token.

`--colab` starts it for Colab's local runtime instead: it accepts the Colab page's
connections (`allow_origin`), on exactly `--port` (8888 by default). Then in Colab:
Connect ▸ "Connect to a local runtime", and paste the URL printed with its token. Your
notebook then runs here, with this machine's files and cores.

Usage:
  make notebook                          # or: .venv/bin/python bin/notebook.py
  make notebook NOTEBOOK_ARGS=--colab    # for Colab's local runtime
"""

from __future__ import annotations

import os
import sys
import tempfile

import _cli
from absl import flags

flags.DEFINE_integer('port', 8888, 'Port to serve on (127.0.0.1 only).')
flags.DEFINE_bool('colab', False, "Serve Colab's local runtime: accept connections from "
                  'https://colab.research.google.com, on exactly --port.')
FLAGS = flags.FLAGS

KERNEL_NAME = 'tff-gan'
KERNEL_DISPLAY_NAME = 'tff-gan (.venv)'
COLAB_ORIGIN = 'https://colab.research.google.com'
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def jupyter_command(port: int, colab: bool) -> list[str]:
  """The JupyterLab command line: loopback only, no browser, opened in `tutorials/`."""
  command = [sys.executable, '-m', 'jupyter', 'lab', '--no-browser', '--ServerApp.ip=127.0.0.1',
             f'--ServerApp.port={port}', '--ServerApp.port_retries=0',
             f'--ServerApp.root_dir={os.path.join(REPO_ROOT, "tutorials")}',
             f'--MultiKernelManager.default_kernel_name={KERNEL_NAME}']
  if colab:
    command.append(f'--ServerApp.allow_origin={COLAB_ORIGIN}')
  if os.geteuid() == 0:  # Containers and CI run as root; loopback and a token still guard it.
    command.append('--allow-root')
  return command


def main(argv: list[str]) -> int:
  program = os.path.basename(argv[0])
  _cli.parse_flags(argv, __doc__)
  if not 0 < FLAGS.port < 65536:
    _cli.usage_error(program, f'--port must be between 1 and 65535, got {FLAGS.port}.')
  from ipykernel import kernelspec  # noqa: PLC0415 (a dev dependency: make installs it)

  # ipykernel stages the spec in a new directory of the temp dir and leaves that behind,
  # empty: here it stages it in one of ours, removed after.
  with tempfile.TemporaryDirectory(prefix='tff_gan_kernelspec_') as staging:
    temp_dir, tempfile.tempdir = tempfile.tempdir, staging
    try:
      kernelspec.install(kernel_name=KERNEL_NAME, display_name=KERNEL_DISPLAY_NAME,
                         prefix=sys.prefix)
    finally:
      tempfile.tempdir = temp_dir
  where = ("In Colab: Connect > Connect to a local runtime, and paste the URL below (with its "
           'token).' if FLAGS.colab else 'Open the URL below (with its token) in a browser.')
  print(f'{program}: kernel "{KERNEL_DISPLAY_NAME}" registered in {sys.prefix}. {where} '
        'Ctrl-C twice stops the server.', flush=True)
  command = jupyter_command(FLAGS.port, FLAGS.colab)
  os.execv(command[0], command)  # Jupyter itself from here: its output, its Ctrl-C.


if __name__ == '__main__':
  sys.exit(_cli.run(main))
