"""Typed function jobs (from ebind's typed registry): `@mux.job` registers a plain function, `fn.send(...)` checks a
call against its signature and type hints before anything is published, and `JobHandle.result()` gives back the
typed return value.

```python
@mux.job(queue="images")
def resize(path: str, width: int = 100) -> str: ...

handle = resize.send("a.png", width=50)   # InvalidJob (nothing published) for a call resize() would refuse
handle.result(timeout=30)                 # "a-50.png"; JobFailed when the job was dead-lettered
```

The validation library is pydantic v2's `TypeAdapter` (the `typed` extra: `pip install 'bgjob[typed]'`): it checks
and converts every type hint Python has (dataclasses, datetimes, enums, unions, `Annotated` constraints, TypedDicts,
pydantic models) to and from JSON with one call each way, its errors say which field of which value is wrong, and
it is already what Django Ninja, FastAPI and most typed Python stacks have installed. msgspec is faster but
converts fewer types (no `Annotated[..., Field(...)]` constraints of pydantic models, its own Struct class
preferred over dataclasses), and a second validation library in the same process is a cost of its own.

Wire format (what a producer that only has the name sends with `send_job(name, arg)`, and what workflows build with
`Signature.arg`): the arg is the JSON object `{"args": [...], "kwargs": {...}}`, each value the JSON form of its
parameter's type (`TypeAdapter(hint).dump_python(value, mode="json")`: a dataclass is an object, a datetime an
ISO 8601 string). A typed job's return value is its `Complete(value)` value, encoded the same way against its
return annotation; `JobHandle.result()` decodes it back.

Checks:
- at the producer (`send`, `s`), strict: a value must already be of its parameter's type (`"50"` is not an int;
  an int is accepted for a float), so a wrong type is refused rather than silently converted;
- at the worker, lenient JSON decoding (an ISO string becomes a datetime, an object a dataclass, a list a tuple);
  an arg that cannot be decoded (a producer that sent the wrong shape by name) is dead-lettered with reason
  `decode`, naming the parameter, without calling the function.

Error messages name the parameter and the type of the value, never the value itself (it may be sensitive).

Job type: `name=` when given, else `<module>.<qualified name>` (`images.tasks.resize`). A function defined in
`__main__` (a script: a worker importing the real module would register another name), a lambda or a function
nested in another (`<locals>` in its name: not importable by a worker) is refused with HandlerError unless given
`name=`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import re
import reprlib
import time
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypedDict, TypeVar, Unpack

from . import job as jobmod
from .errors import ConfigurationError, HandlerError, InvalidJob, InvalidResult, JobFailed, NonRetryable
from .job import Job
from .result import Complete, MoveToDlq, Result
from .retry_policy import RetryPolicy

if TYPE_CHECKING:
    from .client import Client
    from .events import JobState
    from .handler import Mux
    from .middleware.base import Middleware
    from .workflows import Signature

__all__ = ["JobHandle", "TypedJob", "register"]

P = ParamSpec("P")
R = TypeVar("R")


class SendOptions(TypedDict, total=False):
    """The `send_job` keyword options `fn.options(...)` takes (besides `client`), typed as `Client.send_job` takes
    them (seconds or a timedelta for the durations, `deadline` also an aware datetime); store_result is always
    on, `sensitive` is the registration's."""

    queue: str
    delay: timedelta | float | None
    at: datetime | None
    deadline: datetime | timedelta | float | None
    job_id: str | None
    max_attempts: int | None
    request_id: str | None
    headers: Mapping[str, str] | None
    unique_for: timedelta | float | None
    target: str | None
    partition_key: str | None
    target_timeout: timedelta | float | None


#: the `send_job` keyword options `fn.options(...)` takes (besides `client`); store_result is always on.
SEND_OPTIONS = frozenset(SendOptions.__optional_keys__)
_VALUE_KINDS = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _pydantic() -> Any:
    """The pydantic module (v2), or ConfigurationError saying how to install it."""
    try:
        import pydantic

        pydantic.TypeAdapter  # noqa: B018 - pydantic v1 has none
    except (ImportError, AttributeError):
        raise ConfigurationError(
            "typed function jobs (@mux.job) need pydantic v2: pip install 'bgjob[typed]'"
        ) from None
    return pydantic


class _CallError(Exception):
    """A call that does not fit the function; its message names the parameter."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Param:
    """One parameter: its name, kind, whether it has a default and its TypeAdapter."""

    name: str
    kind: inspect._ParameterKind
    required: bool
    adapter: Any
    hint: Any

    def encode(self, value: Any, label: str) -> Any:
        """`value` checked strictly against the hint and turned into its JSON form."""
        from pydantic import ValidationError
        from pydantic_core import PydanticSerializationError

        try:
            checked = self.adapter.validate_python(value, strict=True)
            # The serializer checks what validation takes as it is (the fields of a dataclass instance).
            return self.adapter.dump_python(checked, mode="json", warnings="error")
        except ValidationError as exc:
            raise _CallError(f"{label}: {_describe(exc, value, self.hint)}") from None
        except PydanticSerializationError as exc:
            raise _CallError(f"{label}: {_describe_serialization(exc, value, self.hint)}") from None

    def decode(self, value: Any, label: str) -> Any:
        """The JSON form `value` converted (leniently) into the hint's type."""
        from pydantic import ValidationError

        try:
            return self.adapter.validate_python(value)
        except ValidationError as exc:
            raise _CallError(f"{label}: {_describe(exc, value, self.hint)}") from None


def _type_name(hint: Any) -> str:
    if hint is Any:
        return "Any"
    return hint.__name__ if isinstance(hint, type) else repr(hint).replace("typing.", "")


def _describe(exc: Any, value: Any, hint: Any) -> str:
    """A pydantic ValidationError as one line: where in the value, what was expected, the type given (no values)."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0] if errors else {"loc": (), "msg": str(exc), "type": ""}
    where = ".".join(str(part) for part in first.get("loc", ()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    inside = f" at {where}" if where else ""
    given = type(value).__name__
    article = "an" if given[:1].lower() in "aeiou" else "a"
    return f"expected {_type_name(hint)}, got {article} {given}{inside}: {first.get('msg')}{more}"


def _describe_serialization(exc: Exception, value: Any, hint: Any) -> str:
    """A serializer's refusal (a field of a dataclass instance not of its type, a value without a JSON form) as
    one line naming the field and the types, without the value pydantic's text quotes."""
    text = str(exc)
    expected = re.search(r"Expected `([^`]+)`", text)
    field = re.search(r"field_name='([^']+)'", text)
    given = re.search(r"input_type=([\w.]+)", text)
    if expected and given:
        where = f" whose field {field.group(1)!r}" if field else " holding a value that"
        return (f"expected {_type_name(hint)}, got a {type(value).__name__}{where} is a {given.group(1)}, "
                f"not {expected.group(1)}")  # fmt: skip
    return f"a {type(value).__name__} has no JSON form as {_type_name(hint)}"


def _value_hint(hint: Any) -> Any:
    """The return hint without its Result types (`str | Retry` -> `str`; `Result` -> Any): Results are settled as
    they are, only plain values are encoded."""

    def is_result(part: Any) -> bool:
        return isinstance(part, type) and issubclass(part, Result)

    if is_result(hint):
        return Any
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = [part for part in typing.get_args(hint) if not is_result(part)]
        if not parts:
            return Any
        return functools.reduce(lambda a, b: a | b, parts) if len(parts) > 1 else parts[0]
    return hint


def default_name(fn: Callable[..., Any]) -> str:
    """`<module>.<qualified name>` of `fn`; HandlerError for a function no worker could import by that name."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    shown = getattr(fn, "__name__", repr(fn))
    if not module or not qualname:
        raise HandlerError(f"@mux.job: {shown} has no module or qualified name; give it one with name=")
    if module == "__main__":
        raise HandlerError(f"@mux.job: {qualname} is defined in __main__ (a script), where its job type would be "
                           f"'__main__.{qualname}' in one process and its module's name in a worker that imports "
                           "it: give it a stable one with name=, or move it into a module")  # fmt: skip
    if "<lambda>" in qualname or "<locals>" in qualname:
        what = "a lambda" if "<lambda>" in qualname else "nested in a function"
        raise HandlerError(f"@mux.job: {module}.{qualname} is {what}, so a worker cannot import it by that name: "
                           "give it a job type with name=, or define it at module level")  # fmt: skip
    name = f"{module}.{qualname}"
    try:
        return jobmod.validate_type(name)
    except InvalidJob as exc:
        raise HandlerError(f"@mux.job: {name} is not a valid job type ({exc}); give it one with name=") from None


class _Spec:
    """A function's parameters compiled once: adapters per parameter, how a call binds to them."""

    def __init__(self, fn: Callable[..., Any], name: str, sensitive: frozenset[str]) -> None:
        pydantic = _pydantic()
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError) as exc:
            raise HandlerError(f"@mux.job {name!r}: cannot read the signature of {fn!r} ({exc})") from None
        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except Exception as exc:  # noqa: BLE001 - a NameError of a forward reference, or anything it raises
            raise HandlerError(f"@mux.job {name!r}: cannot resolve the type hints of {fn.__qualname__} "
                               f"({type(exc).__name__}: {exc})") from None  # fmt: skip

        def adapter(what: str, hint: Any) -> Any:
            try:
                return pydantic.TypeAdapter(hint)
            except Exception as exc:  # noqa: BLE001 - PydanticSchemaGenerationError and friends
                raise HandlerError(f"@mux.job {name!r}: {what} has a type pydantic cannot check and encode as "
                                   f"JSON ({_type_name(hint)}: {exc})") from None  # fmt: skip

        self.positional: list[_Param] = []
        self.by_keyword: dict[str, _Param] = {}
        self.var_args: _Param | None = None
        self.var_kwargs: _Param | None = None
        self.required: list[_Param] = []
        for p in signature.parameters.values():
            hint = hints.get(p.name, Any)
            param = _Param(p.name, p.kind, p.default is inspect.Parameter.empty, adapter(f"parameter {p.name!r}", hint),
                           hint)  # fmt: skip
            if p.kind is inspect.Parameter.VAR_POSITIONAL:
                self.var_args = param
                continue
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                self.var_kwargs = param
                continue
            if p.kind in _VALUE_KINDS:
                self.positional.append(param)
            if p.kind is not inspect.Parameter.POSITIONAL_ONLY:
                self.by_keyword[p.name] = param
            if param.required:
                self.required.append(param)
        self.return_hint = _value_hint(hints.get("return", Any))
        self.returns = adapter("the return value", self.return_hint)
        # Sensitive parameters travel as keywords (`{"kwargs": {"card": ...}}`), where their key marks them.
        self.keywords_from: int | None = None
        for key in sensitive:
            named = self.by_keyword.get(key)
            if named is None:
                continue  # a key inside a value (a dataclass field): matched at any depth as it is
            if named.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
                if self.var_args is not None:
                    raise HandlerError(f"@mux.job {name!r}: sensitive parameter {key!r} can be passed positionally "
                                       "and the function has *args, so it cannot always be sent by name (where "
                                       "its key marks it): make it keyword-only (after a *)")  # fmt: skip
                index = self.positional.index(named)
                self.keywords_from = index if self.keywords_from is None else min(self.keywords_from, index)

    def bind(self, label: str, args: Sequence[Any], kwargs: Mapping[str, Any], convert: str,
             first_given: bool = False) -> tuple[list[Any], dict[str, Any]]:  # fmt: skip
        """`args`/`kwargs` matched to the parameters as Python would, each value converted (`"encode"` or
        `"decode"`); `first_given`: the first positional parameter is provided later (a chain step's previous
        result). Raises _CallError naming the parameter."""
        offset = 1 if first_given else 0
        if first_given and not self.positional:
            raise _CallError(f"{label}() takes no positional parameter to receive a previous step's result")
        count = len(args) + offset
        if count > len(self.positional) and self.var_args is None:
            names = ", ".join(p.name for p in self.positional) or "none"
            raise _CallError(f"{label}() takes {len(self.positional)} positional argument(s) ({names}), "
                             f"got {len(args)}{' after the previous result' if first_given else ''}")  # fmt: skip
        out_args = []
        for i, value in enumerate(args):
            j = i + offset
            if j < len(self.positional):
                param = self.positional[j]
                where = f"argument {param.name!r}"
            else:
                assert self.var_args is not None  # more values than positional parameters: refused above without it
                param = self.var_args
                where = f"argument {param.name!r}[{j - len(self.positional)}]"
            out_args.append(getattr(param, convert)(value, f"{label}() {where}"))
        given = {p.name for p in self.positional[:count]}
        out_kwargs = {}
        for key, value in kwargs.items():
            found = self.by_keyword.get(key)
            if found is None:
                if self.var_kwargs is None or not isinstance(key, str):
                    known = [*self.by_keyword]
                    close = difflib.get_close_matches(str(key), known, n=1)
                    hint = (
                        f"; did you mean {close[0]!r}?" if close else f" (its keywords: {', '.join(known) or 'none'})"
                    )
                    raise _CallError(f"{label}() got an unexpected keyword argument {reprlib.repr(key)}{hint}")
                found = self.var_kwargs
                where = f"keyword argument {key!r}"
            elif key in given:
                raise _CallError(f"{label}() got multiple values for argument {key!r}")
            else:
                where = f"argument {key!r}"
            out_kwargs[key] = getattr(found, convert)(value, f"{label}() {where}")
        for param in self.required:
            if param.name not in given and param.name not in kwargs:
                raise _CallError(f"{label}() missing required argument {param.name!r}")
        return out_args, out_kwargs

    def wire(self, args: list[Any], kwargs: dict[str, Any], first_given: bool) -> dict[str, Any]:
        """The wire-format arg; positional values from the first sensitive parameter on are sent by name."""
        start = self.keywords_from
        if start is not None:
            start -= 1 if first_given else 0
            if 0 <= start < len(args):
                offset = 1 if first_given else 0
                for i in range(start, len(args)):
                    kwargs[self.positional[i + offset].name] = args[i]
                del args[start:]
        return {"args": args, "kwargs": kwargs}


class TypedJob(Generic[P, R]):
    """A function registered with `@mux.job`: call it to run it here; `send` / `options(...).send` to run it
    in a worker; `s` for a workflow step. Built by `Mux.job` (see there for the options)."""

    def __init__(self, fn: Callable[P, R], name: str, aliases: tuple[str, ...], spec: _Spec, sensitive: frozenset[str],
                 send_options: Mapping[str, Any], client: Client | None = None, *,
                 partitioned: bool = False) -> None:  # fmt: skip
        self.fn = fn
        #: whether its handler was registered `partitioned=True` (the only way a `partition_key` can work).
        self.partitioned = partitioned
        #: the job type; `aliases` are other types the same function handles (old names, during a rename).
        self.name = name
        self.aliases = aliases
        self._spec = spec
        self._sensitive = sensitive
        self._send_options = dict(send_options)
        self._client = client
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<TypedJob {self.name}{' ' + repr(self._send_options) if self._send_options else ''}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here, now, as a plain call (no check, no job): what Celery's task `__call__` does."""
        return self.fn(*args, **kwargs)

    @property
    def queue(self) -> str:
        """The queue `send` publishes to."""
        queue: str = self._send_options.get("queue", "default")
        return queue

    # -- producing ---------------------------------------------------------------------------------
    def options(self, *, client: Client | None = None, **options: Unpack[SendOptions]) -> TypedJob[P, R]:
        """This job with send options: `queue`, `delay` (seconds or timedelta), `at`, `deadline` (aware datetime,
        timedelta or seconds from now), `job_id` (idempotent sends), `max_attempts`, `request_id`, `headers`,
        `unique_for`, `target` (a placement claim, from ebind), `target_timeout` (seconds > 0 or a timedelta:
        dead-lettered `no_target` when no worker holds the claim by then) and `partition_key` (from dagnats; see
        docs/routing.md), as
        `Client.send_job` takes them (checked when sending; `queue`, `target`, `target_timeout` and
        `partition_key` here already), and `client` (default: `bgjob.default_client()`). Returns a copy
        (chainable: `.options(queue="a").options(delay=5)`); the registered job is unchanged. Raises InvalidJob
        for an option send_job does not have (`store_result` is always on; `sensitive` is the registration's), a
        bad queue, claim, target_timeout or partition key, a `target_timeout` without a `target` (given here or
        before), a `partition_key` for a job whose handler is not partitioned, or both a `target` and a
        `partition_key`."""
        unknown = sorted(set(options) - SEND_OPTIONS)
        if unknown:
            raise InvalidJob(f"{self.name}.options(): unknown option(s) {', '.join(unknown)} (known: client, "
                             f"{', '.join(sorted(SEND_OPTIONS))})")  # fmt: skip
        if "queue" in options:
            jobmod.validate_queue(options["queue"])
        merged = {**self._send_options, **options}
        target, partition_key = options.get("target"), options.get("partition_key")
        if target is not None:
            jobmod.validate_claim(target)
        if partition_key is not None:
            jobmod.validate_partition_key(partition_key)
            if not self.partitioned:
                raise InvalidJob(f"{self.name}.options(): partition_key needs a partitioned handler, and this "
                                 "typed job's is not (partitioned=False): no worker would run the job")  # fmt: skip
        if merged.get("target") is not None and merged.get("partition_key") is not None:
            raise InvalidJob(f"{self.name}.options(): a job cannot have both a target and a partition_key")
        if options.get("target_timeout") is not None:
            try:
                jobmod.validate_target_timeout(options["target_timeout"])
            except InvalidJob as exc:
                raise InvalidJob(f"{self.name}.options(): {exc}") from None
        if merged.get("target_timeout") is not None and merged.get("target") is None:
            raise InvalidJob(f"{self.name}.options(): target_timeout needs a target (the claim it waits for)")
        return TypedJob(self.fn, self.name, self.aliases, self._spec, self._sensitive,
                        merged, client or self._client, partitioned=self.partitioned)  # fmt: skip

    def encode(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The wire-format arg `{"args": [...], "kwargs": {...}}` of this call, checked against the signature and
        type hints. Raises InvalidJob naming the parameter (wrong count, unknown keyword, missing argument,
        a value not of its parameter's type)."""
        return self._encode(args, kwargs, first_given=False)

    def _encode(self, args: Sequence[Any], kwargs: Mapping[str, Any], first_given: bool) -> dict[str, Any]:
        try:
            out_args, out_kwargs = self._spec.bind(self.name, args, kwargs, "encode", first_given)
        except _CallError as exc:
            raise InvalidJob(f"{exc}; nothing was sent") from None
        return self._spec.wire(out_args, out_kwargs, first_given)

    def send(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Check this call against the function's signature and type hints, then enqueue it (with
        store_result, so `JobHandle.result()` works) and return its JobHandle once JetStream has stored it.

        Raises InvalidJob naming the parameter (nothing published): too many or too few positional arguments,
        an unknown or repeated keyword, a missing required argument, a value not of its parameter's type (strict:
        no conversion). Raises what `Client.send_job` raises for the send options (InvalidJob) or the publish
        (ConnectionError, QueueFull, ...).
        """
        arg = self._encode(args, kwargs, first_given=False)
        client = self._client or _default_client()
        job_id = client.send_job(self.name, arg, store_result=True, sensitive=self._sensitive or None,
                                 **self._send_options)  # fmt: skip
        return JobHandle(job_id, self, client)

    # Not `P.args`/`P.kwargs`: a chain step may leave out the first argument (the previous step's result).
    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A workflow step (`bgjob.Signature`) calling this job with `args`/`kwargs` (their JSON forms) and this
        job's send options (its queue included). A chain step gets the previous step's result as its first
        argument: a call that lacks exactly that first argument is accepted too.

        Raises InvalidJob naming the parameter when the call fits neither as it is nor with the first
        positional parameter provided by a previous step.
        """
        from .workflows import Signature

        complete = partial = None
        try:
            complete = self._encode(args, kwargs, first_given=False)
        except InvalidJob as whole:
            whole_error = str(whole).removesuffix("; nothing was sent")
        try:
            partial = self._encode(args, kwargs, first_given=True)
        except InvalidJob as step:
            step_error = str(step).removesuffix("; nothing was sent")
        if complete is None and partial is None:
            raise InvalidJob(
                f"{self.name}.s(...) fits neither as a whole call ({whole_error}) nor as a step "
                f"whose first argument is the previous step's result ({step_error})"
            ) from None
        arg = complete if complete is not None else partial
        assert arg is not None  # one of them fits (raised above otherwise)
        takes_previous = None if complete is not None and partial is not None else partial is not None
        return Signature(self.name, tuple(arg["args"]), arg["kwargs"], {"queue": self.queue, **self._send_options},
                         takes_previous=takes_previous)  # fmt: skip

    # -- the worker side ---------------------------------------------------------------------------
    def decode(self, arg: Any) -> tuple[list[Any], dict[str, Any]]:
        """The typed `(args, kwargs)` of a wire-format arg (JSON values decoded into their parameters' types).
        Raises InvalidJob naming the parameter."""
        args: Any
        kwargs: Any
        if arg is None:
            args, kwargs = [], {}
        elif isinstance(arg, dict) and set(arg) <= {"args", "kwargs"}:
            args, kwargs = arg.get("args", []), arg.get("kwargs", {})
        else:
            args = kwargs = None
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise InvalidJob(
                f'{self.name}: a typed job\'s arg must be {{"args": [...], "kwargs": {{...}}}}, got '
                f"a {type(arg).__name__}{' with keys ' + repr(sorted(arg)) if isinstance(arg, dict) else ''}"
            )
        try:
            return self._spec.bind(self.name, args, kwargs, "decode")
        except _CallError as exc:
            raise InvalidJob(str(exc)) from None

    def handle(self, job: Job) -> Result:
        """The Mux handler: decode `job.arg` (a failure is dead-lettered at once, reason `decode`), call the
        function, settle a returned Result as it is and any other value as `Complete(<its JSON form>)`. A value
        that is not of the declared return type (or has no JSON form) raises NonRetryable (dead-lettered)."""
        try:
            args, kwargs = self.decode(job.arg)
        except InvalidJob as exc:
            return MoveToDlq(f"DecodeError: {exc}", reason="decode")
        value = self.fn(*args, **kwargs)
        if isinstance(value, Result):
            return value
        return Complete(self.encode_return(value))

    def encode_return(self, value: Any) -> Any:
        """`value`'s JSON form by the return annotation; NonRetryable(TypeError) when it does not fit it."""
        from pydantic_core import PydanticSerializationError

        try:
            return self._spec.returns.dump_python(value, mode="json", warnings="error")
        except (PydanticSerializationError, ValueError, TypeError):
            # the type only, never the value or pydantic's text (which quotes it): values may be personal data
            error = TypeError(f"{self.name} returned a {type(value).__name__}, which is not its return type "
                              f"{_type_name(self._spec.return_hint)} or has no JSON form")  # fmt: skip
            raise NonRetryable(error) from None

    def decode_return(self, value: Any) -> R:
        """A stored JSON return value as the declared return type. Raises InvalidResult when it does not fit."""
        from pydantic import ValidationError

        try:
            decoded: R = self._spec.returns.validate_python(value)
            return decoded
        except ValidationError as exc:
            raise InvalidResult(f"the stored result of {self.name} does not decode as its return type: "
                                f"{_describe(exc, value, self._spec.return_hint)}") from None  # fmt: skip


def _default_client() -> Client:
    from .client import default_client

    return default_client()


class JobHandle(Generic[R]):
    """A sent typed job: `id`, `status()`, `result(timeout=...)`. Built by `TypedJob.send`; rebuild one for a known
    id with `JobHandle(job_id, typed_job, client)`."""

    def __init__(self, job_id: str, job: TypedJob[Any, R], client: Client) -> None:
        self.id = job_id
        self.job = job
        self.client = client

    def __repr__(self) -> str:
        return f"<JobHandle {self.job.name} {self.id}>"

    def status(self) -> JobState:
        """The job's `bgjob.JobState`: from its last lifecycle event (`client.job_status`) when the client's
        Settings.events is on, else from its stored result (ready, running, succeeded, dead_lettered; a job
        waiting for a retry is `ready` there; unknown when no result is stored). ConnectionError when NATS
        does not answer."""
        from .errors import ResultNotFound
        from .events import JobState
        from .job_results import ResultStatus

        if self.client.settings.events:
            return self.client.job_status(self.id).state
        try:
            status = self.client.result(self.id).status
        except ResultNotFound:
            return JobState.UNKNOWN
        return {
            ResultStatus.READY: JobState.READY,
            ResultStatus.RUNNING: JobState.RUNNING,
            ResultStatus.SUCCESSFUL: JobState.SUCCEEDED,
            ResultStatus.FAILED: JobState.DEAD_LETTERED,
        }[status]

    def result(self, timeout: float | timedelta | None = None) -> R:
        """Block until the job has finished, at most `timeout` seconds (or a timedelta; None: for ever), and
        return its return value decoded into the declared return type (a dataclass, a datetime, ...).

        Raises JobFailed (`error`, `traceback`, `result`) when the job was dead-lettered; TimeoutError when it has
        not finished in time (it may still run: call again); ResultNotFound when no result is stored (expired,
        or erased); InvalidResult when the stored value does not fit the return type (a worker running another
        version of the function); ConnectionError when NATS does not answer.
        """
        from .job_results import ResultStatus

        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            wait = 60.0 if deadline is None else max(0.0, deadline - time.monotonic())
            stored = self.client.result(self.id, wait=wait)
            if stored.status is ResultStatus.SUCCESSFUL:
                return self.job.decode_return(stored.value)
            if stored.status is ResultStatus.FAILED:
                last = stored.errors[-1] if stored.errors else None
                error, trace = (last.error, last.traceback) if last else (None, None)
                raise JobFailed(f"job {self.id} ({self.job.name}) failed after {stored.attempts} attempt(s): {error}",
                                job_id=self.id, error=error, traceback=trace, result=stored)  # fmt: skip
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} ({self.job.name}) has not finished after {seconds:g}s "
                                   f"(its result is {stored.status.value}); it may still run")  # fmt: skip


def register(mux: Mux, fn: Callable[P, R], *, name: str | None = None, aliases: Collection[str] = (),
             queue: str | None = None, retry_policy: RetryPolicy | None = None,
             time_limit: float | timedelta | None = None, sensitive: Collection[str] | None = None,
             middleware: Sequence[Middleware] | None = None, singleton: bool = False,
             partitioned: bool = False) -> TypedJob[P, R]:  # fmt: skip
    """What `Mux.job` does (documented there): the TypedJob of `fn`, its handler registered under its name and
    aliases (`singleton`/`partitioned` as `Mux.handle` takes them). Nothing is registered when anything is
    refused."""
    if not callable(fn) or isinstance(fn, type) or isinstance(fn, TypedJob):
        raise HandlerError(f"@mux.job registers a function, got {fn!r}")
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise HandlerError(f"@mux.job {getattr(fn, '__qualname__', fn)!r}: an async def cannot be a job (handlers "
                           "run in worker threads); make it a plain def")  # fmt: skip
    job_type = default_name(fn) if name is None else name
    jobmod.validate_type(job_type)
    if isinstance(aliases, str) or not isinstance(aliases, Collection):
        raise HandlerError(f"@mux.job {job_type!r}: aliases must be a list of job types, got {aliases!r}")
    alias_list = tuple(aliases)
    for alias in alias_list:
        jobmod.validate_type(alias)
    names = (job_type, *alias_list)
    taken = [n for n in names if n in mux] or [n for n in set(names) if names.count(n) > 1]
    if taken:
        raise HandlerError(f"@mux.job {job_type!r}: a handler for job type {taken[0]!r} is already registered")
    send_options = {}
    if queue is not None:
        send_options["queue"] = jobmod.validate_queue(queue)
    try:
        keys = jobmod.validate_sensitive(sensitive)
    except InvalidJob as exc:
        raise HandlerError(f"handler for {job_type!r}: {exc}") from exc
    spec = _Spec(fn, job_type, keys)
    typed = TypedJob(fn, job_type, alias_list, spec, keys, send_options, partitioned=partitioned)
    for each in names:  # options are validated by the first; the rest cannot fail after it
        mux.handle(each, typed.handle, sensitive=keys, retry_policy=retry_policy, middleware=middleware,
                   time_limit=time_limit, singleton=singleton, partitioned=partitioned)  # fmt: skip
    return typed
