"""Workflows (from dagnats): signatures, chains, groups, chords and DAGs of job steps, their state in JetStream.

`Signature` is one step's call: a job type, its arguments and send options. Typed function jobs build them with
`fn.s(...)`; a producer that only has the name uses `bgjob.signature(job_type, *args, **kwargs)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["Signature", "signature"]


class _NoValue:
    """The `previous` of a first step: nothing to prepend."""

    def __repr__(self) -> str:
        return "<no value>"


NO_VALUE: Any = _NoValue()


@dataclasses.dataclass(frozen=True)
class Signature:
    """One step's call: `job_type` with positional `args`, keyword `kwargs` and send `options`.

    `options` are `Client.send_job` keyword options (queue, delay, deadline, max_attempts, job_id, ...). The
    wire-format arg of a typed function job is `{"args": [...], "kwargs": {...}}` (see `arg`); any handler that
    reads that shape (a typed job, or a plain Mux handler) can be a step.
    """

    job_type: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.job_type, str) or not self.job_type:
            raise TypeError(f"Signature job_type must be a non-empty str, got {self.job_type!r}")
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        object.__setattr__(self, "options", dict(self.options))

    def arg(self, previous: Any = NO_VALUE) -> dict[str, Any]:
        """The job's wire-format arg: `{"args": [previous, *args], "kwargs": {...}}` (`previous`, a previous
        step's result, is prepended only when given)."""
        args = list(self.args) if previous is NO_VALUE else [previous, *self.args]
        return {"args": args, "kwargs": dict(self.kwargs)}

    def set(self, **options: Any) -> Signature:
        """A copy with `options` merged into the send options."""
        return dataclasses.replace(self, options={**self.options, **options})


def signature(job_type: str, *args: Any, **kwargs: Any) -> Signature:
    """A `Signature` for `job_type` called with `args`/`kwargs` (no send options; add them with `.set(...)`)."""
    return Signature(job_type, args, kwargs)
