"""The asyncio loop that runs nats-py, in one real OS thread, and blocking calls into it.

Blocking callers are OS threads or, in a gevent-patched process, greenlets: a greenlet waits in a way
that yields to the gevent hub, so a hundred greenlets can each wait for their own PubAck at once.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextvars
import logging
import os
import selectors
import sys
import threading
import traceback
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar, cast

from .errors import ConnectionError

T = TypeVar("T")
log = logging.getLogger("bgjob.runtime")


def gevent_patched() -> bool:
    """Whether gevent has monkey-patched threading in this process."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")


def original(module: str, name: str) -> Any:
    """The stdlib object before gevent's monkey-patching (the object itself when not patched)."""
    if gevent_patched():
        from gevent import monkey

        return monkey.get_original(module, name)
    return getattr(sys.modules[module] if module in sys.modules else __import__(module), name)


class Flag:
    """A one-way event on a raw OS lock: safe between real threads even in a gevent-patched process
    (threading.Event would then be built on gevent's locks)."""

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._lock = original("_thread", "allocate_lock")()
        self._lock.acquire()
        self._set = False

    def set(self) -> None:
        if not self._set:
            self._set = True
            self._lock.release()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        if self._set:
            return True
        if self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            self._lock.release()
            return True
        return self._set


class ThreadWaiter:
    """Blocks a real OS thread until notified from the runtime thread."""

    __slots__ = ("_flag",)

    def __init__(self) -> None:
        self._flag = Flag()

    def notify(self) -> None:
        self._flag.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._flag.wait(timeout)

    def close(self) -> None:
        pass


class GreenletWaiter:
    """Blocks the calling greenlet, not the gevent hub, until notified from the runtime thread."""

    __slots__ = ("_event", "_watcher")

    def __init__(self) -> None:
        import gevent
        import gevent.event

        self._event = gevent.event.Event()
        # An async watcher is the one gevent object another OS thread may poke (send()).
        self._watcher = gevent.get_hub().loop.async_()
        self._watcher.start(self._event.set)

    def notify(self) -> None:
        self._watcher.send()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for notify(); may be called again after a timeout."""
        if self._event.wait(timeout):
            self.close()
            return True
        return False

    def close(self) -> None:
        """Release the watcher (done by a successful wait; call it when giving up)."""
        self._watcher.close()


def in_gevent_hub_thread() -> bool:
    """Whether the caller is a greenlet: gevent is patched in and this OS thread runs (or will run) a hub."""
    if not gevent_patched():
        return False
    from gevent._hub_local import get_hub_if_exists

    in_main_thread = original("_thread", "get_ident")() == threading.main_thread().ident
    return in_main_thread or get_hub_if_exists() is not None


def new_waiter() -> ThreadWaiter | GreenletWaiter:
    """A waiter suited to the caller: one that yields to the gevent hub for a greenlet."""
    return GreenletWaiter() if in_gevent_hub_thread() else ThreadWaiter()


class LogHandoff:
    """In a gevent-patched process, the runtime threads' log records are handled by a greenlet of the hub's thread.

    gevent patches every lock `logging` uses (the handlers' and the module's): a real OS thread that takes one while
    a greenlet holds it, or releases it while greenlets wait, can leave greenlets blocked for good. So a runtime
    thread never calls a handler: `logging.Logger.callHandlers` (for every logger: bgjob's, nats-py's, asyncio's,
    any library's called on the loop) queues the record with a copy of the thread's context variables and pokes the
    hub (an async watcher, the one gevent object another thread may poke); a greenlet of the hub's thread then
    runs the handlers, in that context. `Logger.isEnabledFor` answers a runtime thread without the module lock.
    Other threads and greenlets log as before. Records keep their creation time and thread name; they reach the
    handlers once the hub runs (as soon as a greenlet yields). Installed once per process, by the first Runtime
    created in a hub thread (`install`); without gevent nothing changes.
    """

    _instance: LogHandoff | None = None

    def __init__(self) -> None:
        import gevent

        self._get_ident = original("_thread", "get_ident")
        self._hub_thread = self._get_ident()
        self._runtime_threads: set[int] = set()
        self._records: collections.deque[tuple[contextvars.Context, logging.Logger, logging.LogRecord]] = (
            collections.deque()
        )
        self._draining = False
        self._spawn = gevent.spawn
        self._watcher = gevent.get_hub().loop.async_()
        self._watcher.ref = False  # never keeps the hub (gevent.wait()) alive on its own
        self._watcher.start(self._on_wakeup)
        call_handlers = self._call_handlers = logging.Logger.callHandlers
        is_enabled_for = logging.Logger.isEnabledFor
        get_ident, runtime_threads, records, watcher = self._get_ident, self._runtime_threads, self._records, (
            self._watcher
        )

        def handed_off_call_handlers(logger: logging.Logger, record: logging.LogRecord) -> None:
            if get_ident() in runtime_threads:
                records.append((contextvars.copy_context(), logger, record))
                watcher.send()
            else:
                call_handlers(logger, record)

        def lock_free_is_enabled_for(logger: logging.Logger, level: int) -> bool:
            if get_ident() not in runtime_threads:
                return is_enabled_for(logger, level)
            if logger.disabled:
                return False
            try:
                cached: bool = logger._cache[level]  # type: ignore[attr-defined]  # private: not in typeshed
                return cached
            except KeyError:  # computed without the (patched) module lock, and not cached: that needs the lock
                return logger.manager.disable < level and level >= logger.getEffectiveLevel()

        # patching the stdlib's methods on purpose (see above): mypy refuses any assignment to a method
        logging.Logger.callHandlers = handed_off_call_handlers  # type: ignore[method-assign,assignment]
        logging.Logger.isEnabledFor = lock_free_is_enabled_for  # type: ignore[method-assign,assignment]
        os.register_at_fork(after_in_child=self._runtime_threads.clear)
        atexit.register(self.flush)  # what is still queued at exit (before logging.shutdown, registered earlier)

    @classmethod
    def install(cls) -> LogHandoff | None:
        """The process's hand-off, installed now if gevent is patched in and the caller is a greenlet (its hub's
        thread receives the records); None otherwise (a runtime thread then logs as any thread does)."""
        if cls._instance is None and in_gevent_hub_thread():
            cls._instance = cls()
        return cls._instance

    def adopt(self, ident: int) -> None:
        """Hand off the records of OS thread `ident` (a runtime thread, from its start)."""
        self._runtime_threads.add(ident)

    def release(self, ident: int) -> None:
        self._runtime_threads.discard(ident)

    def _on_wakeup(self) -> None:
        # In the hub itself, which must never block: a greenlet runs the handlers.
        if not self._draining and self._records:
            self._draining = True
            self._spawn(self.flush)

    def flush(self) -> None:
        """Handle every queued record now; in the hub's thread (elsewhere a no-op: the hub does it)."""
        if self._get_ident() != self._hub_thread:
            return
        records = self._records
        try:
            while records:
                context, logger, record = records.popleft()
                try:
                    context.run(self._call_handlers, logger, record)
                except Exception:  # noqa: BLE001 - a raising filter must not stop the records after it
                    traceback.print_exc()
        finally:
            self._draining = False


class Call(Generic[T]):
    """A coroutine submitted from another thread, and its outcome."""

    __slots__ = ("coro", "error", "result", "task", "waiter")

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self.coro = coro
        self.waiter = new_waiter()
        self.result: T | None = None
        self.error: BaseException | None = None
        self.task: asyncio.Task[T] | None = None

    def _finish(self, task: asyncio.Task[T]) -> None:
        if task.cancelled():
            self.error = asyncio.CancelledError()
        elif (exc := task.exception()) is not None:
            self.error = exc
        else:
            self.result = task.result()
        self.waiter.notify()

    def wait(self, timeout: float | None = None) -> bool:
        return self.waiter.wait(timeout)

    def value(self) -> T:
        if self.error is not None:
            raise self.error
        return cast(T, self.result)  # _finish set it: the coroutine returned


class Runtime:
    """An event loop in a daemon OS thread; `run()` executes a coroutine there and blocks for its result."""

    def __init__(self, name: str = "bgjob-runtime") -> None:
        self.pid = os.getpid()
        self.name = name
        # Under gevent the loop must not run on gevent's selector: take the stdlib's own.
        selector_cls = original("selectors", "DefaultSelector") if gevent_patched() else selectors.DefaultSelector
        self.loop = asyncio.SelectorEventLoop(selector_cls())
        self._inbox: collections.deque[Call[Any]] = collections.deque()
        self._wakeup_pending = False
        self._wakeup_hooks: list[Callable[[], None]] = [self._start_submitted]
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ident: int | None = None
        #: under gevent, this loop thread's log records go to the hub's thread (see LogHandoff).
        self._log_handoff = LogHandoff.install()
        self._started = ThreadWaiter()
        self._stopped = ThreadWaiter()
        original("_thread", "start_new_thread")(self._run_loop, ())
        self._started.wait()

    def _run_loop(self) -> None:
        self._ident = original("_thread", "get_ident")()
        if self._log_handoff is not None:
            threading.current_thread()  # registers this thread (under a patched lock) now, not in a first log call
            self._log_handoff.adopt(self._ident)
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.notify)
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
            if self._log_handoff is not None:
                self._log_handoff.release(self._ident)
            self._stopped.notify()

    @property
    def alive(self) -> bool:
        return self.pid == os.getpid() and not self.loop.is_closed() and self._ident is not None

    def in_loop_thread(self) -> bool:
        return bool(original("_thread", "get_ident")() == self._ident)

    def start_call(self, coro: Coroutine[Any, Any, T]) -> Call[T]:
        """Schedule `coro` on the loop from any thread or greenlet; wait on the returned Call.

        Many callers submitting at once share one wake-up of the loop.
        """
        call = Call(coro)
        self._inbox.append(call)
        self.wake()
        return call

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the loop and block the caller (thread or greenlet) until it finishes."""
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError("bgjob: blocking call made from the runtime thread itself")
        call = self.start_call(coro)
        if not call.wait(timeout):
            call.waiter.close()
            self.loop.call_soon_threadsafe(lambda: call.task.cancel() if call.task else None)
            raise TimeoutError(f"bgjob: no answer within {timeout}s")
        try:
            return call.value()
        except asyncio.CancelledError:
            # Nothing cancelled the caller: a task of nats-py's under the call was cancelled (the connection closed
            # or dropped while it ran, seen in nc.drain()). A BaseException would get past every `except Exception`
            # of a public call: it leaves as bgjob's own error.
            raise ConnectionError("bgjob: the call was cancelled on bgjob's event loop (the connection closed or "
                                  "dropped while it ran)") from None  # fmt: skip

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
            try:
                self.loop.call_soon_threadsafe(self._on_wakeup)
            except RuntimeError:  # the loop is closed: the process is shutting down
                self._wakeup_pending = False

    def _on_wakeup(self) -> None:
        # Reset first: whatever is queued after this point schedules a new wake-up.
        self._wakeup_pending = False
        for hook in list(self._wakeup_hooks):
            hook()

    def _start_submitted(self) -> None:
        inbox = self._inbox
        while inbox:
            call = inbox.popleft()
            call.task = self.spawn(call.coro)
            call.task.add_done_callback(call._finish)

    def wait_batch(self, batch: Any, timeout: float | None = None) -> bool:
        """Block until every message of a PublishBatch is settled or `timeout` seconds pass (None: no limit).

        Returns whether every message was settled; the caller treats the others as not confirmed. Each message is
        bounded by the batch's deadline already: the timeout is the facade's safety net.
        """
        if self.in_loop_thread():
            raise RuntimeError("bgjob: blocking call made from the runtime thread itself")
        return bool(batch.wait(timeout))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop (cancelling what still runs) and wait for its thread to finish."""
        if self.pid != os.getpid() or self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:
            return
        if not self.in_loop_thread():
            self._stopped.wait(timeout)
            if self._log_handoff is not None:
                self._log_handoff.flush()
