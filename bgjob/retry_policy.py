"""The policy applied when a handler fails or asks to retry without a delay."""

from __future__ import annotations

import dataclasses
import math
import random
import reprlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from .errors import InvalidResult, NonRetryable
from .schedule import MAX_DELAY_SECONDS

_EXPONENTIAL = {"base_delay": 1.0, "multiplier": 2.0, "max_delay": 600.0}


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed job runs again, and when it goes to the DLQ instead.

    - `max_attempts`: deliveries before the DLQ, an int >= 1, or None for no limit (the job retries until it
      succeeds, is dead-lettered some other way, or passes its deadline).
    - `base_delay`: seconds before the second delivery (int or float, >= 0).
    - `multiplier`: factor between successive delays, >= 1.
    - `max_delay`: cap on the delay in seconds, >= 0.
    - `delays`: a fixed list of delays in seconds instead of the formula above (`[1, 5, 30]`: 1 s before the
      second delivery, 5 s before the third, 30 s before each one after that: the last repeats); a non-empty
      list of numbers, each 0 to MAX_DELAY_SECONDS. Giving it with base_delay, multiplier or max_delay is an
      error (ebind and choria asyncjobs take their backoff as such a list).
    - `jitter`: fraction of the delay randomised (+/-), in [0, 1], so retries of a failed batch spread out; it
      applies to `delays` too (`jitter=0` for exact delays).
    - `non_retryable`: exception classes (a tuple, or one class) that dead-letter the job at once with reason
      `non_retryable` when a handler raises them (or a subclass), whatever attempts are left (ebind's
      `NonRetryableErrorKinds`). `bgjob.NonRetryable` always does.

    Used by a Worker (`retry_policy=`), per handler (`Mux.handle(..., retry_policy=)`) and by Recovery; a job
    sent with `max_attempts=` keeps its own limit. Raises InvalidResult when built with anything else (a bool,
    a str, NaN, infinity, out of range, a class that is not an exception); delays are at most
    MAX_DELAY_SECONDS (100 years).
    """

    max_attempts: int | None = 10
    base_delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 600.0
    #: fraction of the delay randomised (+/-) so retries of a failed batch spread out.
    jitter: float = 0.1
    #: fixed delays in seconds (the last repeats), or None for the exponential formula; stored as a tuple.
    delays: Sequence[float | timedelta] | None = None
    #: exception classes that dead-letter at once (reason `non_retryable`); stored as a tuple.
    non_retryable: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        limit = self.max_attempts
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise InvalidResult(f"RetryPolicy max_attempts must be an int >= 1 or None (no limit), got {limit!r}")
        _check_number("base_delay", self.base_delay, 0, MAX_DELAY_SECONDS)
        _check_number("max_delay", self.max_delay, 0, MAX_DELAY_SECONDS)
        _check_number("multiplier", self.multiplier, 1, math.inf)
        _check_number("jitter", self.jitter, 0, 1)
        if self.delays is not None:
            delays = self.delays
            if isinstance(delays, (str, bytes)) or not isinstance(delays, Sequence) or not delays:
                raise InvalidResult(f"RetryPolicy delays must be a non-empty list of seconds, e.g. [1, 5, 30], "
                                    f"got {reprlib.repr(delays)}")  # fmt: skip
            seconds = [d.total_seconds() if isinstance(d, timedelta) else d for d in delays]  # seconds or timedelta
            for index, delay in enumerate(seconds):
                _check_number(f"delays[{index}]", delay, 0, MAX_DELAY_SECONDS)
            both = [name for name, default in _EXPONENTIAL.items() if getattr(self, name) != default]
            if both:
                raise InvalidResult(f"RetryPolicy: give delays or {'/'.join(_EXPONENTIAL)}, not both "
                                    f"(got delays and {', '.join(both)})")  # fmt: skip
            object.__setattr__(self, "delays", tuple(float(d) for d in seconds))
        kinds = self.non_retryable
        if isinstance(kinds, type):
            kinds = (kinds,)
        if not isinstance(kinds, (tuple, list, frozenset, set)) or not all(
                isinstance(k, type) and issubclass(k, BaseException) for k in kinds):  # fmt: skip
            raise InvalidResult(f"RetryPolicy non_retryable must be exception classes, e.g. (ValueError, KeyError), "
                                f"got {reprlib.repr(self.non_retryable)}")  # fmt: skip
        object.__setattr__(self, "non_retryable", tuple(kinds))

    def delay_for(self, attempt: int) -> float:
        """Seconds to wait before the delivery after `attempt` (1-based): `delays[attempt - 1]` (the last one
        past the list's end), else the exponential formula capped at max_delay; plus or minus its jitter."""
        if self.delays is not None:
            delay = self.delays[min(max(0, attempt - 1), len(self.delays) - 1)]
            assert not isinstance(delay, timedelta)  # __post_init__ made them seconds
        else:
            try:
                raw = self.base_delay * self.multiplier ** max(0, attempt - 1)
            except OverflowError:  # a long run of attempts: the cap applies
                raw = math.inf
            delay = min(self.max_delay, raw) if self.base_delay else 0.0
        if self.jitter:
            delay *= 1 + random.uniform(-self.jitter, self.jitter)
        return min(MAX_DELAY_SECONDS, max(0.0, delay))

    def exhausted(self, attempt: int) -> bool:
        """Whether delivery number `attempt` (1-based) was the last one the policy allows (never, without a
        max_attempts)."""
        return self.max_attempts is not None and attempt >= self.max_attempts

    def limited_to(self, max_attempts: int | None) -> RetryPolicy:
        """This policy with a job's own `max_attempts` (sent with it; None: this policy's own)."""
        if max_attempts is None or max_attempts == self.max_attempts:
            return self
        return dataclasses.replace(self, max_attempts=max_attempts)

    def gives_up_on(self, error: BaseException | None) -> bool:
        """Whether a handler's `error` dead-letters its job at once: a bgjob.NonRetryable, or an instance of a
        class in `non_retryable`. False for None."""
        return isinstance(error, NonRetryable) or (bool(self.non_retryable) and isinstance(error, self.non_retryable))


def _check_number(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidResult(f"RetryPolicy {name} must be a number, got {type(value).__name__} {reprlib.repr(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not math.isfinite(number):
        raise InvalidResult(f"RetryPolicy {name} must be a finite number, got {value!r}")
    if not low <= number <= high:
        bounds = f">= {low:g}" if math.isinf(high) else f"between {low:g} and {high:g}"
        raise InvalidResult(f"RetryPolicy {name} must be {bounds}, got {reprlib.repr(value)}")
