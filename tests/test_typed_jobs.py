"""Typed function jobs (@mux.job): producer-side checks before anything is published, typed results, JobFailed,
send options, aliases, Results returned by a typed job, sending by name, and the worker's decode failures."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

import bgjob
from bgjob.events import JobState
from bgjob.typed import JobHandle

from .conftest import stream_ids, wait_until

mux = bgjob.Mux()


@dataclass(frozen=True)
class Size:
    width: int
    height: int


@dataclass(frozen=True)
class Thumbnail:
    path: str
    size: Size
    made_at: datetime


@mux.job(name="resize", aliases=["img.resize"])
def resize(path: str, width: int = 100, *, upscale: bool = False) -> str:
    return f"{path}@{width}{'+' if upscale else ''}"


@mux.job
def thumbnail(path: str, size: Size, taken: datetime) -> Thumbnail:
    return Thumbnail(path, size, taken + timedelta(hours=1))


@mux.job(name="broken", retry_policy=bgjob.RetryPolicy(max_attempts=2, base_delay=0.05, jitter=0))
def broken(path: str) -> str:
    raise ValueError(f"no such image: {path}")


@mux.job(name="flaky")
def flaky(n: int) -> int | bgjob.Retry:
    job = bgjob.current_job.get()
    assert job is not None
    if job.attempt == 1:
        return bgjob.Retry(0.05, error="not yet")
    return n * 2


@mux.job(name="gives_up")
def gives_up(n: int) -> int:
    if n < 0:
        return bgjob.MoveToDlq("negative", reason="negative")  # type: ignore[return-value]
    return n


ticks: list[int] = []


@mux.job(name="tick")
def tick(n: int) -> int | bgjob.Reschedule:
    ticks.append(n)
    if n < 2:  # the next run's arg in the wire format, checked as send() checks it
        return bgjob.Reschedule(bgjob.ByAfterTime(0.05), arg=tick.encode(n + 1))
    return n * 10


@mux.job(name="charge", sensitive=["card"])
def charge(amount: int, card: str) -> int:
    return amount


def test_calling_the_function_runs_it_here() -> None:
    assert resize("a.png", 50, upscale=True) == "a.png@50+"
    assert thumbnail.name == f"{__name__}.thumbnail" and resize.name == "resize"
    assert {"resize", "img.resize", thumbnail.name} <= set(mux.types())
    assert resize.__doc__ is None and resize.__name__ == "resize" and resize.__wrapped__ is not None


@pytest.mark.parametrize(
    ("args", "kwargs", "names"),
    [
        ((), {}, "missing required argument 'path'"),
        (("a.png", 1, 2), {}, "takes 2 positional argument(s) (path, width), got 3"),
        (("a.png",), {"widht": 3}, "unexpected keyword argument 'widht'; did you mean 'width'?"),
        (("a.png",), {"path": "b.png"}, "multiple values for argument 'path'"),
        (("a.png", "50"), {}, "argument 'width': expected int, got a str"),
        ((7,), {}, "argument 'path': expected str, got an int"),
        (("a.png",), {"upscale": "yes"}, "argument 'upscale': expected bool, got a str"),
    ],
)
def test_every_refusal_is_raised_before_anything_is_published(client, args, kwargs, names) -> None:
    client.ensure_queue("default")
    with pytest.raises(bgjob.InvalidJob, match="nothing was sent") as refused:
        resize.options(client=client).send(*args, **kwargs)
    assert names in str(refused.value)
    assert stream_ids(client) == []


def test_a_wrong_field_inside_a_dataclass_argument_is_refused_naming_it(client) -> None:
    client.ensure_queue("default")
    bad = Size(10, "20")  # type: ignore[arg-type]
    with pytest.raises(
        bgjob.InvalidJob, match=r"argument 'size': expected Size, got a Size whose field 'height' is a str, not int"
    ):
        thumbnail.options(client=client).send("a.png", bad, datetime.now(UTC))
    with pytest.raises(bgjob.InvalidJob, match=r"argument 'taken': expected datetime, got a str"):
        thumbnail.options(client=client).send("a.png", Size(1, 2), "2024-01-01T00:00:00Z")
    assert stream_ids(client) == []


def test_unknown_send_option_is_refused() -> None:
    with pytest.raises(bgjob.InvalidJob, match=r"unknown option.*store_result"):
        resize.options(store_result=False)


def test_dataclasses_and_datetimes_round_trip_as_arguments_and_return_value(client, start_worker) -> None:
    start_worker(client, mux)
    taken = datetime(2025, 3, 30, 1, 30, tzinfo=UTC)
    handle = thumbnail.options(client=client).send("a.png", Size(640, 480), taken=taken)
    assert isinstance(handle, JobHandle) and handle.id
    made = handle.result(timeout=15)
    assert made == Thumbnail("a.png", Size(640, 480), taken + timedelta(hours=1))
    assert isinstance(made.size, Size) and made.made_at.utcoffset() == timedelta(0)
    assert handle.status() is JobState.SUCCEEDED
    stored = client.result(handle.id)  # the wire form is JSON: a dataclass is an object, a datetime ISO 8601
    assert stored.value == {"path": "a.png", "size": {"width": 640, "height": 480}, "made_at": "2025-03-30T02:30:00Z"}


def test_a_dead_lettered_job_raises_job_failed_with_its_error_and_traceback(client, start_worker) -> None:
    start_worker(client, mux)
    handle = broken.options(client=client).send("a.png")
    with pytest.raises(bgjob.JobFailed) as failed:
        handle.result(timeout=15)
    assert failed.value.job_id == handle.id
    assert failed.value.error == "ValueError: no such image: a.png"
    assert "raise ValueError" in failed.value.traceback
    assert failed.value.result.attempts == 2
    assert handle.status() is JobState.DEAD_LETTERED


def test_result_times_out_while_the_job_has_not_run(client) -> None:
    handle = resize.options(client=client).send("a.png")
    assert handle.status() is JobState.READY
    with pytest.raises(TimeoutError, match=r"has not finished after 0.2s"):
        handle.result(timeout=0.2)


def test_status_comes_from_lifecycle_events_when_they_are_on(make_client, start_worker) -> None:
    client = make_client(events=True)
    handle = resize.options(client=client).send("a.png", width=1)
    assert wait_until(lambda: handle.status() is JobState.READY, message="ready")
    start_worker(client, mux)
    assert handle.result(timeout=15) == "a.png@1"
    assert wait_until(lambda: handle.status() is JobState.SUCCEEDED, message="succeeded event")


def test_options_set_queue_job_id_and_max_attempts(client, start_worker) -> None:
    start_worker(client, mux, queue="images")
    handle = resize.options(client=client, queue="images", job_id="resize-1").send("a.png", 50)
    assert handle.id == "resize-1" and handle.result(timeout=15) == "a.png@50"
    again = resize.options(client=client).options(queue="images", job_id="resize-1").send("a.png", 50)
    assert again.id == "resize-1"  # the same id inside the duplicate window: stored once
    once = broken.options(client=client, queue="images", max_attempts=1).send("b.png")
    with pytest.raises(bgjob.JobFailed) as failed:
        once.result(timeout=15)
    assert failed.value.result.attempts == 1
    assert resize.queue == "default"  # options() made copies


def _keyed(n: int) -> int:
    return n + 1


# Mux.job has no partitioned= (yet): bgjob.typed.register, which it calls, does.
keyed_job = bgjob.typed.register(mux, _keyed, name="keyed", partitioned=True)


def test_options_target_and_partition_key_route_the_job(client, make_client, start_worker) -> None:
    placed = resize.options(client=client, target="region/eu").send("eu.png")
    keyed = keyed_job.options(client=client, partition_key="customer-7").send(41)
    start_worker(make_client(), mux)  # no claim: runs the keyed job only (partitioned needs no claim)
    assert keyed.result(timeout=15) == 42
    assert placed.status() is JobState.READY and stream_ids(client) == []  # waits on its claim's subject
    start_worker(make_client(), mux, claims=["region/eu"])
    assert placed.result(timeout=15) == "eu.png@100"
    step = resize.options(target="primary").s("a.png")
    assert step.options["target"] == "primary"  # a workflow step keeps it


def test_options_target_timeout_is_carried_to_the_job_and_its_workflow_step(client) -> None:
    from .test_placement_claims import waiting_placed

    before = datetime.now(UTC)
    placed = resize.options(client=client, target="primary").options(target_timeout=timedelta(minutes=5))
    handle = placed.send("a.png")
    until = bgjob.job.parse_time(waiting_placed(client)[handle.id]["Bgjob-Target-Until"])
    assert until is not None and before + timedelta(seconds=299) <= until <= datetime.now(UTC) + timedelta(seconds=301)
    assert placed.s("b.png").options["target_timeout"] == timedelta(minutes=5)
    plain = resize.options(client=client, target="primary").send("c.png")
    assert "Bgjob-Target-Until" not in waiting_placed(client)[plain.id]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"target": "a.b"}, "invalid claim"),
        ({"target": 7}, "invalid claim"),
        ({"partition_key": ""}, "invalid partition_key"),
        ({"partition_key": "bad\nkey"}, "invalid partition_key"),
        ({"target": "primary", "target_timeout": 0}, "keyed.options\\(\\): target_timeout must be more than 0"),
        ({"target": "primary", "target_timeout": "60"}, "target_timeout must be seconds"),
        ({"target_timeout": 60}, "target_timeout needs a target"),
    ],
)
def test_options_refuse_a_bad_target_or_partition_key_at_once(options, match) -> None:
    with pytest.raises(bgjob.InvalidJob, match=match):
        keyed_job.options(**options)


def test_options_refuse_a_target_with_a_partition_key_even_across_calls() -> None:
    with pytest.raises(bgjob.InvalidJob, match="both a target and a partition_key"):
        keyed_job.options(target="primary", partition_key="k")
    with pytest.raises(bgjob.InvalidJob, match="both a target and a partition_key"):
        keyed_job.options(target="primary").options(partition_key="k")
    assert keyed_job.options(target="primary").options(target=None).options(partition_key="k")


def test_a_partition_key_for_a_handler_that_is_not_partitioned_is_refused() -> None:
    """No worker serves a partition for it: the job would wait for ever."""
    with pytest.raises(bgjob.InvalidJob, match=r"resize.options\(\): partition_key needs a partitioned handler"):
        resize.options(partition_key="customer-7")
    assert keyed_job.options(partition_key="k").partitioned


def test_a_delayed_send_waits_for_its_time(client, start_worker) -> None:
    start_worker(client, mux)
    handle = resize.options(client=client, delay=1).send("a.png")
    assert handle.status() is JobState.READY  # stored: READY until a worker runs it
    assert handle.result(timeout=15) == "a.png@100"
    assert client.result(handle.id).started_at - client.result(handle.id).enqueued_at >= timedelta(seconds=0.9)


def test_an_alias_runs_the_same_function(client, start_worker) -> None:
    start_worker(client, mux)
    job_id = client.send_job("img.resize", {"args": ["old.png"], "kwargs": {"width": 3}}, store_result=True)
    assert JobHandle(job_id, resize, client).result(timeout=15) == "old.png@3"


def test_a_typed_job_may_return_a_retry_or_move_to_dlq(client, start_worker) -> None:
    start_worker(client, mux)
    handle = flaky.options(client=client).send(21)
    assert handle.result(timeout=15) == 42
    stored = client.result(handle.id)
    assert stored.attempts == 2 and [e.error for e in stored.errors] == ["not yet"]
    moved = gives_up.options(client=client).send(-1)
    with pytest.raises(bgjob.JobFailed, match="negative"):
        moved.result(timeout=15)
    assert wait_until(lambda: client.dlq.list(reason="negative"), message="dead letter")[0].id == moved.id


def test_a_typed_job_may_return_a_reschedule_with_its_next_arg(client, start_worker) -> None:
    start_worker(client, mux)
    handle = tick.options(client=client).send(0)
    wait_until(lambda: ticks == [0, 1, 2], message="three runs, each with the arg the previous one gave")
    assert handle.result(timeout=15) == 20
    with pytest.raises(bgjob.InvalidJob, match="argument 'n': expected int, got a str"):
        tick.encode("3")


def test_a_producer_with_only_the_name_sends_the_wire_format(client, start_worker) -> None:
    start_worker(client, mux)
    arg = {"args": ["b.png"], "kwargs": {"upscale": True}}
    job_id = client.send_job("resize", arg, store_result=True)
    assert client.result(job_id, wait=15).value == "b.png@100+"
    taken = "2025-01-01T00:00:00+00:00"
    job_id = client.send_job(thumbnail.name, {"args": ["c.png", {"width": 1, "height": 2}, taken]}, store_result=True)
    made = JobHandle(job_id, thumbnail, client).result(timeout=15)
    assert made == Thumbnail("c.png", Size(1, 2), datetime(2025, 1, 1, 1, tzinfo=UTC))


def test_an_arg_the_worker_cannot_decode_is_dead_lettered_naming_the_parameter(client, start_worker) -> None:
    calls: list[object] = []
    own = bgjob.Mux()

    @own.job(name="count")
    def count(n: int) -> int:
        calls.append(n)
        return n

    start_worker(client, own)
    bad = client.send_job("count", {"args": ["many"]})
    shape = client.send_job("count", [1, 2])
    letters = wait_until(lambda: len(found := client.dlq.list(reason="decode")) == 2 and found, message="2 dead")
    by_id = {letter.id: letter for letter in letters}
    assert by_id[bad].error.startswith("DecodeError: count() argument 'n': expected int, got a str")
    assert 'must be {"args": [...], "kwargs": {...}}, got a list' in by_id[shape].error
    assert calls == []


def test_a_return_value_not_of_the_return_type_dead_letters_the_job(client, start_worker) -> None:
    own = bgjob.Mux()

    @own.job(name="lies")
    def lies() -> int:
        return "not an int"  # type: ignore[return-value]

    start_worker(client, own)
    handle = lies.options(client=client).send()
    with pytest.raises(bgjob.JobFailed, match="lies returned a str, which is not its return type int") as failed:
        handle.result(timeout=15)
    assert failed.value.result.attempts == 1  # NonRetryable: not retried
    assert "not an int" not in failed.value.error  # the type is named, never the value (personal data)


def test_an_async_def_is_refused_at_registration() -> None:
    """New-user review: it was accepted, then every job of it was dead-lettered (a coroutine is no return value)."""
    own = bgjob.Mux()

    async def coro(n: int) -> int:
        return n

    with pytest.raises(bgjob.HandlerError, match="an async def cannot be a job"):
        own.job(name="coro")(coro)
    assert "coro" not in own


def test_s_says_whether_the_step_needs_a_previous_result() -> None:
    """What a workflow checks at build time: a full call, one lacking its first argument, or either."""
    assert resize.s("a.png", 50).takes_previous is False and resize.s().takes_previous is True
    assert thumbnail.s(Size(1, 2), datetime(2030, 1, 1, tzinfo=UTC)).takes_previous is True
    assert broken.s("x").takes_previous is False
    with pytest.raises(bgjob.InvalidJob, match=r"fits neither as a whole call .* nor as a step whose first"):
        broken.s(1)


def test_sensitive_parameters_travel_by_name_so_they_are_masked() -> None:
    assert charge.encode(10, "4242") == {"args": [10], "kwargs": {"card": "4242"}}
    with pytest.raises(bgjob.InvalidJob) as refused:
        charge.encode(10, 4242)
    assert "4242" not in str(refused.value) and "argument 'card': expected str, got an int" in str(refused.value)
    assert mux.sensitive_keys("charge") == {"card"}


def test_functions_without_a_stable_name_need_one() -> None:
    own = bgjob.Mux()

    def nested(x: int) -> int:
        return x

    with pytest.raises(bgjob.HandlerError, match=r"nested in a function.*name="):
        own.job(nested)
    with pytest.raises(bgjob.HandlerError, match=r"is a lambda.*name="):
        own.job(lambda x: x)
    scope: dict[str, object] = {"__name__": "__main__"}
    exec("def script(x: int) -> int:\n    return x\n", scope)
    with pytest.raises(bgjob.HandlerError, match=r"defined in __main__.*name="):
        own.job(scope["script"])
    assert own.job(name="nested")(nested).name == "nested"
    with pytest.raises(bgjob.HandlerError, match="already registered"):
        own.job(name="other", aliases=["nested"])(nested)
    assert own.types() == ["nested"]  # nothing of the refused registration was kept


def test_a_parameter_type_pydantic_cannot_encode_is_refused_at_registration() -> None:
    class Opaque:
        pass

    assert bgjob.Mux().job(name="untyped")(lambda thing: thing).name == "untyped"  # no hint: Any
    with pytest.raises(bgjob.HandlerError, match="parameter 'thing' has a type pydantic cannot check"):
        bgjob.Mux().job(name="opaque")(_with_hint(Opaque))


def _with_hint(kind: type) -> object:
    def takes(thing):  # type: ignore[no-untyped-def]
        return thing

    takes.__annotations__ = {"thing": kind}
    return takes


def test_without_pydantic_registering_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pydantic", None)
    with pytest.raises(bgjob.ConfigurationError, match=r"pip install 'bgjob\[typed\]'"):
        bgjob.Mux().job(name="x")(_with_hint(int))


def test_s_builds_a_signature_and_accepts_a_chain_step_without_its_first_argument() -> None:
    step = resize.s("a.png", 50)
    assert (step.job_type, step.args, dict(step.kwargs), step.options["queue"]) == ("resize", ("a.png", 50), {},
                                                                                        "default")  # fmt: skip
    later = thumbnail.s(Size(1, 2), datetime(2025, 1, 1, tzinfo=UTC))  # `path` comes from the previous step
    assert later.arg("p.png") == {"args": ["p.png", {"width": 1, "height": 2}, "2025-01-01T00:00:00Z"],
                                  "kwargs": {}}  # fmt: skip
    with pytest.raises(bgjob.InvalidJob, match=r"nor as a step whose first argument is the previous step.s result"):
        resize.s("a.png", "wide")
