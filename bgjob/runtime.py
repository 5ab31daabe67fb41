"""The asyncio loop that runs nats-py, in one real OS thread, and blocking calls into it."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("bgjob.runtime")


class Runtime:
    """An event loop in a daemon thread; `run()` executes a coroutine there and blocks for its result."""

    def __init__(self, name: str = "bgjob-runtime") -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self._inbox: collections.deque[tuple[Coroutine[Any, Any, Any], concurrent.futures.Future]] = collections.deque()
        self._wakeup_pending = False
        self._wakeup_hooks: list[Callable[[], None]] = [self._start_submitted]
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, name=name, daemon=True)
        self._thread.start()
        self._started.wait()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        try:
            self.loop.run_forever()
        finally:
            pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    @property
    def alive(self) -> bool:
        return self.pid == os.getpid() and self._thread.is_alive()

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule `coro` on the loop; returns a thread-safe future.

        Like asyncio.run_coroutine_threadsafe, but many threads submitting at once share one wake-up
        of the loop instead of one each.
        """
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._inbox.append((coro, future))
        self.wake()
        return future

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Start a task on the loop (call on the loop) and keep it referenced until it is done."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def add_wakeup_hook(self, hook: Callable[[], None]) -> None:
        """Run `hook` on the loop at every wake(): for queues that other threads fill."""
        self._wakeup_hooks.append(hook)

    def remove_wakeup_hook(self, hook: Callable[[], None]) -> None:
        self._wakeup_hooks.remove(hook)

    def wake(self) -> None:
        """Make the loop run its wake-up hooks soon; one wake-up serves every caller until it runs."""
        if not self._wakeup_pending:
            self._wakeup_pending = True
            self.loop.call_soon_threadsafe(self._on_wakeup)

    def _on_wakeup(self) -> None:
        # Reset first: whatever is queued after this point schedules a new wake-up.
        self._wakeup_pending = False
        for hook in list(self._wakeup_hooks):
            hook()

    def _start_submitted(self) -> None:
        inbox = self._inbox
        while inbox:
            coro, future = inbox.popleft()
            if not future.set_running_or_notify_cancel():
                coro.close()
                continue
            task = self.spawn(coro)
            task.add_done_callback(lambda t, f=future: _copy_result(t, f))

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the loop and block the calling thread until it finishes."""
        if self.in_loop_thread():
            coro.close()
        future = self.submit(coro)
        try:
            return self.wait(future, timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def wait_batch(self, batch: Any) -> None:
        """Block until every message of a PublishBatch is settled (each is bounded by the retry budget)."""
        if self.in_loop_thread():
            raise RuntimeError("bgjob: blocking call made from the runtime thread itself")
        batch.wait()

    def wait(self, future: concurrent.futures.Future[T], timeout: float | None = None) -> T:
        """Block the calling thread until `future` is done; refused on the loop thread (it would deadlock)."""
        if self.in_loop_thread():
            raise RuntimeError("bgjob: blocking call made from the runtime thread itself")
        return wait(future, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop (cancelling what still runs) and join the thread."""
        if not self._thread.is_alive() or self.pid != os.getpid():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.in_loop_thread():
            self._thread.join(timeout)


def _copy_result(task: asyncio.Task, future: concurrent.futures.Future) -> None:
    if task.cancelled():
        future.cancel()
    elif (exc := task.exception()) is not None:
        future.set_exception(exc)
    else:
        future.set_result(task.result())


def wait(future: concurrent.futures.Future[T], timeout: float | None = None) -> T:
    """Block the calling thread until `future` is done."""
    return future.result(timeout)
