"""Executors that run handlers: real daemon threads (default), or greenlets in a gevent process."""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any, Protocol

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
            item = self._tasks.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except BaseException:  # fn reports its own outcome; this only guards against bugs
                log.exception("bgjob pool task failed")
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Let idle threads exit; busy ones finish their job first (they are daemons)."""
        for _ in range(self._threads):
            self._tasks.put(None)


class GeventPool:
    """Runs each task as a greenlet in the gevent hub of the thread that created the pool.

    `submit` may be called from another OS thread (the runtime's): tasks are handed over through a
    gevent async watcher, the one thing another thread may poke.
    """

    def __init__(self, size: int) -> None:
        import gevent

        self._size = size
        self._spawn = gevent.spawn
        self._tasks: collections.deque[tuple[Callable[..., Any], tuple]] = collections.deque()
        self._watcher = gevent.get_hub().loop.async_()
        self._watcher.start(self._spawn_all)

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._tasks.append((fn, args))
        self._watcher.send()

    def _spawn_all(self) -> None:
        while self._tasks:
            fn, args = self._tasks.popleft()
            self._spawn(fn, *args)

    def shutdown(self) -> None:
        self._watcher.close()


def make_pool(kind: str, size: int, name: str) -> Pool:
    if kind == "threads":
        return ThreadPool(size, name=name)
    if kind == "gevent":
        if not gevent_patched():
            raise ValueError("pool='gevent' needs gevent installed and gevent.monkey.patch_all() at process start")
        return GeventPool(size)
    raise ValueError(f"unknown pool {kind!r}: use 'threads' or 'gevent'")
