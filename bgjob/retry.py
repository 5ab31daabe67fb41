"""The policy applied when a handler fails or asks to retry without a delay."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; after `max_attempts` deliveries a failing job goes to the DLQ."""

    max_attempts: int = 10
    base_delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 600.0
    #: fraction of the delay randomised (+/-) so retries of a failed batch spread out.
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.multiplier < 1:
            raise ValueError("delays must be >= 0 and multiplier >= 1")

    def delay_for(self, attempt: int) -> float:
        """Seconds to wait before the delivery after `attempt` (1-based)."""
        delay = min(self.max_delay, self.base_delay * self.multiplier ** max(0, attempt - 1))
        if self.jitter:
            delay *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, delay)

    def exhausted(self, attempt: int) -> bool:
        return attempt >= self.max_attempts
