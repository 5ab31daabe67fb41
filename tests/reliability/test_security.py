"""Scenario 7: security. A nats-server that requires user/password, a token, an nkey, a creds file
(operator-mode JWTs) or TLS (a CA made here); jobs flow with the right credentials given through
BGJOB_URL (plus nats.connect options where a URL cannot carry them), and wrong ones give a clear
bgjob.ConnectionError that leaks no secret. Job signing: unsigned, foreign-signed and tampered jobs never
reach a handler and land in the DLQ with reason `signature`. No pickle anywhere."""

from __future__ import annotations

import ast
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import bgjob
from bgjob.server import EmbeddedServer, free_port
from bgjob.signing import generate_keypair

from ..conftest import ROOT, python_process, wait_until
from .credentials import make_pki, new_nkey, operator_mode, write_creds
from .support import Scenario, nats_call, read_records, scale, stream_name, tally, wait_for_completion

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

JOBS = scale(20, 200)
MODES = ["user-password", "token", "nkey", "creds", "tls"]


@dataclass
class Secured:
    """A server that requires one kind of credentials, and how to reach it rightly and wrongly."""

    mode: str
    config: str
    #: BGJOB_URL as a deployment would set it (credentials inside where the URL can carry them).
    url: str
    #: extra nats.connect options for an in-process client (an ssl.SSLContext, a seed or creds file).
    options: dict[str, Any] = field(default_factory=dict)
    #: the same for the worker process: JSON-able options and environment variables.
    worker_options: dict[str, Any] = field(default_factory=dict)
    worker_env: dict[str, str] = field(default_factory=dict)
    wrong_url: str = ""
    wrong_options: dict[str, Any] = field(default_factory=dict)
    #: what the error for wrong credentials must say (lower case).
    expect: str = "authorization"
    #: strings that must never appear in an error message.
    secrets: tuple[str, ...] = ()
    server: EmbeddedServer | None = None


def secured_case(mode: str, directory: Path, port: int) -> Secured:
    plain = f"nats://127.0.0.1:{port}"
    if mode == "user-password":
        return Secured(mode, 'authorization { user: "bgjob", password: "s3cr3t-pw" }',
                       url=f"nats://bgjob:s3cr3t-pw@127.0.0.1:{port}", wrong_url=f"nats://bgjob:wr0ng-pw@127.0.0.1:{port}",
                       secrets=("s3cr3t-pw", "wr0ng-pw"))  # fmt: skip
    if mode == "token":
        return Secured(mode, 'authorization { token: "t0ken-s3cr3t" }', url=f"nats://t0ken-s3cr3t@127.0.0.1:{port}",
                       wrong_url=f"nats://wr0ng-t0ken@127.0.0.1:{port}",
                       secrets=("t0ken-s3cr3t", "wr0ng-t0ken"))  # fmt: skip
    if mode in ("nkey", "creds"):
        pytest.importorskip("nkeys", reason="nats-py needs the nkeys package for nkey and creds logins")
    if mode == "nkey":
        seed, user = new_nkey("user")
        stranger, _ = new_nkey("user")
        (directory / "user.nk").write_text(seed)
        (directory / "stranger.nk").write_text(stranger)
        options = {"nkeys_seed": str(directory / "user.nk")}
        return Secured(mode, f'authorization {{ users = [ {{ nkey: "{user.public_key.decode()}" }} ] }}', url=plain,
                       options=options, worker_options=options, wrong_url=plain,
                       wrong_options={"nkeys_seed": str(directory / "stranger.nk")},
                       secrets=(seed, stranger))  # fmt: skip
    if mode == "creds":
        trusted, untrusted = operator_mode(), operator_mode()
        options = {"user_credentials": str(write_creds(directory / "user.creds", trusted.account))}
        wrong = {"user_credentials": str(write_creds(directory / "stranger.creds", untrusted.account))}
        return Secured(mode, trusted.config, url=plain, options=options, worker_options=options, wrong_url=plain,
                       wrong_options=wrong)  # fmt: skip
    assert mode == "tls"
    pki = make_pki(directory / "pki")
    if pki is None:
        pytest.skip("the openssl CLI is needed to make the test CA")
    url = f"tls://127.0.0.1:{port}"
    return Secured(mode, f'tls {{ cert_file: "{pki.cert}", key_file: "{pki.key}" }}', url=url,
                   options={"tls": ssl.create_default_context(cafile=str(pki.ca))},
                   worker_env={"SSL_CERT_FILE": str(pki.ca)},  # the system's default context, told about our CA
                   wrong_url=url, expect="certificate verify failed")  # fmt: skip


@pytest.fixture(scope="module", params=MODES)
def secured(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    directory = tmp_path_factory.mktemp(request.param)
    port = free_port()
    case = secured_case(request.param, directory, port)
    (directory / "server.conf").write_text(case.config + "\n")
    case.server = EmbeddedServer(directory / "nats", port=port, extra_args=["-c", str(directory / "server.conf")])
    case.server.start(timeout=30)
    try:
        yield case
    finally:
        case.server.stop()


@pytest.mark.timeout(180)
def test_jobs_flow_through_a_server_that_requires_credentials(secured, prefix, workers) -> None:
    scenario = Scenario(f"7 auth: {secured.mode}")
    settings = bgjob.Settings.from_env(url=secured.url, prefix=prefix, nats_options=secured.options)
    producer = bgjob.Client(settings).connect()
    try:
        ids = producer.send_jobs([bgjob.JobSpec("work", {"ms": 0}, job_id=f"a-{i}") for i in range(JOBS)])
        # The worker gets its server from BGJOB_URL, as `bgjob worker` would.
        workers.start(env={"BGJOB_URL": secured.url, **secured.worker_env}, url=None, prefix=prefix,
                      nats_options=secured.worker_options)  # fmt: skip
        result = wait_for_completion(workers.record, ids, timeout=60)
        scenario.report(result, note="credentials from BGJOB_URL / connect options")
        assert not result.lost, result.lost_message() + "\n" + workers.log_tail()
    finally:
        producer.close()


def connect_error(settings: bgjob.Settings, within: float) -> BaseException:
    """What connecting raises; fails the test if connect() neither connects nor raises within `within` s."""
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            bgjob.Client(settings).connect().close()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)  # left behind if it hangs
    thread.start()
    thread.join(within)
    if thread.is_alive():
        pytest.fail(f"connect() neither connected nor raised within {within:g} s")
    if not outcome:
        pytest.fail("connected with wrong credentials")
    return outcome[0]


@pytest.mark.timeout(120)
def test_wrong_credentials_give_a_clear_connection_error(secured, prefix) -> None:
    """Found here, fixed in b16c3e6: a refused login was retried for retry_for and reported as 'no servers
    available'; a certificate that does not verify made connect() hang for ever."""
    # retry_for 60 s, answer within 20 s: a refused login is not retried as if the server were away.
    settings = bgjob.Settings.from_env(url=secured.wrong_url, prefix=prefix, retry_for=60.0,
                                      nats_options=secured.wrong_options)
    error = connect_error(settings, within=20)
    message = str(error)
    assert isinstance(error, bgjob.ConnectionError), repr(error)
    assert "127.0.0.1" in message, "the error names the server"
    assert not [secret for secret in secured.secrets if secret in message], message
    assert secured.expect in message.lower(), message


@pytest.mark.timeout(120)
def test_no_credentials_at_all_give_a_clear_connection_error(secured, prefix) -> None:
    if secured.mode == "tls":
        pytest.skip("TLS alone authenticates the server, not the client")
    settings = bgjob.Settings(url=f"nats://127.0.0.1:{secured.server.port}", prefix=prefix, retry_for=60.0)
    error = connect_error(settings, within=20)
    assert isinstance(error, bgjob.ConnectionError) and "authori" in str(error).lower(), repr(error)


# -- job signing --------------------------------------------------------------------------------------------
TAMPERINGS = {
    "tampered-body": lambda subject, headers, body: (subject, headers, b'{"ms":1}'),
    "tampered-type": lambda subject, headers, body: (subject.replace(".job.work", ".job.echo"),
                                                     {**headers, "Bgjob-Type": "echo"}, body),
    "tampered-content-type": lambda subject, headers, body: (subject, {**headers, "Content-Type":
                                                                       "application/octet-stream"}, body),
    "replayed-from-another-queue": lambda subject, headers, body: (subject, headers, body),
    "garbage-signature": lambda subject, headers, body: (subject, {**headers, "Bgjob-Signature": "AAAA"}, body),
    "stripped-signature": lambda subject, headers, body: (
        subject, {k: v for k, v in headers.items() if k != "Bgjob-Signature"}, body),
}  # fmt: skip


@pytest.mark.timeout(180)
def test_unsigned_foreign_and_tampered_jobs_never_reach_a_handler(nats_server, prefix, workers) -> None:
    scenario = Scenario("7 signing: verify_keys on")
    signing_key, verify_key = generate_keypair()
    foreign_key, _ = generate_keypair()

    def client(**options: Any) -> bgjob.Client:
        return bgjob.Client(bgjob.Settings(url=nats_server.url, prefix=prefix, **options)).connect()

    signed, unsigned, foreign = client(signing_key=signing_key), client(), client(signing_key=foreign_key)
    try:
        good = signed.send_jobs([bgjob.JobSpec("work", {"ms": 0}, job_id=f"good-{i}") for i in range(JOBS)])
        bad = unsigned.send_jobs([bgjob.JobSpec("work", {"ms": 0}, job_id=f"unsigned-{i}") for i in range(5)])
        bad += foreign.send_jobs([bgjob.JobSpec("work", {"ms": 0}, job_id=f"foreign-{i}") for i in range(5)])
        # Validly signed jobs for a queue nobody consumes, read back and republished onto this one, altered.
        for name in TAMPERINGS:
            signed.send_job("work", {"ms": 0}, job_id=name, queue="staging")

        async def republish(_nc: Any, js: Any) -> None:
            for seq, (name, tamper) in enumerate(TAMPERINGS.items(), start=1):
                stored = await js.get_msg(stream_name(prefix, "staging"), seq=seq)
                assert stored.headers["Bgjob-Id"] == name
                headers = {k: v for k, v in stored.headers.items() if not k.startswith("Nats-")}
                subject, headers, body = tamper(stored.subject.replace(".staging.", ".default."), headers, stored.data)
                await js.publish(subject, body, headers=headers)

        nats_call(nats_server.url, republish)
        bad += list(TAMPERINGS)
        workers.start(url=nats_server.url, prefix=prefix, verify_keys=[verify_key])
        result = wait_for_completion(workers.record, good, timeout=60)
        wait_until(lambda: signed.dlq.count() == len(bad), timeout=60, message=f"{len(bad)} dead letters")
        scenario.report(result, note=f"{len(bad)} unsigned/foreign/tampered jobs all dead-lettered")
        assert not result.lost, result.lost_message()
        handled = {r["id"] for r in read_records(workers.record)}
        assert handled == set(good), f"reached a handler unverified: {sorted(handled - set(good))}"
        entries = signed.dlq.list(limit=1000)
        assert sorted(e.id for e in entries) == sorted(bad)
        assert {e.reason for e in entries} == {"signature"}
        assert tally(good, [r["id"] for r in read_records(workers.record)]).duplicated == 0
    finally:
        for c in (signed, unsigned, foreign):
            c.close()


# -- no pickle -----------------------------------------------------------------------------------------------
SERIALISERS_THAT_RUN_CODE = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "jsonpickle", "marshal", "shelve"}


def test_no_pickle_anywhere_in_bgjob() -> None:
    offenders = []
    for path in sorted([*(ROOT / "bgjob").rglob("*.py"), *(ROOT / "bgjob_django").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):  # fmt: skip
                names = [str(node.args[0].value)]
            else:
                continue
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {name}" for name in names
                          if name.split(".")[0] in SERIALISERS_THAT_RUN_CODE]  # fmt: skip
    assert not offenders, offenders


TRIPWIRE = r"""
import pickle, _pickle, sys

def tripped(*args, **kwargs):
    with open(sys.argv[2], "a") as f:
        f.write("pickle called\n")
    raise RuntimeError("pickle called")

for module in (pickle, _pickle):
    for name in ("loads", "load", "dumps", "dump"):
        setattr(module, name, tripped)
from tests.reliability.worker_app import main
main()
"""


@pytest.mark.timeout(120)
def test_a_worker_never_unpickles_even_a_pickle_payload(nats_server, prefix, client, tmp_path) -> None:
    """A worker whose pickle functions are tripwires processes JSON, bytes and a raw pickle payload."""
    import json

    tripwire, record = tmp_path / "tripwire", tmp_path / "records.jsonl"
    config = {"url": nats_server.url, "prefix": prefix, "record": str(record), "fsync": False}
    with open(tmp_path / "worker.log", "wb") as log:
        proc = python_process(TRIPWIRE, json.dumps(config), str(tripwire), stdout=log, stderr=log)
    try:
        with pytest.raises(bgjob.InvalidJob):
            client.send_job("echo", Path("/not/json"))  # no pickle fallback for objects
        ids = [client.send_job("echo", {"json": [1, 2]}), client.send_job("echo", b"\x80\x04raw bytes")]

        async def publish(_nc: Any, js: Any) -> None:
            payload = b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94."
            await js.publish(f"{prefix}.default.job.echo", payload,
                             headers={"Bgjob-Id": "pickled", "Content-Type": "application/python-pickle"})  # fmt: skip

        nats_call(nats_server.url, publish)
        wait_until(lambda: {r["id"] for r in read_records(record)} >= set(ids), timeout=60, message="the jobs")
        entry = wait_until(lambda: [e for e in client.dlq.list() if e.id == "pickled"], timeout=60)[0]
        assert entry.reason == "decode"
        assert not tripwire.exists(), "pickle was called"
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(10)
