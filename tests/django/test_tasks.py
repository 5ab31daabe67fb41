"""Django's tasks framework (django.tasks, Django >= 6.0) on bgjob: BgjobBackend end to end."""

from __future__ import annotations

import re
from datetime import timedelta

import django
import pytest

from ..conftest import wait_until

pytestmark = pytest.mark.skipif(django.VERSION < (6, 0), reason="django.tasks exists from Django 6.0 on")

if django.VERSION >= (6, 0):
    from django.tasks import TaskResultStatus, default_task_backend, task, task_backends
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils import timezone

    from bgjob.job_results import MAX_ERRORS, MAX_TRACEBACK_BYTES, ResultTooLarge
    from bgjob_django.tasks import BgjobBackend

    from .testapp import tasks

#: attempts of returns_two_mib, as it ran in this process's workers.
TWO_MIB_RUNS: list[int] = []

if django.VERSION >= (6, 0):

    @task(takes_context=True)
    def returns_two_mib(context) -> str:
        TWO_MIB_RUNS.append(context.attempt)
        return "x" * 2 * 1024 * 1024


#: attempts of returns_a_set, as it ran in this process's workers.
SET_RUNS: list[int] = []

if django.VERSION >= (6, 0):

    @task(takes_context=True)
    def returns_a_set(context) -> set:
        SET_RUNS.append(context.attempt)
        return {1, 2}


def finished(result_id: str, task=None):
    """The TaskResult once it is SUCCESSFUL or FAILED."""
    get = task.get_result if task is not None else default_task_backend.get_result
    return wait_until(lambda: (r := get(result_id)).is_finished and r, message=f"task {result_id} to finish")


@pytest.fixture
def signals():
    """The task signals received in this process, as (signal name, status) pairs."""
    seen = []

    def receiver(name):
        return lambda sender, task_result, **kwargs: seen.append((name, task_result.status))

    receivers = {s: receiver(n) for s, n in ((task_enqueued, "enqueued"), (task_started, "started"),
                                            (task_finished, "finished"))}  # fmt: skip
    for s, r in receivers.items():
        s.connect(r)
    yield seen
    for s, r in receivers.items():
        s.disconnect(r)


def test_the_backend_supports_defer_results_priority_and_async() -> None:
    backend = task_backends["default"]
    assert isinstance(backend, BgjobBackend)
    assert backend.supports_defer and backend.supports_get_result and backend.supports_priority
    assert backend.supports_async_task
    assert backend.queue_for(tasks.add) == "default" and backend.queue_for(tasks.urgent) == "default-high"
    assert backend.queue_for(tasks.add.using(priority=-5)) == "default-low"
    assert backend.bgjob_queues() == ["default", "default-high", "default-low"]


def test_enqueue_then_get_result_round_trip(bgjob_client, run_worker, signals) -> None:
    run_worker()
    before = timezone.now()
    result = tasks.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY and result.args == [2, 3] and result.enqueued_at >= before
    done = finished(result.id, tasks.add)
    assert done.status == TaskResultStatus.SUCCESSFUL and done.return_value == 5
    assert done.enqueued_at <= done.started_at <= done.last_attempted_at <= done.finished_at
    assert done.errors == [] and len(done.worker_ids) == 1 and done.attempts == 1
    assert done.worker_ids[0] in {w.id for w in bgjob_client.workers()}  # the worker directory's id
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 5
    assert signals == [("enqueued", TaskResultStatus.READY), ("started", TaskResultStatus.RUNNING),
                       ("finished", TaskResultStatus.SUCCESSFUL)]  # fmt: skip


def test_a_failing_task_is_failed_with_its_error_and_dead_lettered(bgjob_client, run_worker, signals) -> None:
    run_worker()
    result = tasks.always_fails.enqueue("nope")
    done = finished(result.id)
    assert done.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in done.errors] == ["builtins.ValueError"] * 2  # MAX_ATTEMPTS 2
    assert done.errors[0].exception_class is ValueError and "ValueError: nope" in done.errors[-1].traceback
    assert done.attempts == 2
    with pytest.raises(ValueError, match="Task failed"):
        _ = done.return_value
    entry = wait_until(lambda: bgjob_client.dlq.list(), message="the dead letter")[0]
    assert entry.id == result.id and entry.reason == "task"
    assert entry.type == "task:tests.django.testapp.tasks.always_fails"
    assert ("finished", TaskResultStatus.FAILED) in signals


def test_a_task_retried_after_an_error_succeeds_on_the_next_attempt(bgjob_client, run_worker) -> None:
    run_worker()
    result = tasks.fails_first_time.enqueue()
    done = finished(result.id)
    assert done.status == TaskResultStatus.SUCCESSFUL and done.return_value == 2 and done.attempts == 2
    assert [e.exception_class_path for e in done.errors] == ["builtins.RuntimeError"]


def test_retrying_a_failed_task_from_the_dlq_runs_it_again(bgjob_client, run_worker) -> None:
    run_worker()
    result = tasks.always_fails.enqueue("again")
    finished(result.id)
    wait_until(lambda: bgjob_client.dlq.count() == 1, message="the dead letter")
    bgjob_client.dlq.retry(result.id)  # a fresh set of MAX_ATTEMPTS (2) attempts, on the same result
    again = wait_until(lambda: (r := default_task_backend.get_result(result.id)).status == TaskResultStatus.FAILED
                       and len(r.errors) == 4 and r, message="two more failed attempts")  # fmt: skip
    assert again.attempts == 4
    # The result is saved FAILED when the last attempt's handler returns; the dead letter is published after, by the
    # settle path, so it may arrive a moment later.
    wait_until(lambda: bgjob_client.dlq.count() == 1, message="the second dead letter, in place of the first")


def test_takes_context_sees_the_attempt_and_the_result_id(bgjob_client, run_worker) -> None:
    run_worker()
    result = tasks.attempt_number.enqueue("ctx")
    assert finished(result.id).return_value == {"label": "ctx", "attempt": 1, "result_id": result.id}


def test_async_task_functions_run_too(bgjob_client, run_worker) -> None:
    run_worker()
    assert finished(tasks.async_add.enqueue(20, 22).id).return_value == 42


def test_run_after_defers_the_task(bgjob_client, run_worker) -> None:
    run_worker()
    run_after = timezone.now() + timedelta(seconds=2)
    result = tasks.add.using(run_after=run_after).enqueue(1, 1)
    assert bgjob_client.queue_stats().scheduled == 1
    done = finished(result.id)
    assert done.started_at >= run_after and done.return_value == 2
    assert done.task.run_after == run_after


def test_priority_picks_the_band_queue_and_a_worker_on_it_runs_it(bgjob_client, run_worker) -> None:
    result = tasks.urgent.enqueue()
    assert bgjob_client.queue_stats("default-high").pending == 1
    run_worker(queues=("default-high",))
    done = finished(result.id)
    assert done.return_value == "urgent" and done.task.priority == 50


def test_unknown_result_ids_and_invalid_tasks_are_refused(bgjob_client) -> None:
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result("0" * 32)
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result("not/a key")
    with pytest.raises(InvalidTask, match=r"not valid for backend"):
        tasks.add.using(queue_name="Mail Queue").enqueue(1, 2)
    with pytest.raises(TypeError):
        tasks.add.enqueue(object(), 1)


@pytest.mark.django_db(transaction=True)
def test_worker_process_runs_tasks_and_serves_the_priority_queues(worker_process, bgjob_client) -> None:
    worker = worker_process()
    assert "queues default, default-high, default-low" in worker.stdout
    results = [tasks.add.enqueue(1, 2), tasks.urgent.enqueue(), tasks.add.using(priority=-10).enqueue(3, 4)]
    assert [finished(r.id).return_value for r in results] == [3, "urgent", 7]


@pytest.mark.django_db  # the checks of a managed model with a JSONField (the outbox) ask the database
def test_a_misconfigured_backend_is_a_check_error(settings) -> None:
    import io

    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    settings.TASKS = {"default": {"BACKEND": "bgjob_django.tasks.BgjobBackend",
                                  "OPTIONS": {"PRIORITY_QUEUES": {"high": [1, 100], "urgent": [50, 60]},
                                              "MAX_ATTEMPTS": 20}}}  # fmt: skip
    with pytest.raises(SystemCheckError) as info:
        call_command("check", stdout=io.StringIO(), stderr=io.StringIO())
    assert "bgjob_django.E020" in str(info.value) and "band 'urgent' overlaps another band" in str(info.value)
    assert "bgjob_django.E022" in str(info.value) and "raise BGJOB['MAX_ATTEMPTS']" in str(info.value)


def test_a_task_returning_a_value_too_large_to_store_runs_once_and_fails_with_a_clear_error(
    bgjob_client, run_worker, signals
) -> None:
    """The value is refused where it is stored: the result FAILED and the job dead-lettered at once, by the same
    rule as a value JSON cannot encode (no retry repeats the task's side effects)."""
    TWO_MIB_RUNS.clear()
    run_worker()
    result = returns_two_mib.enqueue()
    done = finished(result.id)
    assert done.status == TaskResultStatus.FAILED and done.finished_at is not None
    [error] = done.errors
    assert error.exception_class is ResultTooLarge
    assert re.search(r"return value too large \(2097154 bytes; the limit is \d+\)", error.traceback)
    with pytest.raises(ValueError, match="Task failed"):
        _ = done.return_value
    entry = wait_until(lambda: bgjob_client.dlq.list(), message="the dead letter")[0]
    assert entry.id == result.id and entry.reason == "task" and "returned a value that cannot be stored" in entry.error
    assert TWO_MIB_RUNS == [1] and done.attempts == 1
    assert signals[-1] == ("finished", TaskResultStatus.FAILED)


def test_task_result_records_are_bounded_like_bgjob_results(bgjob_client) -> None:
    result = tasks.add.enqueue(1, 2)  # no worker: the READY record is all there is
    store = default_task_backend.store()
    record = store.get(result.id)
    record["errors"] = [{"exception_class_path": "builtins.ValueError", "traceback": f"{n} " + "t" * 300_000}
                        for n in range(MAX_ERRORS + 5)]  # fmt: skip
    store.put(result.id, record)  # 4.5 MB unbounded
    stored = default_task_backend.get_result(result.id)
    assert len(stored.errors) == MAX_ERRORS
    assert all(len(e.traceback.encode()) <= MAX_TRACEBACK_BYTES and e.traceback.startswith("[... ")
               for e in stored.errors)  # fmt: skip
    with pytest.raises(ResultTooLarge, match=r"return value too large \(2097154 bytes; the limit is \d+\)"):
        store.put(result.id, {**store.get(result.id), "return_value": "x" * 2 * 1024 * 1024})
    assert default_task_backend.get_result(result.id).status == TaskResultStatus.READY  # nothing was written


def test_a_task_returning_a_value_json_cannot_encode_runs_once_fails_and_is_dead_lettered(
    bgjob_client, run_worker, signals, monkeypatch
) -> None:
    """A value that is not JSON never becomes JSON: no retry repeats the task's side effects."""
    monkeypatch.setattr(task_backends["default"], "max_attempts", 3)  # BGJOB['MAX_ATTEMPTS'] is 3 too
    SET_RUNS.clear()
    run_worker()
    result = returns_a_set.enqueue()
    done = finished(result.id)
    assert done.status == TaskResultStatus.FAILED and done.finished_at is not None
    [error] = done.errors
    assert error.exception_class is TypeError
    assert "returned a value JSON cannot encode (builtins.set)" in error.traceback
    entry = wait_until(lambda: bgjob_client.dlq.list(), message="the dead letter")[0]
    assert entry.id == result.id and entry.reason == "task" and "builtins.set" in entry.error
    assert SET_RUNS == [1] and done.attempts == 1
    assert signals[-1] == ("finished", TaskResultStatus.FAILED)
