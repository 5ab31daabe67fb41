"""Claims from a callable (ebind's placement, re-checked): `Worker(..., claims=fn, claims_interval=30.0)`.

`fn()` is called when the worker starts and every `claims_interval` seconds, in a daemon helper thread of its own
(the worker's thread starts the call and looks for its answer on its next ticks, so it never waits on it); it
returns the claims the worker should hold now (a list of claim names). A call that has not returned within
`min(claims_interval, 30)` seconds is logged (a warning, once per stuck call) and the current claims are kept;
no second call starts while it is stuck (its answer is used if it ever comes), and stopping the worker never
waits for it (the helper thread is a daemon: a callable blocked for ever does not keep the process alive).
A new claim's lane (its consumer and a FetchLoop, bgjob.placement) starts after the worker's directory entry lists
the claim (so the no_target sweep of other workers counts it before the lane pulls); a dropped claim's lane stops
pulling and drains like a stopping worker (in-flight jobs finish and settle within the grace period; jobs not
started are handed back to the claim's subject, where they wait), and leaves the directory entry once drained. A
callable that raises or returns something that is not a list of valid claims is logged as a warning and the current
claims are kept: it never stops the worker.
"""

from __future__ import annotations

import asyncio
import logging
import threading
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
#: the most seconds a claims call may take before it is reported as stuck (less when claims_interval is shorter).
CALL_DEADLINE_MOST = 30.0
#: seconds a tick waits for a call it just started (a quick callable's answer is used at once).
CALL_FIRST_WAIT = 0.1


class _Call:
    """One call of a claims callable, in a daemon thread: `done` once it returned or raised."""

    def __init__(self, source: ClaimsSource) -> None:
        self.source = source
        self.done = threading.Event()
        self.answer: object = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.warned = False
        threading.Thread(target=self._run, name="bgjob-claims-call", daemon=True).start()

    def _run(self) -> None:
        try:
            self.answer = self.source()
        except BaseException as exc:  # noqa: BLE001 - reported by the worker's thread (ClaimLanes._answer)
            self.error = exc
        finally:
            self.done.set()


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
        #: the call of the callable under way (None between calls), and how long one may take before it is stuck.
        self._call: _Call | None = None
        self.deadline = min(interval, CALL_DEADLINE_MOST)
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
        if now >= self._next_call and self._call is None:
            first = self._next_call == 0.0
            self._next_call = now + self.interval
            self._call = _Call(self.source)
            # The first call (before the worker fetches): up to its deadline; later ones: a moment, then next ticks.
            self._call.done.wait(self.deadline if first else CALL_FIRST_WAIT)
        call = self._call
        if call is not None:
            if call.done.is_set():
                self._call = None
                self.wanted = self._answer(call)
            elif not call.warned and time.monotonic() - call.started >= self.deadline:
                call.warned = True
                log.warning("queue %r: the claims callable %r did not return within %.1fs; keeping the claims %s "
                            "(it is asked again once that call returns)", self.queue, self.source, self.deadline,
                            list(self.wanted))  # fmt: skip
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

    def _answer(self, call: _Call) -> tuple[str, ...]:
        """The claims of a call that returned, validated; the current ones (logged) when it raised or answered
        something else."""
        try:
            if call.error is not None:
                raise call.error
            answer = call.answer
            if isinstance(answer, (str, bytes)) or not isinstance(answer, (list, tuple, set, frozenset)):
                raise TypeError(f"it must return a list of claim names, got {answer!r}")
            return validate_claims(sorted(answer) if isinstance(answer, (set, frozenset)) else answer)
        except BaseException as exc:  # noqa: BLE001 - a broken callable never stops the worker
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
