"""Pure-Python behaviour: validation, routing, middleware order, retry policy, schedules."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import bgjob
from bgjob import job as jobmod
from bgjob.middleware import chain


@pytest.mark.parametrize("name", ["report", "billing.invoice", "a-b_c:d", "x" * 100])
def test_valid_job_types_are_accepted(name: str) -> None:
    assert jobmod.validate_type(name) == name


@pytest.mark.parametrize("name", ["", "a b", "a.*", "a.>", "a..b", ".a", "a.", "ü", None, 7, "a\n"])
def test_invalid_job_types_are_refused_with_a_hint(name: object) -> None:
    with pytest.raises(bgjob.InvalidJob, match="invalid job type"):
        jobmod.validate_type(name)  # type: ignore[arg-type]


@pytest.mark.parametrize("arg", [{"set"}, object(), float("nan"), {"a": float("inf")}, {1: {2: {3: b"x"}}}])
def test_arg_must_be_json_or_bytes(arg: object) -> None:
    with pytest.raises(bgjob.InvalidJob, match="JSON-serialisable or bytes"):
        jobmod.encode_arg(arg)


@pytest.mark.parametrize(
    ("arg", "path"),
    [
        ({1: "int key", "1": "str key"}, r"arg\[1\]: JSON object keys must be strings, not int .*\"1\""),
        ({"a": [0, 1, 2, {2.5: "x"}]}, r"arg\[\"a\"\]\[3\]\[2.5\]: .*not float"),
        ({"a": {True: 1}}, r"arg\[\"a\"\]\[True\]: .*not bool .*\"true\""),
        ([{"ok": 1}, {None: 1}], r"arg\[1\]\[None\]: .*not NoneType .*\"null\""),
        ({"a": ({(1, 2): 1},)}, r"arg\[\"a\"\]\[0\]\[\(1, 2\)\]: .*not tuple"),
        ({"a": [0, {"b": {1, 2}}]}, r"arg\[\"a\"\]\[1\]\[\"b\"\]: set is not JSON-serialisable"),
        ({"a": [*range(100), object()]}, r"arg\[\"a\"\]\[100\]: object is not JSON-serialisable"),
        ({"a": [1.0, float("nan")]}, r"arg\[\"a\"\]\[1\]: Out of range float"),
        (float("-inf"), r"arg: Out of range float"),
        (b"x".decode() + "\ud800", "UTF-8 cannot encode"),
    ],
)
def test_an_arg_that_would_not_read_back_unchanged_is_refused_naming_its_path(arg: object, path: str) -> None:
    with pytest.raises(bgjob.InvalidJob, match=path):
        jobmod.encode_arg(arg)


@pytest.mark.parametrize(
    ("arg", "read_back"),
    [
        ({"user": 7, "name": "Zoë", "ratio": 0.1, "ok": True, "none": None, "nested": [{"a": [1, {"b": 2}]}]}, None),
        ({"big": 10**40, "negative_zero": -0.0, "tiny": 5e-324}, None),
        ((1, (2, 3)), [1, [2, 3]]),  # JSON has one array type: tuples arrive as lists
        ({"shared": [[1], [1]]}, None),
    ],
)
def test_json_args_read_back_unchanged(arg: object, read_back: object) -> None:
    body, content_type = jobmod.encode_arg(arg)
    assert jobmod.decode_arg(body, content_type) == (arg if read_back is None else read_back)


def test_an_arg_that_holds_itself_is_refused() -> None:
    loop: list = [1]
    loop.append({"again": loop})
    with pytest.raises(bgjob.InvalidJob, match="Circular reference"):
        jobmod.encode_arg(loop)


def test_bytes_arg_round_trips_as_octet_stream() -> None:
    body, content_type = jobmod.encode_arg(b"\x00\xff")
    assert content_type == "application/octet-stream"
    assert jobmod.decode_arg(body, content_type) == b"\x00\xff"


def test_json_arg_round_trips_unicode() -> None:
    body, content_type = jobmod.encode_arg({"name": "Zoë", "n": [1, 2.5, None, True]})
    assert jobmod.decode_arg(body, content_type) == {"name": "Zoë", "n": [1, 2.5, None, True]}


@pytest.mark.parametrize(
    "headers",
    [{"Nats-Msg-Id": "x"}, {"Bgjob-Id": "x"}, {"content-type": "x"}, {"ok": "a\nb"}, {"a b": "x"}, {"x": 1}],
)
def test_reserved_or_malformed_headers_are_refused(headers: dict) -> None:
    with pytest.raises(bgjob.InvalidJob):
        jobmod.validate_headers(headers)


def test_mux_refuses_duplicate_registration() -> None:
    mux = bgjob.Mux()
    mux.handle("report", lambda job: bgjob.Complete())
    with pytest.raises(bgjob.HandlerError, match="already registered"):
        mux.handle("report", lambda job: bgjob.Complete())


def test_mux_accepts_functions_decorators_and_adapters() -> None:
    mux = bgjob.Mux()

    @mux.handler("a")
    def a(job: bgjob.Job) -> bgjob.Result:
        return bgjob.Complete("a")

    class B:
        def handle(self, job: bgjob.Job) -> bgjob.Result:
            return bgjob.Complete("b")

    mux.handle("b", B())
    job = bgjob.Job(id="1", type="a", arg=None)
    assert mux.get("a")(job) == bgjob.Complete("a")  # type: ignore[misc]
    assert mux.get("b")(job) == bgjob.Complete("b")  # type: ignore[misc]
    assert mux.types() == ["a", "b"] and "a" in mux and mux.get("c") is None
    with pytest.raises(bgjob.HandlerError):
        mux.handle("c", B)  # the class, not an instance
    with pytest.raises(bgjob.HandlerError):
        mux.handle("d", "not callable")  # type: ignore[arg-type]


def test_first_listed_middleware_runs_outermost() -> None:
    calls: list[str] = []

    def named(name: str):
        def middleware(job: bgjob.Job, call_next):
            calls.append(f"{name}>")
            result = call_next(job)
            calls.append(f"<{name}")
            return result

        return middleware

    def handler(job: bgjob.Job) -> bgjob.Result:
        calls.append("handler")
        return bgjob.Complete()

    wrapped = chain([named("outer"), named("inner")], handler)
    assert wrapped(bgjob.Job(id="1", type="t", arg=None)) == bgjob.Complete()
    assert calls == ["outer>", "inner>", "handler", "<inner", "<outer"]


def test_retry_policy_backs_off_exponentially_up_to_the_cap() -> None:
    policy = bgjob.RetryPolicy(max_attempts=5, base_delay=1, multiplier=2, max_delay=5, jitter=0)
    assert [policy.delay_for(a) for a in range(1, 6)] == [1, 2, 4, 5, 5]
    assert not policy.exhausted(4) and policy.exhausted(5)


def test_by_cron_rejects_invalid_expressions_and_zones() -> None:
    with pytest.raises(bgjob.InvalidSchedule, match="invalid cron"):
        bgjob.ByCron("61 * * * *")
    with pytest.raises(bgjob.InvalidSchedule, match="invalid cron"):
        bgjob.ByCron("every hour")
    with pytest.raises(bgjob.InvalidSchedule, match="time zone"):
        bgjob.ByCron("0 * * * *", tz="Mars/Olympus")


def test_by_cron_next_run_honours_time_zone() -> None:
    now = datetime(2026, 11, 25, 14, 30, tzinfo=timezone.utc)  # 15:30 in Berlin
    assert bgjob.ByCron("0 * * * *").next_run(now) == datetime(2026, 11, 25, 15, 0, tzinfo=timezone.utc)
    berlin_3am = bgjob.ByCron("0 3 * * *", tz="Europe/Berlin").next_run(now)
    assert berlin_3am == datetime(2026, 11, 26, 2, 0, tzinfo=timezone.utc)
    assert bgjob.ByCron("*/10 * * * * *").next_run(now) == now + timedelta(seconds=10)
    assert bgjob.ByCron("0 * * * *").server_expr() == "0 0 * * * *"


def test_reschedule_needs_a_schedule() -> None:
    with pytest.raises(bgjob.InvalidSchedule):
        bgjob.Reschedule("0 * * * *")  # type: ignore[arg-type]
    with pytest.raises(bgjob.InvalidSchedule):
        bgjob.ByAfterTime(-1)


def test_move_to_dlq_keeps_the_traceback_of_an_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError as exc:
        result = bgjob.MoveToDlq(exc)
    assert result.traceback and "ValueError: boom" in result.traceback


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGJOB_URL", "nats://example:4222")
    monkeypatch.setenv("BGJOB_PREFIX", "myapp")
    monkeypatch.setenv("BGJOB_REPLICAS", "3")
    monkeypatch.setenv("BGJOB_DATA_DIR", "/tmp/bgjob-data")
    settings = bgjob.Settings.from_env(ack_wait=10, nats_options={"user": "u", "password": "p"})
    assert (settings.url, settings.prefix, settings.replicas, settings.data_dir, settings.ack_wait) == (
        "nats://example:4222", "myapp", 3, "/tmp/bgjob-data", 10
    )  # fmt: skip
    assert settings.nats_options == {"user": "u", "password": "p"}
    assert bgjob.Settings.from_env(prefix="other", url=None).prefix == "other", "overrides win; None is skipped"
    with pytest.raises(bgjob.ConfigurationError, match=r"prefix .Bad Prefix. must match"):
        bgjob.Settings(prefix="Bad Prefix")


def test_a_client_whose_settings_ignore_bgjob_prefix_says_so(monkeypatch, caplog) -> None:
    """A new user's second client, bgjob.Client(bgjob.Settings(events=True)) beside bgjob.connect(), sent to the
    default prefix's streams while BGJOB_PREFIX named another: it warns (no connection is made here)."""
    monkeypatch.setenv("BGJOB_PREFIX", "evtest")
    with caplog.at_level("WARNING", logger="bgjob.client"):
        bgjob.Client(bgjob.Settings(events=True))
    assert "BGJOB_PREFIX is 'evtest' but this client's Settings has prefix 'bgjob'" in caplog.text
    assert "Settings.from_env" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="bgjob.client"):
        bgjob.Client(bgjob.Settings.from_env(events=True))
        bgjob.Client(bgjob.Settings(prefix="evtest"))
        bgjob.Client()
    assert "BGJOB_PREFIX" not in caplog.text


def test_an_environment_variable_that_does_not_parse_is_a_configuration_error(monkeypatch) -> None:
    monkeypatch.setenv("BGJOB_REPLICAS", "three")
    with pytest.raises(bgjob.ConfigurationError, match=r"BGJOB_REPLICAS='three' is not int"):
        bgjob.Settings.from_env()


@pytest.mark.parametrize("make", [bgjob.Settings, bgjob.Settings.from_env, bgjob.connect])
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"ack_wiat": 60}, r"unknown bgjob setting 'ack_wiat' \(did you mean 'ack_wait'\?\)"),
        ({"retry_fro": 1, "prefx": "a"}, r"settings 'prefx' \(did you mean 'prefix'\?\), 'retry_fro' .*'retry_for'"),
        ({"user": "u"}, r"'user' \(a nats.connect option: pass nats_options=\{'user': ...\}\)"),
        ({"tls": object()}, r"'tls' \(a nats.connect option"),
        ({"colour": "red"}, r"unknown bgjob setting 'colour'; the settings are: url, prefix"),
    ],
)
def test_unknown_setting_keys_are_refused_naming_the_closest_ones(make, options, match) -> None:
    with pytest.raises(bgjob.ConfigurationError, match=match):
        make(**options)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"prefix": "BAD"}, "prefix 'BAD' must match"),
        ({"prefix": 7}, "prefix 7 must match"),
        ({"url": ""}, "url must be a non-empty str"),
        ({"url": 4222}, "url must be a non-empty str"),
        ({"replicas": 0}, "replicas must be an int >= 1"),
        ({"replicas": 6}, "replicas must be 1 to 5"),
        ({"replicas": 3.0}, "replicas must be an int"),
        ({"replicas": True}, "replicas must be an int"),
        ({"ack_wait": 0.5}, "ack_wait must be seconds >= 1"),
        ({"ack_wait": "30"}, "ack_wait must be seconds"),
        ({"max_ack_pending": 0}, "max_ack_pending must be an int >= 1 or None"),
        ({"duplicate_window": 0}, "duplicate_window must be seconds > 0"),
        ({"dlq_max_age": -1}, "dlq_max_age must be seconds > 0"),
        ({"result_ttl": 0}, "result_ttl must be seconds > 0"),
        ({"worker_ttl": float("nan")}, "worker_ttl must be seconds > 0"),
        ({"connect_timeout": 0}, "connect_timeout must be seconds > 0"),
        ({"request_timeout": -5}, "request_timeout must be seconds > 0"),
        ({"retry_for": 0}, "retry_for must be seconds > 0"),
        ({"retry_for": None}, "retry_for must be seconds > 0"),
        ({"double_ack": "yes"}, "double_ack must be True or False"),
        ({"signing_key": b"key"}, "signing_key must be a non-empty str or None"),
        ({"verify_keys": [b"key"]}, "verify_keys must be base64 public keys"),
        ({"verify_keys": 5}, "verify_keys must be base64 public keys"),
        ({"result_queues": "mail"}, "result_queues must be a collection of queue names"),
        ({"result_queues": ["Bad Queue"]}, "result_queues: invalid queue"),
        ({"data_dir": 5}, "data_dir must be a path or None"),
        ({"name": ""}, "name must be a non-empty str or None"),
        ({"nats_options": [("user", "u")]}, "nats_options must be a dict"),
        ({"nats_options": {"pasword": "p"}}, r"nats_options\['pasword'\] is not a nats.connect option .*'password'"),
        ({"nats_options": {"servers": ["nats://x"]}}, r"nats_options\['servers'\] is set by the url setting"),
        ({"nats_options": {"error_cb": print}}, r"nats_options\['error_cb'\] is set by bgjob"),
    ],
)
def test_every_bad_setting_value_is_a_configuration_error_naming_the_field(options, match) -> None:
    with pytest.raises(bgjob.ConfigurationError, match=match):
        bgjob.Settings(**options)


def test_setting_values_are_normalised() -> None:
    settings = bgjob.Settings(ack_wait=10, retry_for=2, data_dir=Path("/tmp/x"), verify_keys="k", result_queues=["a"])
    assert (settings.ack_wait, settings.retry_for, settings.data_dir) == (10.0, 2.0, "/tmp/x")
    assert isinstance(settings.ack_wait, float)
    assert (settings.verify_keys, settings.result_queues) == (("k",), frozenset({"a"}))
    assert dataclasses.replace(settings, prefix="other").ack_wait == 10.0
