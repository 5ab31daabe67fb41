"""Optional payload encryption at rest: AES-256-GCM bodies, key rotation, and every failure dead-lettered."""

from __future__ import annotations

import base64
import json
import os
import queue
import sys
from datetime import timedelta

import nats.js.errors
import pytest

import bgjob
from bgjob.client import Core, prepare_job
from bgjob.encryption import OVERHEAD, Cipher, generate_key, key_id
from bgjob.errors import ConfigurationError
from bgjob.headers import ENCRYPTION

from .conftest import drain, wait_until
from .test_cli import ROOT, bgjob_cli

pytest.importorskip("cryptography")

CARD = "4111-1111-1111-1111"
SECRET = {"card": CARD, "cvc": "737", "owner": "Ada"}


def kid(key: str) -> str:
    return key_id(base64.urlsafe_b64decode(key))


def stored(client: bgjob.Client, queue_name: str = "default") -> list[tuple[str, bytes, dict[str, str]]]:
    """(subject, raw bytes of headers + body, headers) of every message in the queue's stream, read with nats-py."""

    async def read(core: Core) -> list[tuple[str, bytes, dict[str, str]]]:
        stream, found, seq = core.topology.queue_stream(queue_name), [], 1
        while True:
            try:
                msg = await core.js.get_msg(stream, seq=seq, next=True,
                                            subject=core.topology.queue_subjects(queue_name))  # fmt: skip
            except nats.js.errors.NotFoundError:
                return found
            raw = (base64.b64decode(msg.hdrs) if msg.hdrs else b"") + (msg.data or b"")
            found.append((msg.subject, raw, dict(msg.headers or {})))
            seq = msg.seq + 1

    return client.run(read)


def assert_no_plaintext(raw: bytes) -> None:
    """No part of SECRET or CARD in `raw`, in the forms the plaintext would hold them (JSON strings). A bare "737"
    or "4111" occurs by chance in hex job ids and in ciphertext (a random id 20a573799... made this test flaky)."""
    for secret in (CARD, '"737"', '"Ada"', '"card"', '"cvc"'):
        assert secret.encode() not in raw


def collecting_mux(job_type: str = "charge") -> tuple[bgjob.Mux, queue.Queue]:
    ran: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle(job_type, lambda job: ran.put(job.arg) or bgjob.Complete())
    return mux, ran


@pytest.mark.parametrize("arg", [SECRET, CARD.encode() + b"\x00\xff raw bytes"], ids=["json", "bytes"])
def test_an_encrypted_job_reaches_its_handler_as_plaintext_and_the_stream_holds_only_ciphertext(
        make_client, start_worker, arg) -> None:  # fmt: skip
    key = generate_key()
    client = make_client(encryption_keys=(key,))
    client.send_job("charge", arg)
    [(_, raw, headers)] = stored(client)
    assert_no_plaintext(raw)
    assert headers[ENCRYPTION] == f"aes256gcm;{kid(key)};id"
    assert headers["Content-Type"] == ("application/octet-stream" if isinstance(arg, bytes) else "application/json")
    mux, ran = collecting_mux()
    start_worker(client, mux)
    assert drain(ran, 1) == [arg]


def test_the_body_grows_by_nonce_and_tag_only_and_that_is_what_the_size_check_measures(make_client) -> None:
    key = generate_key()
    plain = prepare_job(bgjob.Settings(url="nats://x"), "charge", SECRET)[1]
    _, body, headers, _ = prepare_job(bgjob.Settings(url="nats://x", encryption_keys=(key,)), "charge", SECRET)
    assert len(body) == len(plain) + OVERHEAD == len(plain) + 28
    assert ENCRYPTION in headers


def test_keys_rotate_old_jobs_run_on_workers_listing_the_old_key_and_are_dead_lettered_not_lost_without_it(
        make_client, start_worker) -> None:  # fmt: skip
    old, new = generate_key(), generate_key()
    with_old = make_client(encryption_keys=(old,))
    rotated = make_client(encryption_keys=(new, old))
    only_new = make_client(encryption_keys=(new,))
    mux, ran = collecting_mux()
    start_worker(rotated, mux, queue="rotating")
    with_old.send_job("charge", {"n": 1}, queue="rotating")
    rotated.send_job("charge", {"n": 2}, queue="rotating")
    assert sorted(drain(ran, 2), key=lambda a: a["n"]) == [{"n": 1}, {"n": 2}]
    assert prepare_job(rotated.settings, "charge", {})[2][ENCRYPTION].startswith(f"aes256gcm;{kid(new)};")

    start_worker(only_new, mux, queue="new-only")
    job_id = with_old.send_job("charge", SECRET, queue="new-only")
    wait_until(lambda: only_new.dlq.count(reason="decrypt") == 1, message="the old-key job dead-lettered")
    entry = only_new.dlq.get(job_id)
    assert kid(old) in entry.error and "not in this process's encryption_keys" in entry.error
    assert entry.arg == f"<encrypted; this client has no key {kid(old)}>"
    assert with_old.dlq.get(job_id).arg == SECRET
    assert rotated.dlq.get(job_id).arg == SECRET
    assert ran.empty()


def test_an_encrypted_job_reaching_a_worker_without_keys_is_dead_lettered_saying_so(make_client, start_worker) -> None:
    producer = make_client(encryption_keys=(generate_key(),))
    plain = make_client()
    mux, ran = collecting_mux()
    start_worker(plain, mux)
    job_id = producer.send_job("charge", SECRET)
    wait_until(lambda: plain.dlq.count(reason="decrypt") == 1, message="a decrypt dead letter")
    entry = plain.dlq.get(job_id)
    assert "this worker has no encryption_keys" in entry.error
    assert entry.arg.startswith("<encrypted; this client has no key ")
    assert producer.dlq.get(job_id).arg == SECRET
    assert CARD not in entry.error and CARD not in repr(entry)
    assert ran.empty()


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_tampered_or_swapped_encrypted_bodies_are_dead_lettered(make_client, start_worker, signed) -> None:
    key = generate_key()
    options: dict = {"encryption_keys": (key,)}
    if signed:
        pytest.importorskip("nacl")
        signing_key, verify_key = bgjob.signing.generate_keypair()
        options.update(signing_key=signing_key, verify_keys=(verify_key,))
    client = make_client(**options)
    mux, ran = collecting_mux()

    async def publish_forged(core: Core) -> list[str]:
        await core.ensure_queue("default")
        subject, body, headers, flipped_id = prepare_job(client.settings, "charge", SECRET)
        flipped = body[:-1] + bytes([body[-1] ^ 1])
        await core.js.publish(subject, flipped, headers=headers)
        _, other_body, _, _ = prepare_job(client.settings, "charge", {"card": "other"})
        subject, _, headers, swapped_id = prepare_job(client.settings, "charge", {"card": "mine"})
        await core.js.publish(subject, other_body, headers=headers)  # a valid ciphertext of another job
        return [flipped_id, swapped_id]

    ids = client.run(publish_forged)
    start_worker(client, mux)
    reason = "signature" if signed else "decrypt"
    wait_until(lambda: client.dlq.count(reason=reason) == 2, message="two refused jobs")
    for job_id in ids:
        entry = client.dlq.get(job_id)
        assert "does not verify" in entry.error if signed else "does not authenticate" in entry.error
    assert ran.empty()


def test_signed_and_encrypted_jobs_run_and_a_reschedule_with_a_new_arg_is_stored_encrypted(
        make_client, start_worker) -> None:  # fmt: skip
    pytest.importorskip("nacl")
    signing_key, verify_key = bgjob.signing.generate_keypair()
    client = make_client(encryption_keys=(generate_key(),), signing_key=signing_key, verify_keys=(verify_key,))
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("charge")
    def charge(job: bgjob.Job) -> bgjob.Result:
        runs.put(job.arg)
        if job.arg.get("step") == 1:
            return bgjob.Reschedule(bgjob.ByAfterTime(3600), arg={**SECRET, "step": 2})
        return bgjob.Complete()

    start_worker(client, mux)
    client.send_job("charge", {**SECRET, "step": 1})
    assert drain(runs, 1) == [{**SECRET, "step": 1}]

    def next_run() -> list:
        return [m for m in stored(client) if ".at." in m[0]]

    [(_, raw, headers)] = wait_until(next_run, message="the rescheduled run stored")
    assert_no_plaintext(raw)
    assert ENCRYPTION in headers and "Bgjob-Signature" in headers


def test_delayed_and_periodic_jobs_are_stored_encrypted_and_run_as_plaintext(make_client, start_worker) -> None:
    client = make_client(encryption_keys=(generate_key(),))
    client.send_job("charge", SECRET, queue="later", delay=timedelta(hours=1))
    [(_, raw, headers)] = stored(client, "later")
    assert_no_plaintext(raw) and headers[ENCRYPTION].endswith(";id")

    assert client.schedule("every-second", "* * * * * *", "charge", SECRET, queue="cron") is True
    try:
        [(_, raw, headers)] = stored(client, "cron")
        assert_no_plaintext(raw)
        assert headers[ENCRYPTION].count(";") == 1  # not bound to a job id: every firing has its own
        # Listing the schedules shows the arg to a client with the key, a placeholder to one without.
        assert [p.arg for p in client.schedules(queue="cron")] == [SECRET]
        without, key_id = make_client().schedules(queue="cron"), headers[ENCRYPTION].split(";")[1]
        assert [p.arg for p in without] == [f"<encrypted; this client has no key {key_id}>"]
        mux, ran = collecting_mux()
        start_worker(client, mux, queue="cron")
        assert drain(ran, 1) == [SECRET]
    finally:
        client.unschedule("every-second", queue="cron")
    soon = client.send_job("charge", SECRET, queue="soon", delay=0.2)
    mux, ran = collecting_mux()
    start_worker(client, mux, queue="soon")
    assert drain(ran, 1) == [SECRET] and soon


def test_dlq_show_decrypts_the_arg_with_the_key_and_shows_a_placeholder_without(
        make_client, start_worker, nats_server, prefix) -> None:  # fmt: skip
    cli_env = {**os.environ, "BGJOB_URL": nats_server.url, "BGJOB_PREFIX": prefix, "PYTHONPATH": str(ROOT)}
    key = generate_key()
    client = make_client(encryption_keys=(key,))
    mux = bgjob.Mux()
    mux.handle("charge", lambda job: bgjob.MoveToDlq("declined"))
    start_worker(client, mux)
    job_id = client.send_job("charge", SECRET)
    wait_until(lambda: client.dlq.count() == 1, message="the dead letter")

    shown = bgjob_cli({**cli_env, "BGJOB_ENCRYPTION_KEYS": key}, "dlq", "show", job_id)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["arg"] == SECRET
    blind = bgjob_cli(cli_env, "dlq", "show", job_id)
    assert blind.returncode == 0, blind.stderr
    assert json.loads(blind.stdout)["arg"] == f"<encrypted; this client has no key {kid(key)}>"
    assert CARD not in blind.stdout + blind.stderr
    assert key not in shown.stdout + shown.stderr + blind.stdout + blind.stderr
    assert client.dlq.retry(job_id)
    wait_until(lambda: client.dlq.count() == 1 and client.dlq.get(job_id).attempts == 1,
               message="the requeued job dead-lettered again")  # fmt: skip
    assert client.dlq.get(job_id).arg == SECRET


def test_unusable_keys_are_refused_at_start_naming_their_position_never_their_value() -> None:
    short = base64.b64encode(b"k" * 16).decode()
    for keys, words in (((generate_key(), short), "encryption_keys[1] decodes to 16 bytes"),
                        (("not base64!!",), "encryption_keys[0] is not base64")):  # fmt: skip
        with pytest.raises(ConfigurationError, match=words.replace("[", r"\[").replace("]", r"\]")) as caught:
            bgjob.Client(bgjob.Settings(url="nats://127.0.0.1:1", encryption_keys=keys))
        assert all(k not in str(caught.value) for k in keys)
    standard = base64.b64encode(base64.urlsafe_b64decode(generate_key())).decode()
    assert Cipher([standard]).key_id == key_id(base64.b64decode(standard))  # either base64 alphabet
    assert len(base64.urlsafe_b64decode(generate_key())) == 32 and generate_key() != generate_key()


def test_keys_without_the_cryptography_package_name_the_extra_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(ConfigurationError, match=r'pip install "bgjob\[encryption\]"'):
        Cipher([generate_key()])


def test_a_minimal_dead_letter_keeps_the_encryption_header_so_it_can_still_be_decrypted_and_retried() -> None:
    from bgjob import dlq

    header = f"aes256gcm;{kid(generate_key())};id"
    kept = dlq._minimal({ENCRYPTION: header, "Content-Type": "application/json"}, {}, "j1", "charge", "boom", "why")
    assert kept[ENCRYPTION] == header and kept["Bgjob-Id"] == "j1"
