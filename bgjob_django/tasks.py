"""`BgjobBackend`: Django's tasks framework (`django.tasks`, Django >= 6.0) running on bgjob.

```python
TASKS = {"default": {"BACKEND": "bgjob_django.tasks.BgjobBackend",
                     "QUEUES": ["default"], "OPTIONS": {...}}}
```
A task is a bgjob job of type `task:<module path of the task function>` on a bgjob queue derived from
its `queue_name` and `priority`. OPTIONS:

- `PRIORITY_QUEUES` (default `{"high": [1, 100], "low": [-100, -1]}`): a task whose priority falls in a
  band goes to queue `<queue_name>-<band>` (`default-high`), any other to `<queue_name>`. Each bgjob queue
  has its own workers' slots, so a flood of low-priority tasks never delays high-priority ones;
  `manage.py bgjob_worker` serves all of them unless given `--queue`. `{}` puts every task on its
  `queue_name`.
- `MAX_ATTEMPTS` (default 1): runs before a raising task is FAILED and dead-lettered (reason `task`);
  between attempts its result is READY again, with the error recorded. Retrying it from the DLQ runs it
  again and updates the same result.
- `RESULT_TTL` (default 7 days): seconds results are kept (JetStream KV bucket `<PREFIX>_TASKS`).

Which tasks a worker runs: only tasks it knows without importing anything a job names. A job's type (and its
payload) come from whoever can publish to the queue, so `task:<module path>` is never imported: the task
resolves only if its module is already imported in the process, after bgjob_django imported every installed
app's `tasks` module (once, when a task is first looked up). Define tasks in an app's `tasks.py`, or import
their module from one (or from an AppConfig.ready()); any other `task:` job is dead-lettered with reason
unknown_handler. `get_result` finds tasks by the same rule.

`enqueue` honours BGJOB["OUTBOX"] and BGJOB["ON_COMMIT"] as `bgjob_django.send_job` does: the task's job is an
outbox row in the current transaction (or is published at its commit), so a task enqueued in a transaction
that rolls back sends nothing. Its READY result is then written at commit, unless a worker wrote one first
(until then, and if NATS is unavailable at commit, `get_result` may not find it; the worker records it when the
task runs).
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from collections.abc import Mapping
from datetime import datetime
from typing import Any

try:
    from django.tasks import Task, TaskContext, TaskResult, TaskResultStatus
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY, TaskError
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
except ImportError as exc:  # pragma: no cover - Django < 6.0
    raise ImportError("bgjob_django.tasks needs Django >= 6.0 (django.tasks); the rest of bgjob_django works "
                      "without it") from exc
from django.core import checks
from django.db import transaction
from django.utils import timezone
from django.utils.json import normalize_json
from django.utils.module_loading import autodiscover_modules

import bgjob
from bgjob import job as jobmod
from bgjob.errors import ResultTooLarge, describe_error

from .conf import get_client, get_config, raw_setting
from .producer import send_job
from .results import ResultStore
from .worker_ids import worker_id

log = logging.getLogger("bgjob_django.tasks")

#: Job types of django.tasks tasks start with this, followed by the task function's module path. Workers find
#: their handlers with `task_handler`, added to their registry as its resolver for this prefix (worker.py).
TASK_PREFIX = "task:"

DEFAULT_PRIORITY_QUEUES = {"high": (1, TASK_MAX_PRIORITY), "low": (TASK_MIN_PRIORITY, -1)}
DLQ_REASON = "task"


class BgjobBackend(BaseTaskBackend):
    """Enqueues tasks as bgjob jobs; `manage.py bgjob_worker` runs them; results live in JetStream KV."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: Mapping[str, Any]) -> None:
        super().__init__(alias, dict(params))
        self._problems: list[str] = []
        self.priority_queues = self._parse_bands(self.options.get("PRIORITY_QUEUES", DEFAULT_PRIORITY_QUEUES))
        self.max_attempts = self._positive("MAX_ATTEMPTS", 1, int)
        self.result_ttl = self._positive("RESULT_TTL", 7 * 24 * 3600.0, (int, float))
        unknown = set(self.options) - {"PRIORITY_QUEUES", "MAX_ATTEMPTS", "RESULT_TTL"}
        if unknown:
            known = "PRIORITY_QUEUES, MAX_ATTEMPTS, RESULT_TTL"
            self._problems.append(f"unknown OPTIONS {sorted(unknown)}; known: {known}")

    # -- configuration -------------------------------------------------------------------------------
    def _positive(self, key: str, default: Any, kind: Any) -> Any:
        value = self.options.get(key, default)
        if not isinstance(value, kind) or isinstance(value, bool) or value < 1:
            self._problems.append(f"OPTIONS[{key!r}] must be a number >= 1, got {value!r}")
            return default
        return value

    def _parse_bands(self, raw: Any) -> dict[str, tuple[int, int]]:
        if not isinstance(raw, Mapping):
            self._problems.append("OPTIONS['PRIORITY_QUEUES'] must be a dict of band name -> [min, max] priority")
            return {}
        bands: dict[str, tuple[int, int]] = {}
        for name, bounds in raw.items():
            ok = isinstance(bounds, (list, tuple)) and len(bounds) == 2 and all(isinstance(b, int) for b in bounds)
            if not ok or not TASK_MIN_PRIORITY <= bounds[0] <= bounds[1] <= TASK_MAX_PRIORITY:
                self._problems.append(f"OPTIONS['PRIORITY_QUEUES'][{name!r}] must be [min, max] with "
                                      f"{TASK_MIN_PRIORITY} <= min <= max <= {TASK_MAX_PRIORITY}")  # fmt: skip
            elif not _valid_queue(f"default-{name}"):
                self._problems.append(f"OPTIONS['PRIORITY_QUEUES'] band {name!r} is not usable in a queue name "
                                      "(lower-case letters, digits, '_' and '-')")  # fmt: skip
            elif any(lo <= bounds[1] and bounds[0] <= hi for lo, hi in bands.values()):
                self._problems.append(f"OPTIONS['PRIORITY_QUEUES'] band {name!r} overlaps another band")
            else:
                bands[name] = (bounds[0], bounds[1])
        return bands

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        found: list[checks.CheckMessage] = [
            checks.Error(f"TASKS[{self.alias!r}]: {p}", id="bgjob_django.E020") for p in self._problems
        ]
        for queue in self.bgjob_queues():
            if not _valid_queue(queue):
                found.append(checks.Error(
                    f"TASKS[{self.alias!r}]: queue {queue!r} is not a valid bgjob queue name",
                    hint="use lower-case letters, digits, '_' and '-' (max 64) in QUEUES", id="bgjob_django.E021",
                ))  # fmt: skip
        raw = raw_setting()
        max_attempts = raw.get("MAX_ATTEMPTS", 10) if isinstance(raw, Mapping) else None
        if isinstance(max_attempts, int) and self.max_attempts > max_attempts:
            found.append(checks.Error(
                f"TASKS[{self.alias!r}] OPTIONS['MAX_ATTEMPTS'] is {self.max_attempts} but workers dead-letter "
                f"after BGJOB['MAX_ATTEMPTS'] = {max_attempts}", hint="raise BGJOB['MAX_ATTEMPTS']",
                id="bgjob_django.E022",
            ))  # fmt: skip
        return found

    def queue_for(self, task: Task[Any, Any]) -> str:
        """The bgjob queue of a task: its queue_name, suffixed by its priority band if it has one."""
        for band, (lo, hi) in self.priority_queues.items():
            if lo <= task.priority <= hi:
                return f"{task.queue_name}-{band}"
        return task.queue_name

    def bgjob_queues(self) -> list[str]:
        """Every bgjob queue this backend's tasks can go to (none if any queue_name is allowed)."""
        return [q for name in sorted(self.queues) for q in [name, *(f"{name}-{b}" for b in self.priority_queues)]]

    def validate_task(self, task: Task[Any, Any]) -> None:
        super().validate_task(task)
        if self._problems:
            raise InvalidTask(f"TASKS[{self.alias!r}] is misconfigured: {self._problems[0]}")
        if not _valid_queue(self.queue_for(task)):
            raise InvalidTask(f"queue_name {task.queue_name!r} cannot be a bgjob queue: use lower-case letters, "
                              "digits, '_' and '-' (max 64)")  # fmt: skip

    def store(self) -> ResultStore:
        return ResultStore(get_client(), self.result_ttl)

    # -- the API -------------------------------------------------------------------------------------
    def enqueue(self, task: Task[Any, Any], args: Any, kwargs: Any) -> TaskResult[Any, Any]:
        self.validate_task(task)
        result: TaskResult[Any, Any] = TaskResult(
            task=task, id=jobmod.new_job_id(), status=TaskResultStatus.READY, enqueued_at=timezone.now(),
            started_at=None, finished_at=None, last_attempted_at=None, args=list(args), kwargs=dict(kwargs),
            backend=self.alias, errors=[], worker_ids=[],
        )  # fmt: skip
        store = self.store()
        config = get_config()
        deferred = config.outbox or config.on_commit
        if not deferred:
            store.put(result.id, _record(result))
        run_after = task.run_after
        if run_after is not None and timezone.is_naive(run_after):
            run_after = timezone.make_aware(run_after)
        arg = {"task": task.module_path, "args": result.args, "kwargs": result.kwargs, "priority": task.priority,
               "queue_name": task.queue_name, "backend": self.alias}  # fmt: skip
        job_type, queue = TASK_PREFIX + task.module_path, self.queue_for(task)
        if deferred:  # an outbox row in this transaction, or a publish at its commit (InvalidJob now)
            send_job(job_type, arg, queue=queue, at=run_after, job_id=result.id)
            transaction.on_commit(lambda: _record_enqueued(store, result), robust=True)
        else:
            try:
                send_job(job_type, arg, queue=queue, at=run_after, job_id=result.id, on_commit=False, outbox=False)
            except BaseException:
                _forget(store, result.id)
                raise
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult[Any, Any]:
        record = self.store().get(result_id)
        if record is None:
            raise TaskResultDoesNotExist(result_id)
        return _task_result(result_id, record)


# -- records -----------------------------------------------------------------------------------------
def _record(result: TaskResult[Any, Any], return_value: Any = None) -> dict[str, Any]:
    task = result.task
    return {
        "task": task.module_path, "priority": task.priority, "queue_name": task.queue_name, "backend": result.backend,
        "run_after": _time(task.run_after), "status": str(result.status), "enqueued_at": _time(result.enqueued_at),
        "started_at": _time(result.started_at), "finished_at": _time(result.finished_at),
        "last_attempted_at": _time(result.last_attempted_at), "args": result.args, "kwargs": result.kwargs,
        "errors": [{"exception_class_path": e.exception_class_path, "traceback": e.traceback} for e in result.errors],
        "worker_ids": list(result.worker_ids), "return_value": return_value,
    }  # fmt: skip


def _task_result(result_id: str, record: Mapping[str, Any]) -> TaskResult[Any, Any]:
    task = _load_task(record["task"]).using(
        priority=record["priority"], queue_name=record["queue_name"], backend=record["backend"],
        run_after=_parse_time(record.get("run_after")),
    )  # fmt: skip
    result: TaskResult[Any, Any] = TaskResult(
        task=task, id=result_id, status=TaskResultStatus(record["status"]),
        enqueued_at=_parse_time(record["enqueued_at"]), started_at=_parse_time(record["started_at"]),
        finished_at=_parse_time(record["finished_at"]), last_attempted_at=_parse_time(record["last_attempted_at"]),
        args=record["args"], kwargs=record["kwargs"], backend=record["backend"],
        errors=[TaskError(**e) for e in record["errors"]], worker_ids=list(record["worker_ids"]),
    )  # fmt: skip
    object.__setattr__(result, "_return_value", record.get("return_value"))
    return result


_discovered = False
_discover_lock = threading.Lock()


def discover_tasks() -> None:
    """Import every installed app's `tasks` module (once per process), so their tasks can be found.

    The modules imported are the project's own (INSTALLED_APPS), never ones a job names. Raises what importing
    one of them raises (and tries again at the next call).
    """
    global _discovered
    if _discovered:
        return
    with _discover_lock:
        if not _discovered:
            autodiscover_modules("tasks")
            _discovered = True


def _load_task(path: str) -> Task[Any, Any]:
    """The Task at module path `path`, found WITHOUT importing anything `path` names (see the module docstring).

    Raises InvalidTask when the module is not imported (after `discover_tasks`), or the name there is no Task.
    """
    if not isinstance(path, str):
        raise InvalidTask(f"a task path must be a str, got {type(path).__name__}")
    try:
        discover_tasks()
    except Exception as exc:  # a project tasks module that fails to import: no task is known
        raise InvalidTask(f"cannot look up task {path!r}: importing the apps' tasks modules failed: "
                          f"{describe_error(exc)}") from exc  # fmt: skip
    module_name, _, name = path.rpartition(".")
    module = sys.modules.get(module_name) if module_name else None
    if module is None:
        raise InvalidTask(f"unknown task {path!r}: its module is not imported by the project (tasks are looked "
                          "up, never imported: define them in an installed app's tasks module)")  # fmt: skip
    # vars(), not getattr(): a module's __getattr__ (PEP 562) could import what the path names.
    task = vars(module).get(name)
    if not isinstance(task, Task):
        raise InvalidTask(f"{path!r} is not a django.tasks Task (decorate the function with @task)")
    return task


def _record_enqueued(store: ResultStore, result: TaskResult[Any, Any]) -> None:
    """The READY record of a task enqueued in a transaction, written at its commit unless a worker wrote one."""
    try:
        store.add(result.id, _record(result))
    except Exception as exc:  # noqa: BLE001 - the job is sent; the worker records its result when it runs
        log.warning("could not record task %s (result %s) as READY at commit: %s; its worker will record it",
                    result.task.module_path, result.id, describe_error(exc))  # fmt: skip


def _forget(store: ResultStore, result_id: str) -> None:
    try:
        store.delete(result_id)
    except Exception as exc:  # noqa: BLE001 - the record expires with RESULT_TTL anyway
        log.debug("could not delete the result of unsent task %s: %r", result_id, exc)


def _time(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _valid_queue(queue: str) -> bool:
    try:
        jobmod.validate_queue(queue)
    except bgjob.InvalidJob:
        return False
    return True


# -- the worker side ---------------------------------------------------------------------------------
def task_handler(path: str) -> Any:
    """The bgjob handler running the task at module path `path` (a job type without TASK_PREFIX).

    The resolver of TASK_PREFIX in a worker's registry (`registry.add_resolver(TASK_PREFIX, task_handler)`).
    Returns None (the worker dead-letters the job, reason unknown_handler) unless `path` is a task the project
    has imported (see the module docstring): nothing named by the job type is ever imported.
    """
    try:
        _load_task(path)
    except InvalidTask as exc:
        log.warning("no task for job type %r: %s", TASK_PREFIX + path, exc)
        return None
    return run_task


def run_task(job: bgjob.Job) -> bgjob.Result:
    """Run one attempt of a task job, keeping its TaskResult up to date and sending the task signals."""
    payload = job.arg
    try:
        record = _stored_or_new(job, payload)
        result = _task_result(job.id, record)
    except (InvalidTask, KeyError, TypeError, ValueError) as exc:
        return bgjob.MoveToDlq(f"cannot run task: {exc}", reason="decode")
    task = result.task
    backend = task.get_backend()
    if not isinstance(backend, BgjobBackend):
        return bgjob.MoveToDlq(f"task backend {task.backend!r} is not a BgjobBackend", reason="unknown_handler")
    store = backend.store()
    now = timezone.now()
    _set(result, status=TaskResultStatus.RUNNING, started_at=result.started_at or now, last_attempted_at=now)
    result.worker_ids.append(worker_id(job.queue))
    store.put(job.id, _record(result))
    sender = type(backend)
    task_started.send(sender, task_result=result)
    try:
        if task.takes_context:
            value = task.call(TaskContext(task_result=result), *result.args, **result.kwargs)
        else:
            value = task.call(*result.args, **result.kwargs)
    except Exception as exc:  # noqa: BLE001 - the task's failure goes into its result, then a retry or the DLQ
        result.errors.append(TaskError(exception_class_path=_class_path(type(exc)),
                                       traceback="".join(traceback.format_exception(exc))))  # fmt: skip
        if job.attempt < min(backend.max_attempts, job.max_attempts or backend.max_attempts):
            _set(result, status=TaskResultStatus.READY)
            _save(store, job, result)
            return bgjob.Retry(error=exc, traceback=result.errors[-1].traceback)
        _set(result, status=TaskResultStatus.FAILED, finished_at=timezone.now())
        _save(store, job, result)
        task_finished.send(sender, task_result=result)  # inside the except: Django logs it with the traceback
        return bgjob.MoveToDlq(exc, reason=DLQ_REASON)
    try:
        value = normalize_json(value)
    except (TypeError, ValueError) as exc:
        # The task ran and its value can never be stored: a retry would only repeat its side effects.
        refusal = TypeError(f"task {task.module_path} returned a value JSON cannot encode "
                            f"({type(value).__module__}.{type(value).__qualname__}): {exc}")  # fmt: skip
        result.errors.append(TaskError(exception_class_path=_class_path(TypeError),
                                       traceback="".join(traceback.format_exception_only(refusal))))  # fmt: skip
        _set(result, status=TaskResultStatus.FAILED, finished_at=timezone.now())
        _save(store, job, result)
        log.error("%s; the result is FAILED", refusal)
        task_finished.send(sender, task_result=result)
        return bgjob.MoveToDlq(refusal, reason=DLQ_REASON)
    _set(result, status=TaskResultStatus.SUCCESSFUL, finished_at=timezone.now(), _return_value=value)
    refused = _save(store, job, result, value)
    if refused is not None:
        # The task ran and its value can never be stored: as for a value JSON cannot encode, the result is
        # FAILED and the job dead-lettered at once (an operator sees it; a retry would repeat its side effects).
        result.errors.append(TaskError(exception_class_path=_class_path(ResultTooLarge),
                                       traceback="".join(traceback.format_exception_only(refused))))  # fmt: skip
        _set(result, status=TaskResultStatus.FAILED, _return_value=None)
        _save(store, job, result)
        log.error("task %s (result %s) returned a value that cannot be stored: %s; the result is FAILED",
                  task.module_path, job.id, refused)  # fmt: skip
        task_finished.send(sender, task_result=result)
        return bgjob.MoveToDlq(f"task {task.module_path} returned a value that cannot be stored: {refused}",
                               reason=DLQ_REASON)  # fmt: skip
    task_finished.send(sender, task_result=result)
    return bgjob.Complete(value)


def _save(store: ResultStore, job: bgjob.Job, result: TaskResult[Any, Any], value: Any = None) -> ResultTooLarge | None:
    """Store the result of an attempt that has run; never raises, so a failed write never runs the task again.

    Returns the ResultTooLarge refusing `value` (the caller records the failure instead); any other
    failure to write is logged with the task, the result id and the reason, and the job goes on.
    """
    try:
        store.put(job.id, _record(result, value))
    except ResultTooLarge as exc:
        if exc.what == "return value" and value is not None:
            return exc
        reason: BaseException = exc
    except Exception as exc:  # noqa: BLE001 - the task ran; its side effects must not be repeated
        reason = exc
    else:
        return None
    log.error("could not store the %s result %s of task %s: %s", result.status, job.id, result.task.module_path,
              describe_error(reason))  # fmt: skip
    return None


def _class_path(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def _stored_or_new(job: bgjob.Job, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The task's result record; rebuilt from the job if it expired or was never stored."""
    backend = _load_backend(payload["backend"])
    record = backend.store().get(job.id) if backend is not None else None
    if record is not None:
        return record
    return {
        "task": payload["task"], "priority": payload["priority"], "queue_name": payload["queue_name"],
        "backend": payload["backend"], "run_after": None, "status": str(TaskResultStatus.READY),
        "enqueued_at": _time(job.enqueued_at), "started_at": None, "finished_at": None, "last_attempted_at": None,
        "args": payload["args"], "kwargs": payload["kwargs"], "errors": [], "worker_ids": [], "return_value": None,
    }  # fmt: skip


def _load_backend(alias: str) -> BgjobBackend | None:
    from django.tasks import task_backends

    try:
        backend = task_backends[alias]
    except Exception:  # noqa: BLE001 - InvalidTaskBackend: reported by the caller through the Task
        return None
    return backend if isinstance(backend, BgjobBackend) else None


def _set(result: TaskResult[Any, Any], **changes: Any) -> None:
    for name, value in changes.items():
        object.__setattr__(result, name, value)
