"""Tasks: a dataset, GAN networks, sample metrics and a renderer behind one interface."""

from __future__ import annotations

from tasks.base import Task
from tasks.digits import DigitsTask
from tasks.mixtures import GridTask, RingTask

TASKS: dict[str, type[Task]] = {'ring': RingTask, 'grid': GridTask, 'digits': DigitsTask}


def get_task(name: str, **kwargs) -> Task:
  """Builds the task registered under `name` in `TASKS`, passing it `kwargs`.

  Raises:
    ValueError: If no task has that name.
  """
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}")
  return TASKS[name](**kwargs)
