"""Erasure for a data-subject request ("delete everything about customer 7"): a job's stored result, and the
dead letters whose arg matches a JSON path and value, found by a bounded scan and deleted by sequence."""

from __future__ import annotations

import nats.js.errors
import pytest

import bgjob
from bgjob.arg_match import MAX_VALUE_CHARS, parse_match, parse_value
from bgjob.dead_letters import MAX_UNREADABLE_IDS

from .conftest import wait_until
from .django.dlq_fill import store_dead_letter


@pytest.fixture
def customers(client, start_worker) -> dict[int, list[str]]:
    """Dead letters from a real worker: three jobs about customer 7 (flat, nested, as text) and two about 8."""
    mux = bgjob.Mux()
    mux.handle("charge", lambda job: bgjob.MoveToDlq("card declined"))
    start_worker(client, mux)
    args = {7: [{"customer_id": 7, "amount": 10}, {"customer": {"id": 7}}, {"customer_id": "7"}],
            8: [{"customer_id": 8, "amount": 10}, {"customer": {"id": 8}}]}  # fmt: skip
    ids = {n: [client.send_job("charge", arg) for arg in batch] for n, batch in args.items()}
    wait_until(lambda: client.dlq.count() == 5, message="5 dead letters")
    return ids


def raw_stored_ids(client: bgjob.Client) -> list[str]:
    """Every job id left in the DLQ stream, read message by message (not through bgjob's DLQ API)."""

    async def read(core) -> list[str]:
        info = await core.js.stream_info(core.topology.dlq_stream)
        found = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                raw = await core.js.get_msg(core.topology.dlq_stream, seq)
            except nats.js.errors.NotFoundError:
                continue
            found.append((raw.headers or {}).get("Bgjob-Id"))
        return found

    return client.run(read)


def test_find_matches_a_value_at_a_path_and_a_number_matches_its_text(client, customers) -> None:
    flat = client.dlq.find({"customer_id": 7})
    assert sorted(e.id for e in flat.matches) == sorted([customers[7][0], customers[7][2]])
    assert flat.complete and flat.scanned == 5
    nested = client.dlq.find({"customer.id": 7})
    assert [e.id for e in nested.matches] == [customers[7][1]]
    both = client.dlq.find({"customer_id": 8, "amount": 10})
    assert [e.id for e in both.matches] == [customers[8][0]]
    assert client.dlq.find({"customer_id": 9}).matches == []
    assert client.dlq.find({"customer_id": 7}, queue="mail").matches == []


def test_erase_removes_every_dead_letter_of_customer_7_and_leaves_8_intact(client, customers) -> None:
    erased = client.dlq.erase({"customer_id": 7})
    erased_nested = client.dlq.erase({"customer.id": 7})
    assert len(erased.matches) + len(erased_nested.matches) == 3 and erased.complete
    assert client.dlq.count() == 2
    assert sorted(e.id for e in client.dlq.list()) == sorted(customers[8])
    assert sorted(raw_stored_ids(client)) == sorted(customers[8])
    for job_id in customers[7]:
        with pytest.raises(bgjob.DeadLetterNotFound):
            client.dlq.get(job_id)
    assert [e.arg for e in client.dlq.list()][::-1] == [{"customer_id": 8, "amount": 10}, {"customer": {"id": 8}}]
    assert client.dlq.erase({"customer_id": 7}).matches == []


def test_scan_limit_bounds_the_scan_and_after_goes_on(client, customers) -> None:
    first = client.dlq.find({"customer_id": 8}, scan_limit=2)
    assert first.scanned == 2 and not first.complete and first.matches == []
    rest = client.dlq.find({"customer_id": 8}, scan_limit=10, after=first.last_seq)
    assert rest.scanned == 3 and rest.complete and [e.id for e in rest.matches] == [customers[8][0]]
    partial = client.dlq.erase({"customer_id": 7}, scan_limit=1)
    assert partial.scanned == 1 and not partial.complete and client.dlq.count() == 4


@pytest.mark.parametrize("match", [None, [("customer_id", 7)], "customer_id=7", {}, {"": 7}, {"a..b": 7},
                                   {".a": 7}, {7: 7}])  # fmt: skip
def test_a_bad_match_is_an_invalid_match_error_and_deletes_nothing(client, customers, match) -> None:
    with pytest.raises(bgjob.InvalidMatch):
        client.dlq.find(match)
    with pytest.raises(bgjob.InvalidMatch):
        client.dlq.erase(match)
    assert client.dlq.count() == 5


@pytest.mark.parametrize("bound", [{"scan_limit": 0}, {"scan_limit": "10"}, {"scan_limit": True}, {"after": -1}])
def test_a_bad_scan_bound_is_an_invalid_match_error(client, bound) -> None:
    with pytest.raises(bgjob.InvalidMatch):
        client.dlq.find({"customer_id": 7}, **bound)


def test_delete_result_purges_a_stored_result(client, start_worker) -> None:
    mux = bgjob.Mux()
    mux.handle("report", lambda job: bgjob.Complete({"customer_id": 7, "total": 12}))
    start_worker(client, mux)
    job_id = client.send_job("report", {"customer_id": 7}, store_result=True)
    assert client.result(job_id, wait=15).status == bgjob.ResultStatus.SUCCESSFUL
    assert client.delete_result(job_id) is True
    with pytest.raises(bgjob.ResultNotFound):
        client.result(job_id)
    assert client.delete_result(job_id) is False
    assert client.delete_result("never-sent") is False

    async def revisions(core) -> int:
        from bgjob import job_results

        kv = await job_results.bucket(core, create=False)
        history = await kv.history(job_results.result_key(job_id))
        return sum(1 for entry in history if entry.value)

    assert client.run(revisions) == 0  # the purge removed every revision, not only the latest
    with pytest.raises(bgjob.InvalidJob):
        client.delete_result("")


def test_masked_views_hide_sensitive_keys_headers_and_their_quotes(client) -> None:
    store_dead_letter(client, "job-secret", {"card": "4111111111111111", "customer_id": 7},
                      headers={"Bgjob-Sensitive": "card", "Authorization": "Bearer tok-SECRET-123"},
                      error="declined 4111111111111111 with Bearer tok-SECRET-123",
                      traceback="ValueError: card 4111111111111111")  # fmt: skip
    entry = client.dlq.get("job-secret")
    assert entry.arg["card"] == "4111111111111111"  # the raw arg stays available to code
    assert entry.masked_arg == {"card": bgjob.redaction.MASK, "customer_id": 7}
    assert entry.masked_headers["Authorization"] == bgjob.redaction.MASK
    shown = " ".join([repr(entry), str(entry.masked_arg), str(entry.masked_headers), entry.masked_error,
                      entry.masked_traceback])  # fmt: skip
    assert "4111111111111111" not in shown and "tok-SECRET-123" not in shown
    assert "declined" in entry.masked_error


def test_bgjob_dlq_show_list_and_find_print_masked_and_erase_asks_for_yes(client, nats_server, prefix, monkeypatch,
                                                                         capsys) -> None:  # fmt: skip
    from bgjob.cli import main

    monkeypatch.setenv("BGJOB_URL", nats_server.url)
    monkeypatch.setenv("BGJOB_PREFIX", prefix)
    store_dead_letter(client, "job-seven", {"card": "4111111111111111", "customer_id": 7},
                      headers={"Bgjob-Sensitive": "card", "Authorization": "Bearer tok-SECRET-123"},
                      error="declined 4111111111111111 with Bearer tok-SECRET-123",
                      traceback="ValueError: card 4111111111111111")  # fmt: skip
    for args in (["dlq", "show", "job-seven"], ["dlq", "list"], ["dlq", "list", "--json"],
                 ["dlq", "find", "--match", "customer_id=7"], ["dlq", "find", "--match", "customer_id=7", "--json"]):
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "job-seven" in out and "4111111111111111" not in out and "tok-SECRET-123" not in out, args
    assert main(["dlq", "erase", "--match", "customer_id=7"]) == 2
    assert "would erase 1 dead letter" in capsys.readouterr().err and client.dlq.count() == 1
    assert main(["dlq", "erase", "--match", "=7", "--yes"]) == 2 and "PATH=VALUE" in capsys.readouterr().err
    assert main(["dlq", "erase", "--match", "customer_id=7", "--yes"]) == 0
    assert "erased 1 dead letter" in capsys.readouterr().out and client.dlq.count() == 0


@pytest.fixture
def listed(client) -> None:
    """A dead letter whose arg holds a list (hostile list indexes used to raise ValueError on it, mid-scan)."""
    store_dead_letter(client, "job-items", {"customer_id": 7, "items": [1, 2]})
    store_dead_letter(client, "job-items-2", {"customer_id": 7, "items": [3, 4]})


HOSTILE_PATHS = ["items.²", "items.٣", "items.½", "items.Ⅻ", "items." + "9" * 5000, "items." + "1" * 201, "a" * 201,
                 ".".join(["a"] * 501), "items.1.²"]  # fmt: skip


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_a_hostile_path_segment_is_an_invalid_match_before_anything_is_read_or_deleted(client, listed, path) -> None:
    for match in ({path: 1}, {"customer_id": 7, path: 1}):
        with pytest.raises(bgjob.InvalidMatch, match="invalid match path"):
            client.dlq.find(match)
        with pytest.raises(bgjob.InvalidMatch, match="invalid match path"):
            client.dlq.erase(match)
    assert client.dlq.count() == 2
    with pytest.raises(bgjob.InvalidMatch):
        parse_match([f"{path}=1"])


def test_a_list_index_is_ascii_digits_and_still_matches(client, listed) -> None:
    assert [e.id for e in client.dlq.find({"items.1": 4}).matches] == ["job-items-2"]
    assert [e.id for e in client.dlq.find({"items.01": 2}).matches] == ["job-items"]
    assert client.dlq.find({"items.7": 2}).matches == [] and client.dlq.find({"items." + "9" * 200: 2}).matches == []


@pytest.mark.parametrize("text, value", [("7", 7), ('"7"', "7"), ("a@b.c", "a@b.c"), ('{"a": [1]}', {"a": [1]}),
                                         ("[" * 9000, "[" * 9000), ("[" * 10_000, "[" * 10_000),
                                         ("{" * 5000, "{" * 5000)])  # fmt: skip
def test_a_match_value_is_json_else_text_even_when_nested_too_deeply_to_parse(text, value) -> None:
    assert parse_value(text) == value
    assert parse_match([f"pin={text}"]) == {"pin": value}


@pytest.mark.parametrize("text", ["[" * 100_000, "[" * (MAX_VALUE_CHARS + 1), "7" * (MAX_VALUE_CHARS + 1)])
def test_a_match_value_longer_than_the_bound_is_an_invalid_match(text) -> None:
    with pytest.raises(bgjob.InvalidMatch, match="too long"):
        parse_value(text)
    with pytest.raises(bgjob.InvalidMatch, match="too long"):
        parse_match([f"pin={text}"])


def test_bgjob_dlq_find_and_erase_refuse_a_hostile_path_or_value_with_exit_2(client, listed, nats_server, prefix,
                                                                             monkeypatch, capsys) -> None:  # fmt: skip
    from bgjob.cli import main

    monkeypatch.setenv("BGJOB_URL", nats_server.url)
    monkeypatch.setenv("BGJOB_PREFIX", prefix)
    for match in ("items.²=1", "items." + "9" * 5000 + "=1", "pin=" + "[" * 100_000):
        for action in (["find"], ["erase", "--yes"]):
            assert main(["dlq", *action, "--match", match]) == 2
            assert "bgjob: error:" in capsys.readouterr().err
    assert main(["dlq", "find", "--match", "pin=" + "[" * 5000]) == 0  # too deep for JSON: text, matching nothing
    assert "0 matching" in capsys.readouterr().out and client.dlq.count() == 2


@pytest.fixture
def encrypted_letter(make_client, client, start_worker) -> tuple[str, str, str]:
    """Customer 7's dead letters from a real worker: one sent encrypted (by a client with a key, to a worker with
    it that dead-letters it) and one sent plain. Returns (the key, encrypted id, plain id)."""
    pytest.importorskip("cryptography")
    from bgjob.encryption import generate_key

    key = generate_key()
    keyed = make_client(encryption_keys=(key,))
    mux = bgjob.Mux()
    mux.handle("charge", lambda job: bgjob.MoveToDlq("card declined"))
    start_worker(keyed, mux)
    secret = keyed.send_job("charge", {"customer_id": 7, "card": "4111"})
    plain = client.send_job("charge", {"customer_id": 7})
    wait_until(lambda: client.dlq.count() == 2, message="2 dead letters")
    assert client.dlq.get(secret).headers.get("Bgjob-Encryption")  # stored encrypted
    return key, secret, plain


def key_id_of(key: str) -> str:
    import base64

    from bgjob.encryption import key_id

    return key_id(base64.urlsafe_b64decode(key))


def test_erase_without_the_key_reports_the_encrypted_dead_letter_unreadable_and_with_it_erases_it(
        make_client, client, encrypted_letter) -> None:  # fmt: skip
    key, secret, plain = encrypted_letter
    found = client.dlq.find({"customer_id": 7})
    assert [e.id for e in found.matches] == [plain] and found.complete
    assert found.unreadable == 1 and found.unreadable_ids == [secret]
    assert found.unreadable_reasons == {f"encrypted with key {key_id_of(key)} this client does not have": 1}
    assert "1 dead letters could not be checked" in found.warning and "BGJOB_ENCRYPTION_KEYS" in found.warning
    erased = client.dlq.erase({"customer_id": 7})
    assert [e.id for e in erased.matches] == [plain] and erased.unreadable_ids == [secret]
    assert [e.id for e in client.dlq.list()] == [secret]  # left, and said so
    keyed = make_client(encryption_keys=(key,))
    done = keyed.dlq.erase({"customer_id": 7})
    assert [e.id for e in done.matches] == [secret] and done.unreadable == 0 and done.warning is None
    assert client.dlq.count() == 0 and raw_stored_ids(client) == []


def test_a_tampered_or_non_json_dead_letter_is_unreadable_too(make_client, client) -> None:
    pytest.importorskip("cryptography")
    from bgjob.encryption import generate_key

    key = generate_key()
    store_dead_letter(client, "job-tampered", {"customer_id": 7},
                      headers={"Bgjob-Encryption": f"aes256gcm;{key_id_of(key)};id"})  # fmt: skip
    store_dead_letter(client, "job-text", {"customer_id": 7}, headers={"Content-Type": "text/plain"})
    store_dead_letter(client, "job-bytes", {"customer_id": 7}, headers={"Content-Type": "application/octet-stream"})
    store_dead_letter(client, "job-ok", {"customer_id": 7})
    scan = make_client(encryption_keys=(key,)).dlq.erase({"customer_id": 7})
    assert [e.id for e in scan.matches] == ["job-ok"] and scan.unreadable == 3
    assert scan.unreadable_ids == ["job-tampered", "job-text", "job-bytes"]
    assert "does not authenticate" in scan.warning and "not JSON" in scan.warning
    assert client.dlq.count() == 3


def test_unreadable_ids_are_capped_and_the_count_is_exact(client) -> None:
    for n in range(MAX_UNREADABLE_IDS + 5):
        store_dead_letter(client, f"job-{n:04d}", {"customer_id": 7}, headers={"Bgjob-Encryption": "aes256gcm;k1"})
    scan = client.dlq.find({"customer_id": 7})
    assert scan.unreadable == MAX_UNREADABLE_IDS + 5 and len(scan.unreadable_ids) == MAX_UNREADABLE_IDS
    assert scan.warning.startswith(f"{MAX_UNREADABLE_IDS + 5} dead letters could not be checked: encrypted with "
                                   "key k1 this client does not have; set BGJOB_ENCRYPTION_KEYS")  # fmt: skip


def test_bgjob_dlq_find_and_erase_warn_and_exit_1_when_a_dead_letter_could_not_be_checked(
        encrypted_letter, client, nats_server, prefix, monkeypatch, capsys) -> None:  # fmt: skip
    from bgjob.cli import main

    key, secret, _ = encrypted_letter
    monkeypatch.setenv("BGJOB_URL", nats_server.url)
    monkeypatch.setenv("BGJOB_PREFIX", prefix)
    monkeypatch.delenv("BGJOB_ENCRYPTION_KEYS", raising=False)
    warning = f"1 dead letters could not be checked: encrypted with key {key_id_of(key)} this client does not have"
    for args in (["find"], ["find", "--json"], ["erase", "--yes"]):
        assert main(["dlq", *args, "--match", "customer_id=7"]) == 1
        captured = capsys.readouterr()
        assert f"bgjob: warning: {warning}" in captured.err and "BGJOB_ENCRYPTION_KEYS" in captured.err
        assert secret in captured.err and "4111" not in captured.out + captured.err
    assert main(["dlq", "erase", "--match", "customer_id=7"]) == 2  # without --yes: the count and the warning
    assert warning in capsys.readouterr().err
    assert [e.id for e in client.dlq.list()] == [secret]
    monkeypatch.setenv("BGJOB_ENCRYPTION_KEYS", key)
    assert main(["dlq", "erase", "--match", "customer_id=7", "--yes"]) == 0
    captured = capsys.readouterr()
    assert "erased 1 dead letter" in captured.out and "warning" not in captured.err and client.dlq.count() == 0
