"""Benchmarks: the `Example` schema, one converter per source format, named tasks and splits."""

from tinystudent.tasks.catalog import TASKS, load_task
from tinystudent.tasks.files import read_file, read_path, seeded_split
from tinystudent.tasks.schema import Example, TaskData, TaskFormatError, data_hash, normalize_split

__all__ = [
    "TASKS",
    "Example",
    "TaskData",
    "TaskFormatError",
    "data_hash",
    "load_task",
    "normalize_split",
    "read_file",
    "read_path",
    "seeded_split",
]
