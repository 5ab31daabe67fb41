"""Time limits: a handler still running at its limit gets `bgjob.TimeLimitExceeded` raised inside it.

Celery's `time_limit`, Dramatiq's TimeLimit middleware and choria asyncjobs' MaxRunTime, for both pools:

- thread pool: one timer thread per worker (a real OS thread, started by the first limited job) keeps the
  deadlines of running handlers in a heap and, at a deadline, sets `TimeLimitExceeded` as an asynchronous
  exception in the handler's thread (`PyThreadState_SetAsyncExc`). CPython delivers it between two bytecodes:
  a thread blocked in C code (`time.sleep(100)`, a socket read without a timeout, a lock) gets it only when that
  call returns; a loop of short calls (`while True: time.sleep(0.1)`) is stopped at its next iteration.
- gevent pool: a `gevent.Timeout` on the hub's timers throws `TimeLimitExceeded` into the handler's greenlet at
  its next switch; a greenlet that never yields (CPU-bound code, a blocking call gevent does not patch) blocks
  the whole hub and cannot be interrupted.

Arming and disarming cost a lock and a heap push per job, no thread per job. A run is armed, then disarmed under
the same lock the timer fires under: the timer raises only in a handler that is still armed, and a disarm that
finds the exception set but not yet delivered (the handler returned just as its limit passed) takes it back, so
it never reaches the pool's loop or the thread's next job.

A handler that has not stopped `report_after` seconds after its limit is reported (a warning naming the job and
`on_internal_error`). Its slot stays busy and its lease is kept (heartbeats go on while it runs, so it is not
redelivered to run twice at once): an operator restarts the worker, then it is redelivered after `ack_wait`.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import TimeLimitExceeded
from ..runtime import original

if TYPE_CHECKING:
    import asyncio

    from ..hooks import HookSet
    from ..job import Job
    from ..result import Result

log = logging.getLogger("bgjob.worker")

#: seconds after its limit a handler that has not stopped is reported as one that cannot be interrupted.
REPORT_AFTER = 5.0

_ARMED, _FIRED, _REPORTED, _DONE = range(4)
_FIRE, _REPORT = 0, 1
#: heap entries of finished runs tolerated before the heap is rebuilt without them.
_STALE_LIMIT = 1024

Report = Callable[[str, "Job"], None]


def _log_report(text: str, job: Job) -> None:
    log.warning("%s", text, extra=job_log_context(job))


def job_log_context(job: Job) -> dict[str, Any]:
    """The log fields of `job` for lines written outside its own thread (bgjob.logs picks them up)."""
    return {"job_id": job.id, "job_type": job.type, "request_id": job.request_id}


def loop_reporter(loop: asyncio.AbstractEventLoop, hooks: HookSet) -> Report:
    """A `report` that logs and calls `on_internal_error` on the worker's event-loop thread (where hooks of that
    kind run, and where a gevent process's log records are handled safely), from the timer thread."""

    def on_loop(text: str, job: Job) -> None:
        _log_report(text, job)
        hooks.call("on_internal_error", text)

    def report(text: str, job: Job) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(on_loop, text, job)

    return report


class _Run:
    """One limited handler call: who runs it, until when, and how far its limit went."""

    __slots__ = ("deadline", "ident", "job", "seconds", "state")

    def __init__(self, job: Job, seconds: float, ident: int, deadline: float) -> None:
        self.job, self.seconds, self.ident, self.deadline = job, seconds, ident, deadline
        self.state = _ARMED


class TimeLimits:
    """Runs handlers under a time limit (seconds); one timer thread serves every run of the worker.

    Parameters:
        report: called as `report(text, job)` in the timer thread when a handler has not stopped `report_after`
            seconds after its limit; it must be quick and thread-safe (the worker's hands the text to its event
            loop: `loop_reporter`). Default: a warning in the log.
        report_after: seconds, > 0 (None: `REPORT_AFTER`).

    Use `ThreadTimeLimits` or `GeventTimeLimits` (`make_time_limits` picks the one for a pool).
    """

    #: what a report adds about why the handler could not be interrupted.
    stuck_because = ""

    def __init__(self, report: Report | None = None, report_after: float | None = None) -> None:
        self._report = report or _log_report
        self._report_after = REPORT_AFTER if report_after is None else report_after
        self._lock = original("_thread", "allocate_lock")()
        self._wake = original("_thread", "allocate_lock")()  # held except while a wake-up is pending
        self._wake.acquire()
        self._wake_pending = False
        self._heap: list[tuple[float, int, _Run, int]] = []
        self._seq = itertools.count()
        self._stale = 0
        self._started = False
        self._closed = False

    # -- a limited call, in the handler's thread or greenlet -----------------------------------------------------
    def limited(self, handler: Callable[[Job], Result], seconds: float | None) -> Callable[[Job], Result]:
        """`handler` run under a limit of `seconds` (None: `handler` itself, unlimited)."""
        if seconds is None:
            return handler

        def run_limited(job: Job) -> Result:
            return self.run(handler, job, seconds)

        return run_limited

    def run(self, handler: Callable[[Job], Result], job: Job, seconds: float) -> Result:
        """`handler(job)`; raises TimeLimitExceeded (with its limit in the message and `.time_limit`) when it is
        still running `seconds` later, and whatever else the handler raises."""
        raise NotImplementedError

    def _describe(self, exc: TimeLimitExceeded, run: _Run) -> None:
        if exc.time_limit is None:  # ours (an asynchronous exception is raised as its class, without args)
            exc.args = (f"job {run.job.id} ({run.job.type}) ran past its time limit of {run.seconds:g}s",)
            exc.time_limit = run.seconds

    # -- arming ---------------------------------------------------------------------------------------------------
    def _arm(self, job: Job, seconds: float, ident: int) -> _Run:
        run = _Run(job, seconds, ident, time.monotonic() + seconds)
        with self._lock:
            if self._closed:  # the worker has stopped: a handler still started now runs without a limit
                run.state = _DONE
                return run
            if self._stale > _STALE_LIMIT and self._stale > len(self._heap) // 2:
                self._heap = [entry for entry in self._heap if entry[2].state != _DONE]
                heapq.heapify(self._heap)
                self._stale = 0
            self._push(run.deadline, run, _FIRE)
            if not self._started:
                self._started = True
                original("_thread", "start_new_thread")(self._serve, ())
        return run

    def _disarm(self, run: _Run) -> None:
        """Mark `run` finished; take back an exception the timer set but the thread has not received. Idempotent:
        if the exception arrives while this runs, calling it again completes it (one exception per run)."""
        with self._lock:
            state, run.state = run.state, _DONE
            if state == _ARMED:
                self._stale += 1
        if state in (_FIRED, _REPORTED):
            self._take_back(run)
            if state == _REPORTED:
                late = time.monotonic() - run.deadline
                log.warning("job %s (%s) stopped %.1fs after its time limit of %gs; its slot is free again",
                            run.job.id, run.job.type, late, run.seconds, extra=job_log_context(run.job))  # fmt: skip

    def _take_back(self, run: _Run) -> None:
        """Undo an interruption the timer made but the handler has not received (a no-op where there is none)."""

    def _interrupt(self, run: _Run) -> None:
        """At `run`'s deadline, in the timer thread under the lock: make the handler raise TimeLimitExceeded."""

    def _push(self, when: float, run: _Run, action: int) -> None:
        """Under the lock: add a deadline; wake the timer thread if it sleeps past it."""
        first = not self._heap or when < self._heap[0][0]
        heapq.heappush(self._heap, (when, next(self._seq), run, action))
        if first and not self._wake_pending:
            self._wake_pending = True
            self._wake.release()

    # -- the timer thread -----------------------------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            reports: list[_Run] = []
            with self._lock:
                if self._wake_pending:  # whatever woke it, the heap is read now: hold the wake lock again
                    self._wake.acquire(False)
                    self._wake_pending = False
                if self._closed:
                    return
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, _, run, action = heapq.heappop(self._heap)
                    if run.state == _DONE:
                        self._stale -= action == _FIRE
                    elif action == _FIRE and run.state == _ARMED:
                        run.state = _FIRED
                        self._interrupt(run)
                        heapq.heappush(self._heap, (now + self._report_after, next(self._seq), run, _REPORT))
                    elif action == _REPORT and run.state == _FIRED:
                        run.state = _REPORTED
                        reports.append(run)
                wait = self._heap[0][0] - now if self._heap else -1
            for run in reports:
                self._report_stuck(run)
            self._wake.acquire(timeout=wait)

    def _report_stuck(self, run: _Run) -> None:
        job = run.job
        text = (f"job {job.id} ({job.type}) attempt {job.attempt} is still running "
                f"{time.monotonic() - run.deadline:.1f}s after its time limit of {run.seconds:g}s: "
                f"{self.stuck_because}; its slot stays busy and its lease is kept (heartbeats go on, so it is not "
                "redelivered while it runs) until it returns or the worker is restarted")  # fmt: skip
        try:
            self._report(text, job)
        except BaseException:  # noqa: BLE001 - a failing report must not end the timer
            pass

    def close(self) -> None:
        """Stop the timer thread; runs still armed are no longer limited. Safe to call twice."""
        with self._lock:
            self._closed = True
            if self._started and not self._wake_pending:
                self._wake_pending = True
                self._wake.release()


class ThreadTimeLimits(TimeLimits):
    """Time limits for handlers in real OS threads: an asynchronous exception in the handler's thread."""

    stuck_because = ("its thread is blocked where an exception cannot reach it (in C code: a long sleep, a socket "
                     "read without a timeout, a lock), or it caught TimeLimitExceeded and went on")  # fmt: skip

    def __init__(self, report: Report | None = None, report_after: float | None = None) -> None:
        super().__init__(report, report_after)
        self._get_ident = original("_thread", "get_ident")  # the OS thread's, even where gevent patches threading

    def run(self, handler: Callable[[Job], Result], job: Job, seconds: float) -> Result:
        run = self._arm(job, seconds, self._get_ident())
        try:
            return handler(job)
        except TimeLimitExceeded as exc:
            self._describe(exc, run)
            raise
        finally:
            try:
                self._disarm(run)
            except TimeLimitExceeded:  # it arrived after the handler returned, while disarming: dropped
                self._disarm(run)

    def _interrupt(self, run: _Run) -> None:
        set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
        # A class, not an instance: CPython instantiates it without arguments when it raises. A subclass made for
        # this run carries the job and the limit, so the handler catching it sees them (`.time_limit`, message).
        job = run.job
        exc_class = type("TimeLimitExceeded", (TimeLimitExceeded,), {
            "default_message": f"job {job.id} ({job.type}) ran past its time limit of {run.seconds:g}s",
            "default_time_limit": run.seconds, "__module__": TimeLimitExceeded.__module__,
        })  # fmt: skip
        if set_async_exc(ctypes.c_ulong(run.ident), ctypes.py_object(exc_class)) != 1:
            run.state = _DONE  # its thread is gone: nothing to interrupt, nothing to report

    def _take_back(self, run: _Run) -> None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(run.ident), None)


class GeventTimeLimits(TimeLimits):
    """Time limits for handlers in greenlets: a `gevent.Timeout` throws TimeLimitExceeded into the greenlet at
    its next switch to the hub. The timer thread only watches for greenlets that do not stop (the hub itself may
    be blocked by them, so it cannot be the one to notice)."""

    stuck_because = ("its greenlet has not yielded to the gevent hub (CPU-bound code, or a blocking call gevent "
                     "does not patch, which blocks every greenlet of the process), or it caught "
                     "TimeLimitExceeded and went on")  # fmt: skip

    def __init__(self, report: Report | None = None, report_after: float | None = None) -> None:
        import gevent

        super().__init__(report, report_after)
        self._timeout = gevent.Timeout

    def run(self, handler: Callable[[Job], Result], job: Job, seconds: float) -> Result:
        run = self._arm(job, seconds, 0)
        exc = TimeLimitExceeded(f"job {job.id} ({job.type}) ran past its time limit of {seconds:g}s", seconds)
        timeout = self._timeout(seconds, exc)
        timeout.start()
        try:
            return handler(job)
        finally:
            timeout.close()  # no switch since the handler returned: the throw can no longer come
            self._disarm(run)


def make_time_limits(pool: str, report: Report | None = None, report_after: float | None = None) -> TimeLimits:
    """The time limits for a pool kind ("threads" or "gevent"); see `TimeLimits` for the arguments."""
    if pool == "gevent":
        return GeventTimeLimits(report, report_after)
    return ThreadTimeLimits(report, report_after)
