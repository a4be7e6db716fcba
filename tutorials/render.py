"""Executes the tutorials with their full settings and stores them with their outputs.

`make tutorials` runs this: each notebook in a fresh kernel (nbclient), from the repository
root, without the smoke switch, then written back in place with its figures and tables, so
that a reader sees them without running anything. Progress bars are stored as a terminal
shows them at the end (their carriage returns applied), not as hundreds of updates.

Usage: python tutorials/render.py [NAME ...]    (default: every tutorial)
"""

from __future__ import annotations

import glob
import os
import sys

import nbclient
import nbformat

TUTORIALS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TUTORIALS)
NOTEBOOKS = tuple(sorted(os.path.basename(path)[:-len('.ipynb')]
                        for path in glob.glob(os.path.join(TUTORIALS, '*.ipynb'))))


def collapse_streams(cell) -> None:
  """Merges a cell's consecutive outputs to one stream and keeps each line's last rewrite."""
  merged = []
  for output in cell.outputs:
    previous = merged[-1] if merged else None
    if (output.output_type == 'stream' and previous is not None
        and previous.output_type == 'stream' and previous.name == output.name):
      previous.text += output.text
    else:
      merged.append(output)
  for output in merged:
    if output.output_type == 'stream':
      output.text = '\n'.join(([part for part in line.split('\r') if part] or [''])[-1]
                              for line in output.text.split('\n'))
  cell.outputs = merged


def render(name: str) -> None:
  path = os.path.join(TUTORIALS, f'{name}.ipynb')
  notebook = nbformat.read(path, as_version=4)
  nbclient.NotebookClient(notebook, timeout=1800, kernel_name='python3',
                          resources={'metadata': {'path': REPO}}).execute()
  for cell in notebook.cells:
    if cell.cell_type == 'code':
      collapse_streams(cell)
  nbformat.write(notebook, path)
  print(f'render.py: stored {path} executed', flush=True)


def main(argv: list[str]) -> int:
  for variable in ('TFF_GAN_TUTORIAL_SMOKE', 'TFF_GAN_TUTORIAL_OUTPUT'):
    os.environ.pop(variable, None)  # Full settings, outputs where the notebooks put them.
  names = argv[1:] or list(NOTEBOOKS)
  unknown = sorted(set(names) - set(NOTEBOOKS))
  if unknown:
    print(f'render.py: error: no tutorial named {unknown}; choose from {list(NOTEBOOKS)}.',
          file=sys.stderr)
    return 2
  for name in names:
    render(name)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
