"""The policy applied when a handler fails or asks to retry without a delay."""

from __future__ import annotations

import math
import random
import reprlib
from dataclasses import dataclass

from .errors import InvalidResult
from .schedule import MAX_DELAY_SECONDS


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; after `max_attempts` deliveries a failing job goes to the DLQ.

    - `max_attempts`: deliveries before the DLQ, an int >= 1.
    - `base_delay`: seconds before the second delivery (int or float, >= 0).
    - `multiplier`: factor between successive delays, >= 1.
    - `max_delay`: cap on the delay in seconds, >= 0.
    - `jitter`: fraction of the delay randomised (+/-), in [0, 1], so retries of a failed batch spread out.

    Raises InvalidResult when built with anything else (a bool, a str, NaN, infinity, out of range); delays
    are at most MAX_DELAY_SECONDS (100 years).
    """

    max_attempts: int = 10
    base_delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 600.0
    #: fraction of the delay randomised (+/-) so retries of a failed batch spread out.
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise InvalidResult(f"RetryPolicy max_attempts must be an int >= 1, got {self.max_attempts!r}")
        _check_number("base_delay", self.base_delay, 0, MAX_DELAY_SECONDS)
        _check_number("max_delay", self.max_delay, 0, MAX_DELAY_SECONDS)
        _check_number("multiplier", self.multiplier, 1, math.inf)
        _check_number("jitter", self.jitter, 0, 1)

    def delay_for(self, attempt: int) -> float:
        """Seconds to wait before the delivery after `attempt` (1-based): at most max_delay plus its jitter."""
        try:
            raw = self.base_delay * self.multiplier ** max(0, attempt - 1)
        except OverflowError:  # a long run of attempts: the cap applies
            raw = math.inf
        delay = min(self.max_delay, raw) if self.base_delay else 0.0
        if self.jitter:
            delay *= 1 + random.uniform(-self.jitter, self.jitter)
        return min(MAX_DELAY_SECONDS, max(0.0, delay))

    def exhausted(self, attempt: int) -> bool:
        """Whether delivery number `attempt` (1-based) was the last one the policy allows."""
        return attempt >= self.max_attempts


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
