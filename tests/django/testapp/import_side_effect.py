"""A module that must never be imported by a worker because a job named it (test_task_resolution.py).

Importing it appends a line to the file named by BGJOB_TEST_IMPORT_MARKER (when set).
"""

import os

_marker = os.environ.get("BGJOB_TEST_IMPORT_MARKER")
if _marker:
    with open(_marker, "a") as f:
        f.write(f"imported in pid {os.getpid()}\n")


def x() -> None:
    """Not a task: a job of type task:tests.django.testapp.import_side_effect.x must not even import it."""
