"""Workflows (from dagnats): signatures, chains, groups, chords and DAGs of job steps, their state in JetStream.

`Signature` is one step's call: a job type, its arguments and send options. Typed function jobs build them with
`fn.s(...)`; a producer that only has the name uses `bgjob.signature(job_type, *args, **kwargs)`. `chain` and
`group` compile into a `Workflow` (a DAG of named steps); `start` stores the run and sends its first steps.

State: the `<PREFIX>_WORKFLOWS` key-value bucket (see the key layout below). Changes are compare-and-swaps or
creates (a create fails when the key exists): never a lock.

The engine runs in every Worker (`WorkflowHooks`), on the hooks of the settle path:

- a step's value is recorded and its successors are started in `on_job_end`, in the handler's thread, BEFORE
  the delivery is acked: a crash anywhere in there redelivers the step, which runs again (at least once);
- exactly-once start: a successor whose inputs are all in is claimed by creating its key (`starting`); one
  creator wins, whoever else gets there (the other input of a fan-in, a redelivered step). The winner sends it as
  job `wf-<run>-<step>` and marks it `queued`. Anyone who finds it still `starting` (its claimer died before the
  PubAck or the mark) sends it again under the same id: the queue drops it inside Settings.duplicate_window
  (2 min by default; a redelivery comes after ack_wait, 30 s). Beyond the window a second copy could only be
  stored if the first was stored, the mark was lost, the successor has not started yet, and the step's
  redelivery ran for longer than the window: `queued`/`running` are the real guard, the window the backstop;
- failure: a DEAD_LETTERED fate (`on_settled`, after the dead letter's PubAck and the term) fails the step and
  the run and skips the step's dependents (`record_failure`). A crash between the two leaves the run running:
  `WorkflowRun.status()`, and `result()` every REPAIR_EVERY seconds, look up each unfinished step's dead letter
  by its job id (`reconcile`) and record it. A dead letter of a step that had succeeded (a redelivery past its
  attempts) changes nothing. A step whose value is too large for its record, or one of whose successors is
  refused for good (InvalidJob, JobTooLarge, QueueFull), is recorded failed (that successor, for a refusal)
  in `on_job_end`; a ConnectionError there is only logged (the step is acked; see docs/workflows.md);
- a job is a step only if its header names the step AND its id is the step's `wf-<run>-<step>` (`step_of`):
  a forged or forwarded header alone touches nothing. `_mark_running` also checks that the run has the step,
  so a job naming a run that does not exist (or has expired) creates no key.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.js.api import StorageType

from . import job as jobmod
from .errors import BgjobError, InvalidJob, QueueFull, ResultTooLarge, SendJobsError, exception_text
from .headers import WORKFLOW_STEP, cut_text
from .hooks import Failure, Fate, FateKind, WorkerHooks
from .job import JobSpec
from .result import Complete
from .topology import WORKFLOWS_BUCKET

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

    from .client import Client
    from .core import Core
    from .job import Job
    from .result import Result

log = logging.getLogger("bgjob.workflows")

__all__ = [
    "Chain", "DuplicateStep", "Group", "Signature", "StepStatus", "UnknownStep", "Workflow", "WorkflowCancelled",
    "WorkflowCycle", "WorkflowError", "WorkflowFailed", "WorkflowHooks", "WorkflowNotFound", "WorkflowRun",
    "WorkflowStatus", "chain", "group", "list_runs", "signature", "start",
]  # fmt: skip


class _NoValue:
    """The `previous` of a first step: nothing to prepend."""

    def __repr__(self) -> str:
        return "<no value>"


NO_VALUE: Any = _NoValue()


@dataclasses.dataclass(frozen=True)
class Signature:
    """One step's call: `job_type` with positional `args`, keyword `kwargs` and send `options`.

    `options` are `Client.send_job` keyword options (queue, delay, deadline, max_attempts, target, ...). The
    wire-format arg of a typed function job is `{"args": [...], "kwargs": {...}}` (see `arg`); any handler that
    reads that shape (a typed job, or a plain Mux handler) can be a step.
    """

    job_type: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: whether the call needs a previous step's result as its first argument: True (it lacks exactly that), False
    #: (it is complete), None (unknown: `bgjob.signature` by name, or a call that fits both ways). A typed job's
    #: `.s()` knows; a workflow refuses at build time a step whose place contradicts it.
    takes_previous: bool | None = None

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


# -- building workflows ---------------------------------------------------------------------------------------------
_STEP_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: send options a step's Signature may carry (its job id is the workflow's: `wf-<run>-<step>`).
STEP_OPTIONS = frozenset({"queue", "delay", "deadline", "max_attempts", "store_result", "sensitive", "request_id",
                          "headers", "target", "partition_key", "target_timeout"})  # fmt: skip
#: how long a run's records are kept in the bucket (seconds): a run must finish within this.
RUN_TTL = 7 * 24 * 3600.0
#: the bucket's name after the prefix (`<PREFIX>_WORKFLOWS`).
BUCKET_SUFFIX = WORKFLOWS_BUCKET


class WorkflowError(BgjobError, ValueError):
    """A workflow was refused before anything was sent (an empty one, a bad step name or option)."""


class DuplicateStep(WorkflowError):
    """Two steps of a Workflow share a name."""


class UnknownStep(WorkflowError):
    """A step's `after` names a step the Workflow does not have."""


class WorkflowCycle(WorkflowError):
    """The steps' `after` lists form a cycle; `cycle` lists the step names on it."""

    def __init__(self, message: str, cycle: list[str]) -> None:
        super().__init__(message)
        self.cycle = cycle


class WorkflowNotFound(BgjobError, LookupError):
    """No run with that id in the `<PREFIX>_WORKFLOWS` bucket (never started, or older than RUN_TTL)."""


class WorkflowFailed(BgjobError):
    """A step of the run was dead-lettered: `step` names it, `error` is its (scrubbed) error, `reason` its DLQ
    reason."""

    def __init__(self, run_id: str, step: str, error: str | None, reason: str | None = None) -> None:
        super().__init__(f"workflow {run_id} failed at step {step!r}: {error or reason or 'dead-lettered'}")
        self.run_id, self.step, self.error, self.reason = run_id, step, error, reason


class WorkflowCancelled(BgjobError):
    """The run was cancelled (`WorkflowRun.cancel`)."""


@dataclasses.dataclass(frozen=True)
class _Step:
    name: str
    sig: Signature
    after: tuple[str, ...]
    #: where the step's first argument comes from: None, {"s": step} or {"l": [expr, ...]}
    input: Any


class Workflow:
    """A DAG of named steps (dagnats' workflows): `.step(name, sig, after=[...])`, then `client.start(wf)`.

    A step with one step in `after` gets that step's return value as its first argument; a step with several
    gets the list of their values (in `after`'s order); `pass_results=False` gives it none. The run's result
    is a dict {step name: value} of the steps nothing depends on. Names: letters, digits, '_' and '-' (<= 64).

        wf = bgjob.Workflow()
        wf.step("fetch", fetch.s(url))
        wf.step("thumb", thumb.s(), after=["fetch"])
        wf.step("text", ocr.s(), after=["fetch"])
        wf.step("store", store.s(), after=["thumb", "text"])   # gets [thumb's value, text's value]
        run = client.start(wf)
    """

    def __init__(self) -> None:
        self._steps: dict[str, _Step] = {}
        self._output: Any = None

    def step(self, name: str, sig: Signature, after: Iterable[str] = (), *, pass_results: bool = True) -> Workflow:
        """Add step `name` calling `sig` once every step in `after` succeeded; returns the workflow (chainable).

        Raises DuplicateStep, WorkflowError (bad name, a sig that is not a Signature, a bad send option).
        Unknown names in `after` and cycles are refused by `check()` (called by `start`): UnknownStep,
        WorkflowCycle."""
        if not isinstance(name, str) or not _STEP_NAME.fullmatch(name):
            raise WorkflowError(f"invalid step name {name!r}: use letters, digits, '_' and '-' (max 64)")
        if name in self._steps:
            raise DuplicateStep(f"step {name!r} is already in this workflow")
        if not isinstance(sig, Signature):
            raise WorkflowError(f"step {name!r} needs a bgjob.Signature (e.g. fn.s(...)), got {sig!r}")
        after = tuple(dict.fromkeys([after] if isinstance(after, str) else after))
        _check_options(name, sig)
        inp = None if not after or not pass_results else {"s": after[0]} if len(after) == 1 else {
            "l": [{"s": a} for a in after]}  # fmt: skip
        self._steps[name] = _Step(name, sig, after, inp)
        return self

    def check(self) -> None:
        """Refuse what cannot run: no steps (WorkflowError), an `after` naming no step (UnknownStep), a cycle
        (WorkflowCycle naming its steps)."""
        if not self._steps:
            raise WorkflowError("a workflow needs at least one step")
        for step in self._steps.values():
            for dep in step.after:
                if dep not in self._steps:
                    raise UnknownStep(f"step {step.name!r} runs after {dep!r}, which is not a step of this workflow")
            call = f"step {step.name!r} ({step.sig.job_type})"
            if step.sig.takes_previous is True and step.input is None:
                raise WorkflowError(f"{call} lacks its first argument, and no previous step gives it one (it runs "
                                    "first, or with pass_results=False): give it in .s(...)")  # fmt: skip
            if step.sig.takes_previous is False and step.input is not None:
                raise WorkflowError(
                    f"{call} gets the previous step's result as its first argument, but its .s(...) "
                    "is already a complete call: leave that argument out (or pass_results=False)"
                )
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        for root in self._steps:
            if state.get(root):
                continue
            stack: list[tuple[str, Iterator[str]]] = [(root, iter(self._steps[root].after))]
            state[root] = 1
            while stack:
                node, deps = stack[-1]
                prior = next(deps, None)
                if prior is None:
                    state[node] = 2
                    stack.pop()
                elif state.get(prior) == 1:
                    path = [n for n, _ in stack]
                    cycle = [*path[path.index(prior) :], prior]
                    raise WorkflowCycle(f"the steps form a cycle: {' -> '.join(reversed(cycle))}", cycle)
                elif not state.get(prior):
                    state[prior] = 1
                    stack.append((prior, iter(self._steps[prior].after)))

    def definition(self) -> dict[str, Any]:
        """The run's stored definition (checked first, see `check`): steps in order, with their successors."""
        self.check()
        succ: dict[str, list[str]] = {name: [] for name in self._steps}
        for step in self._steps.values():
            for dep in step.after:
                succ[dep].append(step.name)
        sinks = [name for name, nxt in succ.items() if not nxt]
        steps = {}
        for step in self._steps.values():
            steps[step.name] = {"type": step.sig.job_type, "args": _jsonable(step.name, list(step.sig.args)),
                                "kwargs": _jsonable(step.name, dict(step.sig.kwargs)),
                                "options": _encode_options(step.name, step.sig.options), "after": list(step.after),
                                "input": step.input, "next": succ[step.name]}  # fmt: skip
        output = self._output if self._output is not None else {"d": {name: {"s": name} for name in sinks}}
        return {"steps": steps, "sinks": sinks, "output": output}

    def start(self, client: Client | None = None, *, run_id: str | None = None) -> WorkflowRun:
        """`client.start(self)` (default: `bgjob.default_client()`)."""
        if client is None:
            from .client import default_client

            client = default_client()
        return start(client, self, run_id=run_id)


class _Canvas:
    """chain/group: compiled into a Workflow of steps named by position ("0", "1-0", ...)."""

    def __init__(self, items: Iterable[Signature | _Canvas]) -> None:
        self.items = list(items)
        if not self.items:
            raise WorkflowError(f"an empty {type(self).__name__.lower()}")
        for item in self.items:
            if not isinstance(item, (Signature, _Canvas)):
                raise WorkflowError(f"a {type(self).__name__.lower()} holds Signatures, chains and groups, not "
                                    f"{item!r}")  # fmt: skip

    def workflow(self) -> Workflow:
        """This chain/group as a `Workflow` (its steps named by position: "0", "1", "1-0", ...)."""
        wf = Workflow()
        output, _ = _compile(wf, self, "", (), None)
        wf._output = output
        return wf

    def start(self, client: Client | None = None, *, run_id: str | None = None) -> WorkflowRun:
        """Start it (see `Workflow.start`)."""
        return self.workflow().start(client, run_id=run_id)


class Chain(_Canvas):
    """`bgjob.chain(a.s(x), b.s(), c.s())`: each step gets the previous one's value as its first argument; a group
    in a chain is a chord (the next step gets the group's list). The run's result is the last step's value."""


class Group(_Canvas):
    """`bgjob.group(sigs)`: the steps run in parallel; the result is the list of their values, in order."""


def chain(*items: Signature | Chain | Group) -> Chain:
    """A chain of Signatures, groups (chords) and chains; raises WorkflowError when empty."""
    return Chain(items)


def group(*items: Signature | Chain | Group | Iterable[Signature | Chain | Group]) -> Group:
    """A group: `group(a.s(1), b.s(2))` or `group(sig for ...)`; raises WorkflowError when empty."""
    if len(items) == 1 and not isinstance(items[0], (Signature, _Canvas)):
        return Group(items[0])
    return Group(items)  # type: ignore[arg-type]  # several items: each one a step (Group refuses others)


def _compile(wf: Workflow, node: Signature | _Canvas, prefix: str, after: tuple[str, ...],
             inp: Any) -> tuple[Any, tuple[str, ...]]:  # fmt: skip
    """Add `node`'s steps to `wf` after `after`, first argument from `inp`; returns (its output, its exits)."""
    if isinstance(node, Signature):
        name = prefix or "0"
        _check_options(name, node)
        wf._steps[name] = _Step(name, node, after, inp)
        return {"s": name}, (name,)

    def child_name(i: int) -> str:
        return str(i) if not prefix else f"{prefix}-{i}"

    if isinstance(node, Chain):
        for i, child in enumerate(node.items):
            inp, after = _compile(wf, child, child_name(i), after, inp)
        return inp, after
    outs: list[Any] = []
    exits: list[str] = []
    for i, child in enumerate(node.items):
        out, ex = _compile(wf, child, child_name(i), after, inp)
        outs.append(out)
        exits.extend(ex)
    return {"l": outs}, tuple(exits)


def _check_options(name: str, sig: Signature) -> None:
    unknown = set(sig.options) - STEP_OPTIONS
    if unknown:
        raise WorkflowError(f"step {name!r}: send option(s) {sorted(unknown)} cannot be used in a workflow (a "
                            f"step's job id is wf-<run>-<step>); allowed: {sorted(STEP_OPTIONS)}")  # fmt: skip
    # Checked here, not when the step's predecessors are done: a bad one would fail the run half-way.
    target, key = sig.options.get("target"), sig.options.get("partition_key")
    try:
        if target is not None:
            jobmod.validate_claim(target)
        if key is not None:
            jobmod.validate_partition_key(key)
        timeout = jobmod.validate_target_timeout(sig.options.get("target_timeout"))
    except InvalidJob as exc:
        raise WorkflowError(f"step {name!r}: {exc}") from None
    if target is not None and key is not None:
        raise WorkflowError(f"step {name!r}: a job cannot have both a target and a partition_key")
    if timeout is not None and target is None:
        raise WorkflowError(f"step {name!r}: target_timeout needs a target (the claim it waits for)")


def _jsonable(name: str, value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, default=_to_json))
    except (TypeError, ValueError) as exc:
        raise WorkflowError(f"step {name!r}: its arguments cannot be stored as JSON: {exc}") from None


def _to_json(value: Any) -> Any:
    try:
        from pydantic_core import to_jsonable_python
    except ImportError:  # pragma: no cover - pydantic is optional
        raise TypeError(f"{type(value).__name__} is not JSON") from None
    return to_jsonable_python(value)


def _encode_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key in ("delay", "deadline") and isinstance(value, timedelta):
            value = {"seconds": value.total_seconds()}
        elif key == "target_timeout" and value is not None:  # checked by _check_options: seconds as a float
            value = jobmod.validate_target_timeout(value)
        elif key in ("delay", "deadline") and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = {"seconds": float(value)}
        elif key == "deadline" and isinstance(value, datetime):
            if value.tzinfo is None:
                raise WorkflowError(f"step {name!r}: deadline must be an aware datetime")
            value = {"at": value.isoformat()}
        elif key == "sensitive" and value is not None:
            value = list(value)
        out[key] = value
    encoded: dict[str, Any] = _jsonable(name, out)
    return encoded


def _decode_options(options: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(options)
    for key in ("delay", "deadline"):
        value = out.get(key)
        if isinstance(value, dict):
            out[key] = timedelta(seconds=value["seconds"]) if "seconds" in value else datetime.fromisoformat(
                value["at"])  # fmt: skip
    return out


# -- state in the <PREFIX>_WORKFLOWS bucket -----------------------------------------------------------------------
# Keys of run R: `R.run` (definition and run state), `R.s.<step>` (one step's state: created by whoever starts
# the step, which is what makes a start happen once), `R.in.<step>.<input>` (an input that arrived at a fan-in
# step), `R.in.=end.<step>` (a step nothing depends on that finished; '=' is in no step name). A key that
# changes changes by compare-and-swap (update with the revision read); the others are created once. No locks.
def _run_key(run: str) -> str:
    return f"{run}.run"


def _step_key(run: str, step: str) -> str:
    return f"{run}.s.{step}"


def step_job_id(run: str, step: str) -> str:
    """The job id of step `step` of run `run`: `wf-<run>-<step>` (deterministic: a second send is dropped by the
    queue's duplicate window)."""
    return f"wf-{run}-{step}"


async def _bucket(core: Core) -> KeyValue:
    kv = await core.bucket(BUCKET_SUFFIX, ttl=RUN_TTL, storage=StorageType.FILE,
                           description="bgjob workflow runs and their steps' states")  # fmt: skip
    assert kv is not None
    return kv


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


async def _get(kv: KeyValue, key: str) -> tuple[dict[str, Any] | None, int]:
    """(value, revision) of `key`; (None, 0) when missing or deleted."""
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None, 0
    if not entry.value:
        return None, 0
    return json.loads(entry.value), entry.revision or 0


async def _cas(kv: KeyValue, key: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None],
               known: tuple[dict[str, Any] | None, int] | None = None) -> dict[str, Any] | None:  # fmt: skip
    """Apply `change(current)` to `key` by compare-and-swap until it lands; `change` returns the new value or
    None for no change. `known`: a (value, revision) this process wrote last, tried first (saves a read).
    Returns the value the key holds afterwards."""
    while True:
        current, rev = known if known is not None else await _get(kv, key)
        known = None
        new = change(copy.deepcopy(current) if current is not None else None)
        if new is None:
            return current
        try:
            if rev == 0:
                await kv.create(key, _dumps(new))
            else:
                await kv.update(key, _dumps(new), last=rev)
        except nats.js.errors.KeyWrongLastSequenceError:
            continue
        return new


_PENDING_STATES = frozenset({"starting", "queued"})
#: bytes kept free under the server's max_payload for a KV record's subject and headers.
_KV_RESERVE = 1024
_TERMINAL = frozenset({"succeeded", "failed", "skipped", "cancelled"})


class _Defs:
    """Run definitions, cached per process: they never change once a run is started."""

    def __init__(self, size: int = 1024) -> None:
        self._cache: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._size = size

    async def get(self, kv: KeyValue, run: str) -> dict[str, Any] | None:
        found = self._cache.get(run)
        if found is not None:
            return found
        record, _ = await _get(kv, _run_key(run))
        if record is None:
            return None
        definition: dict[str, Any] = record["def"]
        self._cache[run] = definition
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return definition


_defs = _Defs()


async def _value_of(kv: KeyValue, run: str, expr: Any, known: dict[str, Any]) -> Any:
    """Evaluate an input/output expression from the steps' stored results (`known`: results already read)."""
    if "s" in expr:
        name = expr["s"]
        if name not in known:
            record, _ = await _get(kv, _step_key(run, name))
            if record is None or record.get("state") != "succeeded":
                raise RuntimeError(f"step {name!r} of workflow {run} has no result")
            known[name] = record.get("result")
        return known[name]
    if "l" in expr:
        return [await _value_of(kv, run, item, known) for item in expr["l"]]
    return {key: await _value_of(kv, run, item, known) for key, item in expr["d"].items()}


@dataclasses.dataclass
class _Start:
    """A step this process must publish (it won its key's create, or found it still `starting`)."""

    step: str
    spec: JobSpec
    revision: int


async def _claim(kv: KeyValue, run: str, definition: dict[str, Any], step: str, known: dict[str, Any],
                 ) -> _Start | None:  # fmt: skip
    """Start `step` once: create its key as `starting` (one creator wins, by compare-and-swap); the winner (or
    anyone finding it still `starting`, whose starter may have died before publishing) gets a _Start."""
    spec = definition["steps"][step]
    job_id = step_job_id(run, step)
    try:
        revision = await kv.create(_step_key(run, step), _dumps({"state": "starting", "job_id": job_id,
                                                                  "queued_at": time.time()}))  # fmt: skip
    except nats.js.errors.KeyWrongLastSequenceError:
        record, revision = await _get(kv, _step_key(run, step))
        if record is None or record.get("state") != "starting":
            return None  # queued, running, finished, skipped or cancelled: not ours to send
    previous = NO_VALUE if spec["input"] is None else await _value_of(kv, run, spec["input"], known)
    sig = Signature(spec["type"], tuple(spec["args"]), spec["kwargs"])
    options = _decode_options(spec["options"])
    headers = {**(options.pop("headers", None) or {}), WORKFLOW_STEP: f"{run}/{step}"}
    return _Start(step, JobSpec(sig.job_type, sig.arg(previous), job_id=job_id, headers=headers, **options), revision)


async def _mark_queued(kv: KeyValue, run: str, starts: list[_Start]) -> None:
    """`starting` -> `queued` once the job is stored (a conflict means its worker already marked it running)."""

    async def one(start: _Start) -> None:
        record = {"state": "queued", "job_id": step_job_id(run, start.step), "queued_at": time.time()}
        try:
            await kv.update(_step_key(run, start.step), _dumps(record), last=start.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            pass

    await asyncio.gather(*(one(s) for s in starts))


async def _arrive(core: Core, kv: KeyValue, run: str, at: str, name: str, needed: Iterable[str]) -> bool:
    """Mark `name` arrived at `at` (a fan-in step, or `=end` for the run's end): its own key `<run>.in.<at>.<name>`,
    written once, no contention however many arrive together; then count the arrived (one request: the
    bucket's subjects under `<run>.in.<at>.`). True when every name in `needed` is in. Of inputs finishing
    together at least the last writer sees them all (the stream is linearizable); several may: the claim's
    create is what starts a step once."""
    try:
        await kv.create(f"{run}.in.{at}.{name}", b"1")
    except nats.js.errors.KeyWrongLastSequenceError:
        pass  # arrived before (a redelivered step)
    prefix = f"$KV.{core.topology.workflows_bucket}.{run}.in.{at}."
    info = await core.js.stream_info(f"KV_{core.topology.workflows_bucket}", subjects_filter=prefix + "*")
    arrived = {subject[len(prefix) :] for subject in (info.state.subjects or {})}
    return set(needed) <= arrived


async def _create_run(core: Core, run: str, definition: dict[str, Any]) -> list[_Start]:
    kv = await _bucket(core)
    record = {"v": 1, "id": run, "state": "running", "created_at": time.time(), "def": definition}
    try:
        await kv.create(_run_key(run), _dumps(record))
    except nats.js.errors.KeyWrongLastSequenceError:
        found, _ = await _get(kv, _run_key(run))
        if found is None or found.get("def") != definition:
            raise WorkflowError(f"a different workflow run {run!r} exists already") from None
        # the same run started again (its first start died midway): start what was not started
    roots = [name for name, spec in definition["steps"].items() if not spec["after"]]
    starts = await asyncio.gather(*(_claim(kv, run, definition, name, {}) for name in roots))
    return [s for s in starts if s is not None]


def start(client: Client, workflow: Workflow | Chain | Group, *, run_id: str | None = None) -> WorkflowRun:
    """Start `workflow` (a Workflow, chain or group) on `client`; returns its WorkflowRun once its first steps are
    stored in their queues.

    `run_id` (letters, digits, '_', '-'; <= 64): give one to make the start idempotent: starting the same
    workflow again under the same id starts only what the first start did not. Raises WorkflowError,
    UnknownStep, WorkflowCycle (nothing sent), InvalidJob, ConnectionError."""
    if isinstance(workflow, _Canvas):
        workflow = workflow.workflow()
    if not isinstance(workflow, Workflow):
        raise WorkflowError(f"start needs a bgjob.Workflow, chain or group, got {workflow!r}")
    definition = workflow.definition()
    run = run_id if run_id is not None else uuid.uuid4().hex
    if not isinstance(run, str) or not _RUN_ID.fullmatch(run):
        raise WorkflowError(f"invalid run id {run!r}: use letters, digits, '_' and '-' (max 64)")
    for name, spec in definition["steps"].items():  # refused here, before anything is stored
        jobmod.validate_type(spec["type"])
        jobmod.validate_job_id(step_job_id(run, name))
    starts = client.run(_create_run, run, definition)
    if starts:
        client.send_jobs([s.spec for s in starts])
        client.run(lambda core: _mark_queued_core(core, run, starts))
    return WorkflowRun(client, run)


async def _mark_queued_core(core: Core, run: str, starts: list[_Start]) -> None:
    await _mark_queued(await _bucket(core), run, starts)


# -- the engine, in the worker: hooks ---------------------------------------------------------------------------
def step_of(job: Job) -> tuple[str, str] | None:
    """(run id, step name) of a workflow step's job; None for other jobs.

    A job is a step only when its X-Bgjob-Workflow header reads `<run>/<step>` AND its id is that step's
    `wf-<run>-<step>`: the header alone is not enough (any sender can set a header, and a handler forwarding its
    headers to a child job would make the child pass for the step); other jobs are ignored entirely."""
    value = job.headers.get(WORKFLOW_STEP) if job.headers else None
    if not value or "/" not in value:
        return None
    run, _, step = value.partition("/")
    if not (_RUN_ID.fullmatch(run) and _STEP_NAME.fullmatch(step)) or job.id != step_job_id(run, step):
        return None
    return run, step


async def _mark_running(core: Core, run: str, step: str, attempt: int) -> tuple[dict[str, Any] | None, int] | None:
    """The step's state becomes `running` (a finished one's stays); returns the (value, revision) written, for
    the step's end to update without reading it again (None when nothing was written, or the run does not exist
    or has no such step: no key is created for it)."""
    kv = await _bucket(core)
    definition = await _defs.get(kv, run)
    if definition is None or step not in definition["steps"]:
        return None

    def change(cur: dict[str, Any] | None) -> dict[str, Any] | None:
        if cur is not None and cur.get("state") in _TERMINAL:
            return None
        now = time.time()
        new = dict(cur or {"job_id": step_job_id(run, step)})
        new.update(state="running", attempts=attempt, last_started_at=now)
        new.setdefault("started_at", now)
        return new

    key = _step_key(run, step)
    while True:
        current, rev = await _get(kv, key)
        new = change(copy.deepcopy(current) if current is not None else None)
        if new is None:
            return None
        try:
            rev = await kv.create(key, _dumps(new)) if rev == 0 else await kv.update(key, _dumps(new), last=rev)
        except nats.js.errors.KeyWrongLastSequenceError:
            continue
        return new, rev


async def _complete(core: Core, run: str, step: str, value: Any,
                    known: tuple[dict[str, Any] | None, int] | None = None) -> list[_Start]:  # fmt: skip
    """Record step `step`'s value and claim its successors (those whose inputs are all in); returns what this
    process must publish. Idempotent: a redelivered step keeps its first value and claims nothing twice."""
    kv = await _bucket(core)
    definition = await _defs.get(kv, run)
    if definition is None or step not in definition["steps"]:
        log.warning("bgjob: job of workflow %s step %s finished, but the run is unknown (expired?)", run, step)
        return []

    limit = core.max_payload - _KV_RESERVE

    def change(cur: dict[str, Any] | None) -> dict[str, Any] | None:
        if cur is not None and cur.get("state") in _TERMINAL:
            return None
        new = dict(cur or {"job_id": step_job_id(run, step)})
        new.update(state="succeeded", result=value, finished_at=time.time())
        size = len(_dumps(new))
        if size > limit:  # the KV put would be refused by the client (MaxPayloadError): say what is wrong
            value_size = len(_dumps(value))
            raise ResultTooLarge("return value", value_size, max(0, limit - (size - value_size)))
        return new

    record = await _cas(kv, _step_key(run, step), change, known)
    assert record is not None
    if record.get("state") != "succeeded":  # failed before (a dead letter retried by hand): the run moved on
        return []
    inputs = {step: record.get("result")}
    starts: list[_Start] = []
    for nxt in definition["steps"][step]["next"]:
        needed = definition["steps"][nxt]["after"]
        if len(needed) > 1 and not await _arrive(core, kv, run, nxt, step, needed):
            continue
        claimed = await _claim(kv, run, definition, nxt, inputs)
        if claimed is not None:
            starts.append(claimed)
    if not definition["steps"][step]["next"] and await _arrive(core, kv, run, "=end", step, definition["sinks"]):
        await _cas(kv, _run_key(run), lambda cur: None if cur is None or cur["state"] != "running" else
                   {**cur, "state": "succeeded", "finished_at": time.time()})  # fmt: skip
    return starts


def _dependents(definition: dict[str, Any], step: str) -> list[str]:
    seen: dict[str, None] = {}
    todo = list(definition["steps"][step]["next"])
    while todo:
        name = todo.pop(0)
        if name not in seen:
            seen[name] = None
            todo.extend(definition["steps"][name]["next"])
    return list(seen)


async def record_failure(core: Core, run: str, step: str, error: str | None, reason: str | None,
                         traceback: str | None = None) -> None:  # fmt: skip
    """Step `step` was dead-lettered: it is `failed`, the run is `failed` (naming the first failed step), and
    every step depending on it is `skipped` (its key created so: nothing can start it). Idempotent."""
    kv = await _bucket(core)
    definition = await _defs.get(kv, run)
    if definition is None or step not in definition["steps"]:
        return
    now = time.time()

    def step_change(cur: dict[str, Any] | None) -> dict[str, Any] | None:
        if cur is not None and cur.get("state") in _TERMINAL:
            return None
        new = dict(cur or {"job_id": step_job_id(run, step)})
        new.update(state="failed", error=cut_text(error or "", 4096), reason=reason, finished_at=now,
                   traceback=cut_text(traceback, 16384, keep="end") if traceback else None)  # fmt: skip
        return new

    record = await _cas(kv, _step_key(run, step), step_change)
    if record is None or record.get("state") != "failed":
        # A redelivery of a step that had succeeded (its worker died before the ack), dead-lettered (past its
        # attempts, deadline, ...): the step's value stands and the run goes on.
        return
    await _cas(kv, _run_key(run), lambda cur: None if cur is None or cur["state"] != "running" else {
        **cur, "state": "failed", "failed_step": step, "error": cut_text(error or reason or "", 4096),
        "finished_at": now})  # fmt: skip

    async def skip(name: str) -> None:
        try:
            await kv.create(_step_key(run, name), _dumps({"state": "skipped", "because": step, "finished_at": now}))
        except nats.js.errors.KeyWrongLastSequenceError:
            pass

    await asyncio.gather(*(skip(name) for name in _dependents(definition, step)))


class WorkflowHooks(WorkerHooks):
    """The workflow engine in a worker (every `bgjob.Worker` adds one for its own client: a step needs the
    worker's connection and prefix, which a process-wide hook would not know, and a worker that forgot to
    import the engine would otherwise strand every workflow it ran a step of). Jobs without the
    X-Bgjob-Workflow header cost one dict lookup per hook.

    - on_job_start: the step's state becomes `running` (CAS; a finished step's stays).
    - on_job_end (the handler's thread, before the ack): a Complete's value is recorded and the successors
      whose inputs are all in are claimed (created `starting`, CAS: exactly one claimer), published with their
      deterministic ids and marked `queued`. A crash anywhere before the ack redelivers the step: it runs again,
      keeps its first value and re-publishes a successor still `starting` (dropped by the duplicate window if
      the first publish landed); one already `queued`/`running`/finished is never sent again.
    - on_settled: a DEAD_LETTERED step fails the run (record_failure, in a task on the loop: it must not block).
      A crash between the dead letter and that record is repaired by `WorkflowRun.status()`/`result()`, which
      look up the dead letter of each unfinished step (`reconcile`).
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._tasks: set[asyncio.Task[Any]] = set()
        #: job id -> the (value, revision) of its step's key as on_job_start wrote it (read by on_job_end).
        self._written: dict[str, tuple[dict[str, Any] | None, int]] = {}

    def on_job_start(self, job: Job) -> None:
        ref = step_of(job)
        if ref is not None:
            try:
                written = self._client.run(_mark_running, ref[0], ref[1], job.attempt)
                if written is not None:
                    self._written[job.id] = written
            except Exception:
                log.warning("bgjob: could not mark step %s of workflow %s running", ref[1], ref[0], exc_info=True)

    def on_job_end(self, job: Job, outcome: Result | Failure) -> None:
        ref = step_of(job)
        if ref is None:
            return
        known = self._written.pop(job.id, None)
        if not isinstance(outcome, Complete):
            return
        run, step = ref
        try:
            value = json.loads(json.dumps(outcome.value, default=_to_json))
        except (TypeError, ValueError) as exc:
            self._client.run(record_failure, run, step, f"{type(exc).__name__}: the step's return value cannot "
                             f"be stored as JSON: {exc}", "result")  # fmt: skip
            return
        # A permanent refusal fails the step (or the successor) and the run. Other errors (NATS unreachable)
        # propagate to HookSet (logged, counted): the ack still goes out; see the module docstring.
        try:
            starts = self._client.run(_complete, run, step, value, known)
        except ResultTooLarge as exc:
            self._client.run(record_failure, run, step, f"{exception_text(exc)}: the step's value cannot be "
                             "stored in its workflow record", "result")  # fmt: skip
            return
        if starts:
            sent = self._send(run, starts)
            if sent:
                self._client.run(_mark_queued_core, run, sent)

    def _send(self, run: str, starts: list[_Start]) -> list[_Start]:
        """Publish the claimed successors; one refused for good (InvalidJob, JobTooLarge, QueueFull) is recorded
        failed, failing the run. Returns those stored. Raises what is not a refusal (ConnectionError, ...)."""
        try:
            self._client.send_jobs([s.spec for s in starts])
            return starts
        except (InvalidJob, QueueFull, SendJobsError) as exc:
            first = exc
        sent = []
        for start in starts:  # one by one (the same ids: a stored one is dropped as a duplicate): who is refused?
            try:
                if len(starts) > 1 or isinstance(first, SendJobsError):
                    self._client.send_jobs([start.spec])
                else:
                    raise first
            except (InvalidJob, QueueFull) as exc:
                log.error("bgjob: step %s of workflow %s was refused: %s", start.step, run, exc)
                self._client.run(record_failure, run, start.step, f"{exception_text(exc)} (sending the step's job)",
                                 "refused")  # fmt: skip
                continue
            sent.append(start)
        return sent

    def on_settled(self, job: Job, outcome: Result | Failure, fate: Fate) -> None:
        if fate.kind is not FateKind.DEAD_LETTERED:
            return
        ref = step_of(job)
        core = self._client._core
        if ref is None or core is None:
            return
        task = asyncio.get_running_loop().create_task(record_failure(core, ref[0], ref[1], fate.error, fate.reason,
                                                                     fate.traceback))  # fmt: skip
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("bgjob: could not record a workflow step's failure (status() repairs it from the DLQ): %s",
                      task.exception())  # fmt: skip


# -- reading and controlling a run --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StepStatus:
    """One step of a run: `state` is pending (not started, or queued), running, succeeded, failed, skipped or
    cancelled; times are aware UTC datetimes (None until they happen); `error`/`reason` for a failed step,
    `because` (the failed step) for a skipped one, `result` (JSON) for a succeeded one."""

    name: str
    job_type: str
    job_id: str
    after: tuple[str, ...]
    state: str
    attempts: int = 0
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    reason: str | None = None
    traceback: str | None = None
    because: str | None = None
    result: Any = None

    @property
    def duration(self) -> float | None:
        """Seconds from its first start to its end (None unless both are known)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclasses.dataclass(frozen=True)
class WorkflowStatus:
    """A run: `state` running, succeeded, failed or cancelled; `steps` in definition order."""

    id: str
    state: str
    created_at: datetime | None
    finished_at: datetime | None
    failed_step: str | None
    error: str | None
    steps: dict[str, StepStatus]

    def counts(self) -> dict[str, int]:
        """How many steps are in each state."""
        return dict(collections.Counter(s.state for s in self.steps.values()))


def _time(value: Any) -> datetime | None:
    return datetime.fromtimestamp(value, timezone.utc) if isinstance(value, (int, float)) else None


def _status(run: str, record: dict[str, Any], steps: dict[str, dict[str, Any] | None]) -> WorkflowStatus:
    out = {}
    for name, spec in record["def"]["steps"].items():
        cur = steps.get(name) or {}
        state = cur.get("state", "pending")
        out[name] = StepStatus(
            name=name, job_type=spec["type"], job_id=step_job_id(run, name), after=tuple(spec["after"]),
            state="pending" if state in _PENDING_STATES else state, attempts=cur.get("attempts", 0),
            queued_at=_time(cur.get("queued_at")), started_at=_time(cur.get("started_at")),
            finished_at=_time(cur.get("finished_at")), error=cur.get("error"), reason=cur.get("reason"),
            traceback=cur.get("traceback"), because=cur.get("because"), result=cur.get("result"),
        )  # fmt: skip
    return WorkflowStatus(run, record["state"], _time(record.get("created_at")), _time(record.get("finished_at")),
                          record.get("failed_step"), record.get("error"), out)  # fmt: skip


async def _read(core: Core, run: str) -> tuple[dict[str, Any], dict[str, dict[str, Any] | None]]:
    kv = await _bucket(core)
    record, _ = await _get(kv, _run_key(run))
    if record is None:
        raise WorkflowNotFound(f"no workflow run {run!r}")
    names = list(record["def"]["steps"])
    found = await asyncio.gather(*(_get(kv, _step_key(run, name)) for name in names))
    return record, {name: value for name, (value, _) in zip(names, found, strict=True)}


async def reconcile(core: Core, run: str) -> int:
    """Record the failure of every unfinished step of `run` that has a dead letter (its worker died between the
    dead letter and recording it); returns how many were found."""
    from .dead_letters import _find
    from .errors import DeadLetterNotFound

    record, steps = await _read(core, run)
    if record["state"] != "running":
        return 0
    found = 0
    for name in record["def"]["steps"]:
        cur = steps.get(name)
        if cur is None or cur.get("state") in _TERMINAL:
            continue
        try:
            letter = await _find(core, step_job_id(run, name))
        except DeadLetterNotFound:
            continue
        await record_failure(core, run, name, letter.error, letter.reason, letter.traceback)
        found += 1
    return found


async def _status_of(core: Core, run: str, repair: bool) -> WorkflowStatus:
    if repair:
        await reconcile(core, run)
    return _status(run, *(await _read(core, run)))


async def _cancel(core: Core, run: str) -> bool:
    kv = await _bucket(core)
    now = time.time()
    after = await _cas(kv, _run_key(run), lambda cur: None if cur is None or cur["state"] != "running" else {
        **cur, "state": "cancelled", "finished_at": now})  # fmt: skip
    if after is None:
        raise WorkflowNotFound(f"no workflow run {run!r}")
    if after["state"] != "cancelled" or after.get("finished_at") != now:
        return False

    async def stop(name: str) -> None:
        try:
            await kv.create(_step_key(run, name), _dumps({"state": "cancelled", "finished_at": now}))
        except nats.js.errors.KeyWrongLastSequenceError:
            pass

    await asyncio.gather(*(stop(name) for name in after["def"]["steps"]))
    return True


async def _result(core: Core, run: str) -> tuple[str, Any]:
    record, _ = await _get(await _bucket(core), _run_key(run))
    if record is None:
        raise WorkflowNotFound(f"no workflow run {run!r}")
    if record["state"] == "succeeded":
        return "succeeded", await _value_of(await _bucket(core), run, record["def"]["output"], {})
    return record["state"], record


async def _wait(core: Core, run: str, timeout: float) -> None:
    """Return when the run's record changes, or after `timeout` seconds."""
    kv = await _bucket(core)
    watcher = await kv.watch(_run_key(run))
    try:
        deadline = time.monotonic() + timeout
        seen_initial = False
        while (left := deadline - time.monotonic()) > 0:
            try:
                entry = await watcher.updates(timeout=left)
            except nats.errors.TimeoutError:
                return
            if entry is None:
                seen_initial = True
                continue
            if seen_initial or (entry.value and json.loads(entry.value).get("state") != "running"):
                return
    finally:
        await watcher.stop()


async def _list_runs(core: Core, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` run records. The runs' keys come from the bucket's subject list (one stream-info
    request, authoritative), then one read per key. Not a KV watch: nats-py's end-of-initial-values marker
    can come before values already delivered (it counts what its callback has handled), which listed no
    runs at all now and then."""
    kv = await _bucket(core)
    bucket = core.topology.workflows_bucket
    prefix = f"$KV.{bucket}."
    info = await core.js.stream_info(f"KV_{bucket}", subjects_filter=prefix + "*.run")
    keys = [subject[len(prefix) :] for subject in (info.state.subjects or {})]
    entries = await asyncio.gather(*(_get_raw(kv, key) for key in keys))
    runs = []
    for key, value in zip(keys, entries, strict=True):
        if value is None:
            continue  # deleted, or gone since the list was read
        try:
            record = json.loads(value)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("id"), str) and _RUN_ID.fullmatch(record["id"]) \
                and isinstance(record.get("created_at", 0), (int, float)):  # fmt: skip
            runs.append(record)
        else:  # not a run bgjob wrote: one unreadable record must not hide the others
            log.warning("bgjob: skipping an unreadable workflow run record %r", key)
    runs.sort(key=lambda r: r.get("created_at", 0), reverse=True)
    return runs[:limit]


async def _get_raw(kv: KeyValue, key: str) -> bytes | None:
    """The bytes `key` holds; None when missing or deleted."""
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None
    return entry.value or None


def list_runs(client: Client, limit: int = 50) -> list[WorkflowStatus]:
    """The newest `limit` runs (newest first) with their steps' states: one watch of the runs' records, then one
    read per step."""

    async def read(core: Core) -> list[WorkflowStatus]:
        out = []
        for record in await _list_runs(core, limit):
            try:
                _, steps = await _read(core, record["id"])
                out.append(_status(record["id"], record, steps))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a malformed record: the rest are shown
                log.warning("bgjob: skipping workflow run %s: its record does not read: %r", record["id"], exc)
        return out

    return client.run(read, idempotent=True)


class WorkflowRun:
    """A started workflow (`client.start(wf)`, or `WorkflowRun(client, run_id)` for one started elsewhere)."""

    def __init__(self, client: Client, run_id: str) -> None:
        self.client = client
        #: the run's id (letters, digits, '_', '-').
        self.id = run_id

    def __repr__(self) -> str:
        return f"WorkflowRun({self.id!r})"

    def status(self) -> WorkflowStatus:
        """The run and each step's state, errors and timings. A step dead-lettered whose failure was never
        recorded (its worker died in between) is found in the DLQ and recorded first. Raises
        WorkflowNotFound, ConnectionError."""
        return self.client.run(_status_of, self.id, True, idempotent=True)

    def result(self, timeout: float | None = None) -> Any:
        """Wait (at most `timeout` seconds; None: for ever) for the run to finish; returns its result: a chain's
        last value, a group's list, a Workflow's {step: value} of the steps nothing depends on. Raises
        WorkflowFailed (naming the step), WorkflowCancelled, TimeoutError, WorkflowNotFound."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last_repair = time.monotonic()
        while True:
            state, value = self.client.run(_result, self.id, idempotent=True)
            if state == "succeeded":
                return value
            if state == "failed":
                raise WorkflowFailed(self.id, value.get("failed_step"), value.get("error"))
            if state == "cancelled":
                raise WorkflowCancelled(f"workflow {self.id} was cancelled")
            if time.monotonic() - last_repair > REPAIR_EVERY:
                self.client.run(reconcile, self.id, idempotent=True)
                last_repair = time.monotonic()
                continue
            wait = REPAIR_EVERY if deadline is None else min(REPAIR_EVERY, deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError(f"workflow {self.id} did not finish within {timeout}s")
            self.client.run(_wait, self.id, wait, timeout=wait + self.client._bound())

    def cancel(self) -> bool:
        """Cancel the run: no step that has not started will start (running and queued steps finish; their
        values are recorded but start nothing). True if this call cancelled it, False if it had finished (or
        was cancelled) already. Raises WorkflowNotFound."""
        return self.client.run(_cancel, self.id)


#: seconds between result()'s checks of the DLQ for an unrecorded failure.
REPAIR_EVERY = 5.0


# -- text, for `bgjob workflow` and manage.py -----------------------------------------------------------------------
def _hms(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment is not None else "-"


def status_lines(status: WorkflowStatus) -> list[str]:
    """`bgjob workflow show ID`: the run, then one line per step (state, attempts, start, duration, error)."""
    head = f"workflow {status.id}: {status.state} (created {_hms(status.created_at)} UTC"
    head += f", finished {_hms(status.finished_at)} UTC)" if status.finished_at else ")"
    lines = [head]
    if status.failed_step:
        lines.append(f"  failed at step {status.failed_step!r}: {cut_text(status.error or '', 300)}")
    lines.append(f"  {'STEP':<16} {'TYPE':<24} {'STATE':<10} {'TRIES':>5}  {'STARTED (UTC)':<19}  {'SECONDS':>8}  "
                 "AFTER / ERROR")  # fmt: skip
    for step in status.steps.values():
        seconds = f"{step.duration:.3f}" if step.duration is not None else "-"
        note = step.error or (f"skipped: {step.because} failed" if step.because else ", ".join(step.after))
        note = " ".join((note or "").split())[:100]
        lines.append(f"  {step.name:<16} {step.job_type:<24} {step.state:<10} {step.attempts:>5}  "
                     f"{_hms(step.started_at):<19}  {seconds:>8}  {note}")  # fmt: skip
    return lines


def list_lines(statuses: list[WorkflowStatus]) -> list[str]:
    """`bgjob workflow list`: one line per run, newest first."""
    if not statuses:
        return ["no workflow runs"]
    lines = [f"{'RUN':<34} {'STATE':<10} {'CREATED (UTC)':<19}  STEPS"]
    for st in statuses:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(st.counts().items()))
        failed = f" (failed at {st.failed_step})" if st.failed_step else ""
        lines.append(f"{st.id:<34} {st.state:<10} {_hms(st.created_at):<19}  {counts}{failed}")
    return lines
