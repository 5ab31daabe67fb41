"""Claims from a callable (ebind's placement, re-checked): `Worker(..., claims=fn, claims_interval=30.0)`.

`fn()` is called in the thread that runs the worker (`Worker.run`), when it starts and every `claims_interval`
seconds; it returns the claims the worker should hold now (a list of claim names). A new claim's lane (its
consumer and a FetchLoop, bgjob.placement) starts after the worker's directory entry lists the claim (so the
no_target sweep of other workers counts it before the lane pulls); a dropped claim's lane stops pulling and
drains like a stopping worker (in-flight jobs finish and settle within the grace period; jobs not started are
handed back to the claim's subject, where they wait), and leaves the directory entry once drained. A callable
that raises or returns something that is not a list of valid claims is logged as a warning and the current
claims are kept: it never stops the worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from ..placement import validate_claims
from ..runtime import Flag, Runtime
from .loop import FetchLoop

log = logging.getLogger("bgjob.worker")

#: a claims callable: no arguments, returns the claim names to hold now.
ClaimsSource = Callable[[], Sequence[str]]
#: makes a claim's FetchLoop (in the worker's thread: its pool belongs there) and the function that closes its
#: pool once the loop has finished.
LoopFactory = Callable[[str], tuple[FetchLoop, Callable[[], None]]]


def validate_claims_interval(interval: float) -> float:
    """`claims_interval`: seconds (an int or float > 0). Raises ValueError otherwise."""
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0 \
            or interval == float("inf"):  # fmt: skip
        raise ValueError(f"claims_interval must be seconds > 0, got {interval!r}")
    return float(interval)


class ClaimLanes:
    """The claim lanes of a Worker whose claims come from a callable. Served beside the worker's other loops
    like one of them (`serve`, `request_stop`, `started`, `processed`, `inflight`); `tick()` is called by the
    worker's thread (twice a second), which owns the lanes' pools."""

    def __init__(self, source: ClaimsSource, interval: float, runtime: Runtime, queue: str,
                 new_loop: LoopFactory) -> None:  # fmt: skip
        self.source = source
        self.interval = interval
        self.runtime = runtime
        self.queue = queue
        self.new_loop = new_loop
        #: the main consumer's loop, whose directory entry lists the claims (set by the Worker).
        self.main: FetchLoop | None = None
        self.started = Flag()
        #: the claims the callable last answered with (validated).
        self.wanted: tuple[str, ...] = ()
        # The worker thread's view: claim -> (loop, close, finished flag); dropped ones drain in _draining.
        self._running: dict[str, tuple[FetchLoop, Callable[[], None], Flag]] = {}
        self._draining: list[tuple[str, FetchLoop, Callable[[], None], Flag]] = []
        self._next_call = 0.0
        self._initial: list[FetchLoop] = []
        self._stopping = Flag()
        self._finished_processed = 0
        # The event loop's view: the claim lanes' tasks and the claims in the directory entry.
        self._tasks: dict[asyncio.Task[None], tuple[str, FetchLoop, Flag]] = {}
        self._held: list[str] = []
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None

    # -- the worker's thread -------------------------------------------------------------------------------------
    def tick(self) -> None:
        """Ask the callable when due, start lanes for new claims, stop those of dropped claims, close the pools
        of lanes that finished. Never raises for the callable's sake."""
        if self._stopping.is_set():
            return
        now = time.monotonic()
        if now >= self._next_call:
            self._next_call = now + self.interval
            self.wanted = self._ask()
        for claim in self.wanted:
            if claim not in self._running and not any(each[0] == claim for each in self._draining):
                loop, close = self.new_loop(claim)
                finished = Flag()
                self._running[claim] = (loop, close, finished)
                if not self.started.is_set():
                    self._initial.append(loop)
                self.runtime.loop.call_soon_threadsafe(self._start, claim, loop, finished)
                log.info("queue %r: claim %r taken up", self.queue, claim)
        for claim in [c for c in self._running if c not in self.wanted]:
            loop, close, finished = self._running.pop(claim)
            loop.request_stop()
            self._draining.append((claim, loop, close, finished))
            log.info("queue %r: claim %r dropped; its in-flight jobs finish", self.queue, claim)
        for entry in [each for each in self._draining if each[3].is_set()]:
            self._draining.remove(entry)
            self._finished_processed += entry[1].processed
            entry[2]()

    def _ask(self) -> tuple[str, ...]:
        try:
            answer = self.source()
            if isinstance(answer, (str, bytes)) or not isinstance(answer, (list, tuple, set, frozenset)):
                raise TypeError(f"it must return a list of claim names, got {answer!r}")
            return validate_claims(sorted(answer) if isinstance(answer, (set, frozenset)) else answer)
        except Exception as exc:  # noqa: BLE001 - a broken callable never stops the worker
            log.warning("queue %r: the claims callable %r failed (%s: %s); keeping the claims %s", self.queue,
                        self.source, type(exc).__name__, exc, list(self.wanted))  # fmt: skip
            return self.wanted

    def current(self) -> tuple[str, ...]:
        """The claims whose lanes run now (not those draining)."""
        return tuple(self._running)

    def close(self) -> None:
        """Once the worker has stopped: close every lane's pool."""
        self._stopping.set()
        for loop, close, _ in self._running.values():
            self._finished_processed += loop.processed
            close()
        for _, loop, close, _ in self._draining:
            self._finished_processed += loop.processed
            close()
        self._running.clear()
        self._draining.clear()

    @property
    def processed(self) -> int:
        """Deliveries settled by the claim lanes so far."""
        loops = [each[0] for each in list(self._running.values())] + [each[1] for each in list(self._draining)]
        return self._finished_processed + sum(loop.processed for loop in loops)

    @property
    def inflight(self) -> list[object]:
        """The claim lanes' jobs received and not yet settled."""
        loops = [each[0] for each in list(self._running.values())] + [each[1] for each in list(self._draining)]
        return [item for loop in loops for item in list(loop.inflight.values())]

    def request_stop(self) -> None:
        """Stop every claim lane (any thread): they drain."""
        self._stopping.set()
        self.runtime.loop.call_soon_threadsafe(self._on_stop)

    # -- the event loop ----------------------------------------------------------------------------------------
    def _on_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
        for _, loop, _ in list(self._tasks.values()):
            loop.request_stop()

    def _start(self, claim: str, loop: FetchLoop, finished: Flag) -> None:
        if self._stopping.is_set():
            finished.set()
            return
        self.runtime.spawn(self._take_up(claim, loop, finished))

    async def _take_up(self, claim: str, loop: FetchLoop, finished: Flag) -> None:
        """List the claim in the directory entry, then serve its lane."""
        self._held.append(claim)
        await self._announce()
        if self._stopping.is_set():
            self._held.remove(claim)
            finished.set()
            return
        task = asyncio.create_task(loop.serve())
        self._tasks[task] = (claim, loop, finished)
        task.add_done_callback(self._lane_done)

    def _lane_done(self, task: asyncio.Task[None]) -> None:
        claim, _, finished = self._tasks.pop(task)
        error = None if task.cancelled() else task.exception()
        if error is not None and self._failure is None and not self._stopping.is_set():
            # Like a static lane's: a lane that fails (its consumer refused, the connection closed) stops the worker.
            self._failure = error
            if self._stop is not None:
                self._stop.set()
        elif error is not None:
            log.warning("queue %r: the lane of claim %r ended with %r", self.queue, claim, error)
        self._held.remove(claim)
        finished.set()
        if not self._stopping.is_set():
            self.runtime.spawn(self._announce())

    async def _announce(self) -> None:
        main = self.main
        if main is not None:
            main.claims = tuple(dict.fromkeys(self._held))
            if not await main.announce_now(timeout=max(5.0, main.core.settings.request_timeout * 2)):
                log.debug("queue %r: the directory entry with claims %s was not written in time", self.queue,
                          list(main.claims))  # fmt: skip

    async def serve(self) -> None:
        """Until stopped: mark `started` once the first claims' lanes fetch; then stop them all and wait for them
        to drain. Raises the error of a lane that failed (which stops the worker, as a static lane's does)."""
        self._stop = stop = asyncio.Event()
        if self._stopping.is_set():
            stop.set()
        try:
            while not stop.is_set():
                if not self.started.is_set() and all(loop.started.is_set() for loop in self._initial):
                    self.started.set()
                try:
                    async with asyncio.timeout(0.05 if not self.started.is_set() else 1.0):
                        await stop.wait()
                except TimeoutError:
                    pass
        finally:
            self._stopping.set()
            for _, loop, _ in list(self._tasks.values()):
                loop.request_stop()
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
                await asyncio.sleep(0)  # their done callbacks run
        if self._failure is not None:
            raise self._failure
