"""A `task:<module path>` job never makes a worker import the module it names (issue 15, item 11).

Only tasks the project has imported itself (its apps' `tasks` modules, or modules already imported) are run;
any other `task:` job is dead-lettered as unknown_handler without importing anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

import django
import pytest

import bgjob

from .conftest import wait_for

needs_tasks = pytest.mark.skipif(django.VERSION < (6, 0), reason="django.tasks exists from Django 6.0 on")

SIDE_EFFECT = "tests.django.testapp.import_side_effect"
#: the first line `import this` prints
ZEN = "Beautiful is better than ugly."


def dead_letters(client: bgjob.Client, count: int) -> dict:
    entries = wait_for(lambda: len(found := client.dlq.list()) >= count and found, message=f"{count} dead letters")
    return {e.id: e for e in entries}


@pytest.fixture
def marker(tmp_path: Path, monkeypatch) -> Path:
    """The file tests.django.testapp.import_side_effect appends to when imported (here and in subprocesses)."""
    path = tmp_path / "imported.txt"
    monkeypatch.setenv("BGJOB_TEST_IMPORT_MARKER", str(path))
    assert SIDE_EFFECT not in sys.modules and "this" not in sys.modules
    return path


@needs_tasks
@pytest.mark.django_db(transaction=True)
def test_a_worker_process_imports_no_module_a_task_job_names(worker_process, bgjob_client, marker) -> None:
    from .testapp import tasks

    worker = worker_process(env={"BGJOB_TEST_IMPORT_MARKER": str(marker)})
    payload = {"args": [], "kwargs": {}, "priority": 0, "queue_name": "default", "backend": "default"}
    zen = bgjob_client.send_job("task:this.x", {**payload, "task": "this.x"})
    side = bgjob_client.send_job(f"task:{SIDE_EFFECT}.x", {**payload, "task": f"{SIDE_EFFECT}.x"})
    # a registered task's job type, but a payload naming another module
    smuggled = bgjob_client.send_job("task:tests.django.testapp.tasks.add", {**payload, "task": f"{SIDE_EFFECT}.x"})
    ran = tasks.add.enqueue(2, 3)  # a registered task still runs
    done = wait_for(lambda: (r := tasks.add.get_result(ran.id)).is_finished and r, message="the add task")
    assert done.return_value == 5
    dead = dead_letters(bgjob_client, 3)
    assert (dead[zen].reason, dead[side].reason) == ("unknown_handler", "unknown_handler")
    assert "task:this.x" in dead[zen].error
    assert dead[smuggled].reason == "decode" and "unknown task" in dead[smuggled].error
    assert not marker.exists(), marker.read_text()
    assert ZEN not in worker.stdout and ZEN not in worker.stderr
    assert "no task for job type 'task:this.x'" in worker.stderr


@needs_tasks
def test_a_worker_thread_dead_letters_unknown_task_jobs_without_importing(bgjob_client, run_worker, marker) -> None:
    from bgjob_django.registry import registry

    jobs = [bgjob_client.send_job(t, {}) for t in ("task:this.x", f"task:{SIDE_EFFECT}.x", "task:os.system")]
    run_worker()
    dead = dead_letters(bgjob_client, 3)
    assert [dead[j].reason for j in jobs] == ["unknown_handler"] * 3
    assert "this" not in sys.modules and SIDE_EFFECT not in sys.modules and not marker.exists()
    # unknown job types are not remembered: publishers cannot grow the worker's registry
    assert not {"task:this.x", f"task:{SIDE_EFFECT}.x", "task:os.system"} & set(registry._resolved)


@needs_tasks
def test_get_result_looks_tasks_up_without_importing_them(bgjob_client, marker) -> None:
    from django.tasks import default_task_backend
    from django.tasks.exceptions import InvalidTask

    from .testapp import tasks

    result = tasks.add.enqueue(1, 2)
    store = default_task_backend.store()
    record = store.get(result.id)
    store.put(result.id, {**record, "task": f"{SIDE_EFFECT}.x"})
    with pytest.raises(InvalidTask, match="unknown task"):
        default_task_backend.get_result(result.id)
    store.put(result.id, {**record, "task": "bgjob_django.tasks.discover_tasks"})  # imported, but no Task
    with pytest.raises(InvalidTask, match=r"not a django\.tasks Task"):
        default_task_backend.get_result(result.id)
    assert SIDE_EFFECT not in sys.modules and not marker.exists()
    store.put(result.id, record)
    assert default_task_backend.get_result(result.id).task.func is tasks.add.func


def test_a_resolver_is_asked_again_for_a_job_type_it_did_not_know() -> None:
    from bgjob_django.registry import Registry

    mux, known, asked = Registry(), {}, []

    def resolve(rest: str):
        asked.append(rest)
        return known.get(rest)

    mux.add_resolver("x:", resolve)
    assert mux.get("x:a") is None and mux.get("x:a") is None
    known["a"] = handler = lambda job: bgjob.Complete()
    assert mux.get("x:a") is handler and mux.get("x:a") is handler
    assert asked == ["a", "a", "a"] and list(mux._resolved) == ["x:a"]
