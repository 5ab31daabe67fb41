"""Executors that run handlers: real daemon threads (default), or greenlets in a gevent process."""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import TimeLimitExceeded
from ..runtime import gevent_patched, original

log = logging.getLogger("bgjob.worker")


class Pool(Protocol):
    def submit(self, fn: Callable[..., Any], *args: Any) -> None: ...
    def shutdown(self) -> None: ...


class ThreadPool:
    """Up to `size` daemon OS threads, started on demand; a hung handler never blocks process exit.

    They are real threads even in a gevent-patched process (the stdlib originals are used).
    """

    def __init__(self, size: int, name: str = "bgjob-handler") -> None:
        self._size = size
        self._name = name
        self._tasks = original("queue", "SimpleQueue")()
        self._lock = original("_thread", "allocate_lock")()
        self._start = original("_thread", "start_new_thread")
        self._threads = 0
        self._idle = 0

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            if self._idle == 0 and self._threads < self._size:
                self._threads += 1
                self._start(self._work, ())
            else:
                self._idle -= 1
        self._tasks.put((fn, args))

    def _work(self) -> None:
        while True:
            try:
                item = self._tasks.get()
                if item is None:
                    return
                fn, args = item
                try:
                    fn(*args)
                except BaseException:  # fn reports its own outcome; this only guards against bugs
                    log.exception("bgjob pool task failed")
                finally:
                    with self._lock:
                        self._idle += 1
            except TimeLimitExceeded:  # never expected: bgjob.worker.time_limit takes back one that comes late
                log.error("bgjob: a time limit's exception reached the pool thread after its job; ignored")

    def shutdown(self) -> None:
        """Let idle threads exit; busy ones finish their job first (they are daemons)."""
        for _ in range(self._threads):
            self._tasks.put(None)


class GeventPool:
    """Up to `size` long-lived greenlets in the gevent hub of the thread that created the pool, started on demand.

    As with `ThreadPool`, a greenlet runs job after job: whatever a job's code keeps per thread (under gevent's
    patching, per greenlet: Django's database connections under CONN_MAX_AGE, for one) is reused by the next job
    there, so at most `size` of each exist, instead of one more per job left for the garbage collector.

    `submit` may be called from another OS thread (the runtime's): tasks are handed over through a gevent async
    watcher, the one thing another thread may poke. Everything else runs in the hub's thread.
    """

    def __init__(self, size: int) -> None:
        import gevent
        from gevent.queue import SimpleQueue

        self._size = size
        self._spawn = gevent.spawn
        self._incoming: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = collections.deque()
        self._tasks: SimpleQueue = SimpleQueue()
        self._greenlets = 0
        self._idle = 0  # idle greenlets minus tasks queued for them (as ThreadPool counts)
        self._watcher = gevent.get_hub().loop.async_()
        self._watcher.start(self._hand_over)

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._incoming.append((fn, args))
        self._watcher.send()

    def _hand_over(self) -> None:
        """In the hub: queue what was submitted, starting a greenlet for it unless an idle one will take it."""
        while self._incoming:
            item = self._incoming.popleft()
            if self._idle <= 0 and self._greenlets < self._size:
                self._greenlets += 1
                self._spawn(self._work)
            else:
                self._idle -= 1
            self._tasks.put(item)

    def _work(self) -> None:
        while True:
            item = self._tasks.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except BaseException:  # fn reports its own outcome; this only guards against bugs
                log.exception("bgjob pool task failed")
            self._idle += 1

    def shutdown(self) -> None:
        """Let idle greenlets exit; busy ones finish their job first. Called in the hub's thread (the worker's)."""
        self._watcher.close()
        self._hand_over()
        for _ in range(self._greenlets):
            self._tasks.put(None)


def make_pool(kind: str, size: int, name: str) -> Pool:
    if kind == "threads":
        return ThreadPool(size, name=name)
    if kind == "gevent":
        if not gevent_patched():
            raise ValueError("pool='gevent' needs gevent installed and gevent.monkey.patch_all() at process start")
        return GeventPool(size)
    raise ValueError(f"unknown pool {kind!r}: use 'threads' or 'gevent'")
