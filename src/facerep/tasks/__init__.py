"""Downstream tasks (alignment, parsing, classification, antispoof), built by name: ``build_task(cfg)``."""

from facerep.tasks import alignment, antispoof, classification, parsing  # noqa: F401  (register the tasks)
from facerep.tasks.base import TASKS, Task, TaskDataset, build_task, collate_samples

__all__ = ["TASKS", "Task", "TaskDataset", "build_task", "collate_samples"]
