"""The maskers in bgjob.redaction and the reprs built on them: no secret survives, nothing else is lost."""

from __future__ import annotations

import json

import pytest

import bgjob
from bgjob.job import Job, validate_headers
from bgjob.redaction import (
    MASK,
    is_sensitive_name,
    mask_arg,
    mask_headers,
    mask_url,
    scrub_text,
    secret_texts,
    sensitive_values,
)

PASSWORD = "p@ss-WORD/x?y#z"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        # The case: the masker cut at the first '@' and left "ss-WORD" behind.
        ("nats://app:p@ss-WORD@h", "nats://***@h"),
        (f"nats://app:{PASSWORD}@h:4222", "nats://***@h:4222"),
        ("nats://app:pa/ss@h:4222", "nats://***@h:4222"),
        ("nats://s3cr3t-token@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
        ("nats://:only-password@h:1", "nats://***@h:1"),
        ("tls://u:p@[::1]:4222", "tls://***@[::1]:4222"),
        ("nats://a:b@h1:1, nats://c:d@h2:2,nats://h3:3", "nats://***@h1:1,nats://***@h2:2,nats://h3:3"),
        ("user:pw@h:4222", "***@h:4222"),
        ("nats://h:4222", "nats://h:4222"),
        ("nats://app:pw@h:notaport", "nats://***@h:notaport"),
    ],
)
def test_mask_url_hides_all_user_info_up_to_the_last_at(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    for secret in ("p@ss", "WORD", "pa/ss", "s3cr3t", "only-password", "pw"):
        if secret in url:
            assert secret not in mask_url(url)


def test_settings_repr_masks_the_url_keys_and_secret_nats_options() -> None:
    settings = bgjob.Settings(
        url=f"nats://app:{PASSWORD}@h:4222",
        signing_key="SIGNING-KEY-PLANTED",
        encryption_keys=("ENC-KEY-PLANTED",),
        nats_options={"user": "app", "password": "OPT-PASSWORD-PLANTED", "token": "OPT-TOKEN-PLANTED",
                      "nkeys_seed": "SEED-PLANTED", "user_credentials": "/creds-PLANTED"},
    )  # fmt: skip
    text = repr(settings)
    for secret in (PASSWORD, "SIGNING-KEY", "ENC-KEY", "OPT-PASSWORD", "OPT-TOKEN", "SEED-PLANTED", "creds-PLANTED"):
        assert secret not in text
    assert "nats://***@h:4222" in text and "'user': 'app'" in text and MASK in text
    assert str(settings) == text


def test_settings_errors_do_not_quote_a_secret_of_the_wrong_type() -> None:
    with pytest.raises(bgjob.ConfigurationError) as raised:
        bgjob.Settings(signing_key=b"SIGNING-KEY-PLANTED")  # type: ignore[arg-type]
    assert "PLANTED" not in str(raised.value) and "signing_key" in str(raised.value)
    with pytest.raises(bgjob.ConfigurationError) as raised:
        bgjob.Settings(encryption_keys=[b"ENC-KEY-PLANTED"])  # type: ignore[list-item]
    assert "PLANTED" not in str(raised.value) and "encryption_keys" in str(raised.value)


def test_job_repr_shows_no_arg_and_no_headers() -> None:
    job = Job("j1", "charge", {"card": "4111111111111111"}, headers={"Authorization": "Bearer PLANTED"})
    assert repr(job) == "Job(id='j1', type='charge', queue='default', attempt=1)"
    assert "4111" not in str(job) and "PLANTED" not in f"{job!r} {job}"


@pytest.mark.parametrize("name", ["Authorization", "Proxy-Authorization", "Cookie", "X-Api-Key", "X-Auth-Token",
                                  "client_secret", "X-Password", "Session-Id", "X-Signature"])  # fmt: skip
def test_names_that_hold_secrets_are_sensitive(name: str) -> None:
    assert is_sensitive_name(name)


@pytest.mark.parametrize("name", ["sentry-trace", "baggage", "traceparent", "X-Customer", "Idempotency-Key"])
def test_tracing_and_ordinary_headers_are_not_sensitive(name: str) -> None:
    assert not is_sensitive_name(name)


def test_extra_sensitive_names_are_exact_names_or_globs_case_insensitively() -> None:
    assert is_sensitive_name("X-Customer-Email", ["x-customer-*"])
    assert is_sensitive_name("x-ssn", ["X-SSN"])
    assert not is_sensitive_name("X-Other", ["x-customer-*"])
    headers = {"Authorization": "Bearer t", "X-Ssn": "123", "X-Trace": "ok"}
    assert mask_headers(headers, ["x-ssn"]) == {"Authorization": MASK, "X-Ssn": MASK, "X-Trace": "ok"}


def test_mask_arg_masks_sensitive_keys_at_any_depth_and_keeps_the_rest() -> None:
    arg = {"card": "4111", "user": 7, "items": [{"password": "pw", "sku": "a"}], "nested": {"card": {"n": 1}}}
    masked = mask_arg(arg, {"card", "password"})
    assert masked == {"card": MASK, "user": 7, "items": [{"password": MASK, "sku": "a"}], "nested": {"card": MASK}}
    assert arg["card"] == "4111"  # a copy: the job's arg is untouched
    assert mask_arg(b"raw", {"card"}) == b"raw" and mask_arg(arg, set()) is arg


def test_scrub_text_removes_every_sensitive_value_an_error_quotes() -> None:
    arg = {"card": "4111111111111111", "pin": 1234, "password": "hunter22", "short": "ab", "user": "alice"}
    values = sensitive_values(arg, {"card", "pin", "password", "short"})
    text = "ValueError: card '4111111111111111' (pin 1234) declined for password hunter22 of alice ab"
    scrubbed = scrub_text(text, values)
    assert "4111111111111111" not in scrubbed and "1234" not in scrubbed and "hunter22" not in scrubbed
    assert "alice" in scrubbed and " ab" in scrubbed  # not sensitive; too short to mask safely
    assert scrub_text(None, values) is None


def test_a_refused_sensitive_header_value_is_not_quoted() -> None:
    for name in ("Authorization", "X-Api-Key"):
        with pytest.raises(bgjob.InvalidJob) as raised:
            validate_headers({name: "Bearer PLANTED\n"})
        assert "PLANTED" not in str(raised.value) and name in str(raised.value)
    with pytest.raises(bgjob.InvalidJob, match="position 7") as raised:
        validate_headers({"X-Token": "PLANTED\udcff"})
    assert "PLANTED" not in str(raised.value)


# -- what an attacker found: escaped quotes, keys as data, a ',' in a password ------------------------------------
ESCAPED = ["abc\\def-secret", "line1\nline2-secret", 'sec"ret-value', "pässwörd-secret", "back\\slash'quote",
           "mix'\"\\ü\n-secret"]  # fmt: skip


def _quotings(value: str, arg: dict) -> set[str]:
    """The ways code quotes a value in an exception message, a log line or a frame variable."""
    direct = {value, repr(value), ascii(value), json.dumps(value), json.dumps(value, ensure_ascii=False), repr(arg),
              json.dumps(arg), ascii(arg), str(KeyError(value)), repr(ValueError(value))}  # fmt: skip
    return direct | {quoted for text in direct for quoted in (repr(text), json.dumps(text), repr({"x": text}))}


@pytest.mark.parametrize("value", ESCAPED, ids=range(len(ESCAPED)))
def test_scrubbing_catches_a_value_quoted_with_escapes(value: str) -> None:
    arg = {"pw": value, "nested": [{"pw": value}], "n": 7}
    texts = secret_texts(arg, {"pw"})
    leaked = [text for text in _quotings(value, arg) if "secret" in scrub_text(text, texts) or "quote" in
              scrub_text(text, texts) or "ret-value" in scrub_text(text, texts)]  # fmt: skip
    assert leaked == []


def test_the_keys_of_a_dict_under_a_sensitive_key_are_scrubbed_too() -> None:
    arg = {"tokens": {"sk_live_DICTKEY": "active"}, "user": "alice"}
    assert scrub_text("KeyError: 'sk_live_DICTKEY'", sensitive_values(arg, {"tokens"})) == f"KeyError: '{MASK}'"


def test_a_comma_in_a_password_is_masked_with_the_rest_of_its_user_info() -> None:
    assert mask_url("nats://u:pa,ss@h:4222") == "nats://***@h:4222"
    assert mask_url("nats://u:pa,ss@h1:1, tls://t0k,en@h2:2") == "nats://***@h1:1,tls://***@h2:2"


def test_a_malformed_send_jobs_item_is_refused_without_quoting_its_arg(client) -> None:
    for item in (("charge", {"card": "4111-PLANTED"}, "extra"), {"card": "4111-PLANTED"}, ["charge"]):
        with pytest.raises(bgjob.InvalidJob, match="expected a \\(type, arg\\) pair") as raised:
            client.send_jobs([item])
        assert "PLANTED" not in str(raised.value)
