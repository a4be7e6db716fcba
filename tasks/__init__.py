"""Tasks: a dataset, GAN networks, sample metrics and a renderer behind one interface.

Embedded tasks (`ring`, `grid`, `digits`) need nothing but this package; `emnist`,
`image_folder` and `tabular` read the user's files from a `data_dir`.
"""

from __future__ import annotations

import importlib

from tasks.base import Task

# Name -> 'module:Class'; modules are imported on first use.
TASKS: dict[str, str] = {
    'ring': 'tasks.mixtures:RingTask',
    'grid': 'tasks.mixtures:GridTask',
    'digits': 'tasks.digits:DigitsTask',
    'emnist': 'tasks.emnist:EmnistTask',
    'image_folder': 'tasks.image_folder:ImageFolderTask',
    'tabular': 'tasks.tabular:TabularTask',
}


def task_class(name: str) -> type[Task]:
  """The class of the task registered under `name`.

  Raises:
    ValueError: If no task has that name.
  """
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}")
  module, _, cls = TASKS[name].partition(':')
  return getattr(importlib.import_module(module), cls)


def get_task(name: str, **kwargs) -> Task:
  """Builds the task registered under `name` in `TASKS`, passing it `kwargs`.

  Raises:
    ValueError: If no task has that name, or an argument is invalid (tasks that read files
      raise a subclass naming the file and the fix).
  """
  return task_class(name)(**kwargs)


def task_from_config(config) -> Task:
  """The task a `tff_gan.run.config.TrainConfig` names, built with the settings it applies to."""
  kwargs = dict(seed=config.seed, model=config.model, width=config.model_width,
                discriminator_width=config.discriminator_width or None)
  if config.task == 'emnist':
    kwargs.update(data_dir=config.data_dir, only_digits=config.only_digits)
  elif config.task == 'image_folder':
    kwargs.update(data_dir=config.data_dir, image_size=config.effective_image_size)
  elif config.task == 'tabular':
    kwargs.update(data_dir=config.data_dir)
  return get_task(config.task, **kwargs)
