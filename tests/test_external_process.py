"""External-process handlers (`Mux.external_process`, from choria asyncjobs) through real Workers, a real
nats-server and real programs: shell and Python scripts written by each test."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import stat
import sys
from pathlib import Path

import pytest

import bgjob
from bgjob.external_process import MAX_VALUE_BYTES, ExternalProcessFailed
from bgjob.job import Job

from .conftest import drain, python_process, wait_until


def script(path: Path, text: str) -> str:
    """Write an executable script (its first line the interpreter) and return its absolute path."""
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def python_script(path: Path, body: str) -> str:
    return script(path, f"#!{sys.executable}\nimport json, os, sys\njob = json.load(sys.stdin)\n{body}")


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_exit_0_completes_with_stdout_parsed_as_json(client, start_worker, tmp_path) -> None:
    program = python_script(tmp_path / "sum.py", "print(json.dumps({'sum': sum(job['arg']), 'seen': job}))\n")
    mux = bgjob.Mux()
    mux.external_process("sum", [program], timeout=30)
    start_worker(client, mux)
    job_id = client.send_job("sum", [1, 2, 3], store_result=True, request_id="req-1")
    result = client.result(job_id, wait=15)
    assert (result.status, result.attempts) == (bgjob.ResultStatus.SUCCESSFUL, 1)
    seen = result.value["seen"]
    assert result.value["sum"] == 6
    assert {k: seen[k] for k in ("id", "type", "arg", "attempt", "request_id", "deadline", "arg_encoding")} == {
        "id": job_id, "type": "sum", "arg": [1, 2, 3], "attempt": 1, "request_id": "req-1", "deadline": None,
        "arg_encoding": "json"}  # fmt: skip
    assert 0 < seen["timeout"] <= 30


def test_exit_0_with_text_output_completes_with_the_text(client, start_worker, tmp_path) -> None:
    program = script(tmp_path / "hello.sh", "#!/bin/sh\ncat >/dev/null\necho 'hello, not json'\n")
    mux = bgjob.Mux()
    mux.external_process("hello", [program])
    start_worker(client, mux)
    job_id = client.send_job("hello", None, store_result=True)
    result = client.result(job_id, wait=15)
    assert (result.status, result.value) == (bgjob.ResultStatus.SUCCESSFUL, "hello, not json\n")


def test_exit_75_retries_by_the_policy_then_succeeds_on_attempt_2(client, start_worker, tmp_path) -> None:
    program = python_script(tmp_path / "flaky.py", "if job['attempt'] == 1:\n"
                                                   "    print('upstream busy', file=sys.stderr)\n"
                                                   "    sys.exit(75)\n"
                                                   "print(json.dumps({'attempt': job['attempt']}))\n")  # fmt: skip
    mux = bgjob.Mux()
    mux.external_process("flaky", [program])
    start_worker(client, mux)
    job_id = client.send_job("flaky", None, store_result=True)
    result = wait_until(lambda: (r := client.result(job_id)).status == bgjob.ResultStatus.SUCCESSFUL and r,
                        message="success on attempt 2")  # fmt: skip
    assert (result.value, result.attempts) == ({"attempt": 2}, 2)
    assert [(e.attempt, "exited 75" in e.error and "upstream busy" in e.error) for e in result.errors] == [(1, True)]
    assert client.dlq.count() == 0


def test_exit_65_dead_letters_at_once_with_the_stderr_tail(client, start_worker, tmp_path) -> None:
    program = script(tmp_path / "reject.sh", "#!/bin/sh\ncat >/dev/null\necho 'starting' >&2\n"
                                             "echo 'invalid record: no customer' >&2\nexit 65\n")  # fmt: skip
    mux = bgjob.Mux()
    mux.external_process("reject", [program])
    start_worker(client, mux)
    job_id = client.send_job("reject", {"customer": None})
    entry = wait_until(lambda: client.dlq.list(), message="dead letter")[0]
    assert (entry.id, entry.reason, entry.attempts) == (job_id, "handler", 1)
    assert "exited 65" in entry.error and entry.error.endswith("starting\ninvalid record: no customer")


def test_a_program_killed_by_a_signal_is_a_retryable_failure(client, start_worker, tmp_path) -> None:
    program = script(tmp_path / "crash.sh", "#!/bin/sh\ncat >/dev/null\necho 'about to crash' >&2\nkill -9 $$\n")
    mux = bgjob.Mux()
    mux.external_process("crash", [program], retry_policy=bgjob.RetryPolicy(max_attempts=2, base_delay=0.05))
    start_worker(client, mux)
    job_id = client.send_job("crash", None)
    entry = wait_until(lambda: client.dlq.list(), message="dead letter")[0]
    assert (entry.id, entry.reason, entry.attempts) == (job_id, "max_attempts", 2)
    assert entry.error.startswith("ExternalProcessFailed: ")
    assert "killed by signal 9 (SIGKILL)" in entry.error and "about to crash" in entry.error


def test_another_exit_status_is_a_retryable_failure_with_stderr(client, start_worker, tmp_path) -> None:
    program = python_script(tmp_path / "fail.py", "sys.exit('disk full')\n")  # exit status 1, text on stderr
    mux = bgjob.Mux()
    mux.external_process("fail", [program], retry_policy=bgjob.RetryPolicy(max_attempts=1))
    start_worker(client, mux)
    client.send_job("fail", None)
    entry = wait_until(lambda: client.dlq.list(), message="dead letter")[0]
    assert entry.reason == "max_attempts"
    assert entry.error == f"ExternalProcessFailed: {program} exited with status 1; stderr: disk full"


GRANDCHILD = """#!/bin/sh
cat >/dev/null
sleep 1000 &
echo $! > "$1/grandchild"
echo $$ > "$1/child"
echo 'working' >&2
sleep 1000
"""


def pids(directory: Path) -> list[int]:
    files = [directory / "child", directory / "grandchild"]
    if not all(f.exists() and f.read_text().strip() for f in files):
        return []
    return [int(f.read_text()) for f in files]


def test_timeout_kills_the_whole_process_group_and_leaves_no_orphan(client, start_worker, tmp_path) -> None:
    program = script(tmp_path / "hang.sh", GRANDCHILD)
    mux = bgjob.Mux()
    mux.external_process("hang", [program, str(tmp_path)], timeout=1, retry_policy=bgjob.RetryPolicy(max_attempts=1))
    start_worker(client, mux)
    job_id = client.send_job("hang", None)
    child, grandchild = wait_until(lambda: pids(tmp_path), message="the program's pids")
    entry = wait_until(lambda: client.dlq.list(), message="dead letter")[0]
    assert (entry.id, entry.reason) == (job_id, "max_attempts")
    assert entry.error.startswith("ExternalProcessTimeout: ") and "ran past its timeout of 1s" in entry.error
    assert "working" in entry.error
    # The handler returned only after killing and reaping: nothing of the group is left.
    assert not alive(child) and not alive(grandchild)


def test_a_drain_handing_the_job_back_kills_the_program(client, tmp_path) -> None:
    program = script(tmp_path / "hang.sh", GRANDCHILD)
    mux = bgjob.Mux()
    mux.external_process("hang", [program, str(tmp_path)], timeout=600)
    worker = bgjob.Worker(client, mux, fetch_timeout=0.5, grace_period=0.5)
    thread = worker.start()
    client.send_job("hang", None)
    child, grandchild = wait_until(lambda: pids(tmp_path), message="the program's pids")
    worker.stop()
    thread.join(timeout=30)
    assert not thread.is_alive()
    wait_until(lambda: not alive(child) and not alive(grandchild), message="the program and its child killed")


EXITING = """
import sys, threading, time
from pathlib import Path
import bgjob
from bgjob.job import Job
program, directory = sys.argv[1], Path(sys.argv[2])
handler = bgjob.Mux().external_process("hang", [program, str(directory)], timeout=600)
threading.Thread(target=handler.handle, args=(Job(id="j1", type="hang", arg=None),), daemon=True).start()
while not (directory / "child").exists():
    time.sleep(0.05)
"""


def test_the_worker_process_exiting_kills_a_program_still_running(tmp_path) -> None:
    program = script(tmp_path / "hang.sh", GRANDCHILD)
    process = python_process(EXITING, program, str(tmp_path))
    assert process.wait(timeout=60) == 0  # the handler's daemon thread still ran the program at exit
    child, grandchild = wait_until(lambda: pids(tmp_path), message="the program's pids")
    wait_until(lambda: not alive(child) and not alive(grandchild), message="the program and its child killed")


HARD_EXIT_WORKER = """
import logging, sys
import bgjob
logging.basicConfig(level=logging.INFO)
url, prefix, program, directory = sys.argv[1:5]
client = bgjob.Client(bgjob.Settings(url=url, prefix=prefix))
mux = bgjob.Mux()
mux.external_process("hang", [program, directory], timeout=600)
bgjob.Worker(client, mux, fetch_timeout=0.5, grace_period=600).run()
"""


def test_a_second_sigterm_exiting_the_worker_at_once_kills_its_programs_first(client, nats_server, prefix,
                                                                               tmp_path) -> None:  # fmt: skip
    program = script(tmp_path / "hang.sh", GRANDCHILD)
    log = tmp_path / "worker.log"
    with log.open("wb") as err:
        process = python_process(HARD_EXIT_WORKER, nats_server.url, prefix, program, str(tmp_path), stderr=err)
    child = grandchild = 0
    try:
        client.send_job("hang", None)
        child, grandchild = wait_until(lambda: pids(tmp_path), timeout=30, message="the program's pids")
        process.send_signal(signal.SIGTERM)
        wait_until(lambda: "send again to exit now" in log.read_text(), message="the drain to start")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 1  # os._exit(1): no atexit handler ran
        wait_until(lambda: not alive(child) and not alive(grandchild), message="the program and its child killed")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if child:  # without the fix: the program's whole group (it leads it) would be left running
            try:
                os.killpg(child, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_huge_output_is_capped_and_the_cut_is_noted(client, start_worker, tmp_path) -> None:
    program = python_script(tmp_path / "loud.py", "sys.stdout.write('x' * 5_000_000)\n"
                                                  "sys.stderr.write('e' * 5_000_000 + 'END')\n"
                                                  "sys.exit(int(job['arg']))\n")  # fmt: skip
    mux = bgjob.Mux()
    mux.external_process("loud", [program], max_output=10_000, retry_policy=bgjob.RetryPolicy(max_attempts=1))
    start_worker(client, mux)
    ok = client.send_job("loud", 0, store_result=True)
    value = client.result(ok, wait=30).value
    assert value.startswith("x" * 10_000) and "x" * 10_001 not in value
    assert value.endswith("[bgjob: 4990000 more bytes of output discarded, past max_output=10000]")
    client.send_job("loud", 3)
    entry = wait_until(lambda: client.dlq.list(), message="dead letter")[0]
    assert "exited with status 3" in entry.error and entry.error.endswith("eeeEND")
    assert "(its last 4000 characters, of 5000003 bytes)" in entry.error and len(entry.error) < 5_000


def test_the_stderr_note_states_what_it_quotes_with_a_small_max_output(tmp_path) -> None:
    program = python_script(tmp_path / "noisy.py", "sys.stderr.write('e' * 5_000 + 'END')\nsys.exit(3)\n")
    handler = bgjob.Mux().external_process("noisy", [program], max_output=1000)
    with pytest.raises(ExternalProcessFailed) as caught:
        handler.handle(Job(id="j1", type="noisy", arg=None))
    note = re.search(r"; stderr \(its last (\d+) characters, of (\d+) bytes\): (.*)$", str(caught.value), re.S)
    assert note is not None, str(caught.value)
    assert (int(note[1]), int(note[2]), note[3]) == (1000, 5003, "e" * 997 + "END")


def test_the_default_max_output_always_fits_in_a_stored_result(client, start_worker, tmp_path) -> None:
    # 2 MB of output, and 300 kB of control characters (6 bytes each once JSON-escaped): both stored SUCCESSFUL.
    program = python_script(tmp_path / "flood.py", "sys.stdout.write(job['arg'][0] * job['arg'][1])\n")
    mux = bgjob.Mux()
    mux.external_process("flood", [program])
    start_worker(client, mux)
    for arg in (["x", 2_000_000], ["\x01", 300_000]):
        result = client.result(client.send_job("flood", arg, store_result=True), wait=30)
        assert (result.status, result.errors) == (bgjob.ResultStatus.SUCCESSFUL, ()), arg
        assert result.value.startswith(arg[0] * 1000) and "more bytes of output discarded, past" in result.value
        assert len(json.dumps(result.value, ensure_ascii=False, separators=(",", ":")).encode()) <= MAX_VALUE_BYTES
    big = client.result(client.send_job("flood", ["x", 2_000_000], store_result=True), wait=30).value
    assert big == "x" * 262_144 + "\n[bgjob: 1737856 more bytes of output discarded, past max_output=262144]"


def test_a_json_value_too_large_to_store_is_cut_to_fit(tmp_path) -> None:
    program = python_script(tmp_path / "list.py", "print(json.dumps(['\x01' * 1000] * 300))\n")
    handler = bgjob.Mux().external_process("list", [program], max_output=2_000_000)
    value = handler.handle(Job(id="j1", type="list", arg=None)).value
    assert value.startswith('["\\u0001') and value.endswith("-byte limit of a stored value]")
    assert len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()) <= MAX_VALUE_BYTES


def test_a_hostile_arg_reaches_the_program_as_literal_text_on_stdin(client, start_worker, tmp_path) -> None:
    marks = [tmp_path / f"pwned-{n}" for n in range(5)]
    hostile = (f"$(touch {marks[0]}) `touch {marks[1]}`; touch {marks[2]} | touch {marks[3]} && touch {marks[4]} "
               "'\"\\ $HOME ${PATH} * ? ~ > /dev/null < /etc/passwd #")  # fmt: skip
    program = script(tmp_path / "echo.sh", '#!/bin/sh\ninput=$(cat)\nprintf "%s" "$input"\necho "args:$#" >&2\n'
                                           'exit 65\n')  # fmt: skip
    mux = bgjob.Mux()
    mux.external_process("echo", [program])
    start_worker(client, mux)
    job_id = client.send_job("echo", {"text": hostile, hostile: [hostile]}, request_id="r-`id`")
    entry = wait_until(lambda: client.dlq.list(), message="dead letter")[0]
    assert entry.id == job_id and entry.error.endswith("stderr: args:0")  # no argument came from the job
    assert not any(mark.exists() for mark in marks)
    # What the program read on stdin (then echoed to stdout) is the job, character for character.
    program2 = script(tmp_path / "cat.sh", "#!/bin/sh\nexec cat\n")
    mux2 = bgjob.Mux()
    mux2.external_process("cat", [program2])
    start_worker(client, mux2, queue="hostile")
    echoed = client.send_job("cat", {"text": hostile, hostile: [hostile]}, queue="hostile", store_result=True)
    value = client.result(echoed, wait=15).value
    assert value["arg"] == {"text": hostile, hostile: [hostile]}
    assert not any(mark.exists() for mark in marks)


def test_the_worker_serves_other_jobs_while_a_program_runs(client, start_worker, tmp_path) -> None:
    release, started = tmp_path / "release", tmp_path / "started"
    program = script(tmp_path / "wait.sh", f'#!/bin/sh\ncat >/dev/null\ntouch "{started}"\n'
                                           f'while [ ! -e "{release}" ]; do sleep 0.05; done\necho done\n')  # fmt: skip
    done: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.external_process("slow", [program])
    mux.handle("quick", lambda job: done.put(job.arg) or bgjob.Complete())
    start_worker(client, mux, concurrency=4)
    slow = client.send_job("slow", None, store_result=True)
    wait_until(started.exists, message="the program to start")
    for n in range(5):
        client.send_job("quick", n)
    assert sorted(drain(done, 5)) == [0, 1, 2, 3, 4]
    assert client.result(slow).status == bgjob.ResultStatus.RUNNING
    release.touch()
    assert client.result(slow, wait=15).value == "done\n"


def test_the_program_gets_a_minimal_environment_plus_the_configured_variables(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BGJOB_URL", "nats://user:secret@example:4222")
    monkeypatch.setenv("DATABASE_PASSWORD", "hunter2")
    program = python_script(tmp_path / "env.py", "print(json.dumps(dict(os.environ)))\n")
    handler = bgjob.Mux().external_process("env", [program], env={"API_TOKEN": "given"})
    value = handler.handle(Job(id="j1", type="env", arg=None)).value
    assert value["API_TOKEN"] == "given" and "PATH" in value
    assert set(value) <= {"API_TOKEN", "PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"}


def test_a_bytes_arg_arrives_base64_encoded(tmp_path) -> None:
    program = python_script(tmp_path / "b.py", "print(json.dumps([job['arg'], job['arg_encoding']]))\n")
    handler = bgjob.Mux().external_process("b", [program])
    assert handler.handle(Job(id="j1", type="b", arg=b"\x00\xff")).value == ["AP8=", "base64"]


def test_a_program_that_cannot_start_is_a_retryable_failure(tmp_path) -> None:
    program = script(tmp_path / "gone.sh", "#!/bin/sh\n")
    handler = bgjob.Mux().external_process("gone", [program])
    os.remove(program)
    with pytest.raises(ExternalProcessFailed, match="could not start"):
        handler.handle(Job(id="j1", type="gone", arg=None))


@pytest.mark.parametrize(("argv", "options", "message"), [
    ("/bin/echo hi", {}, "argv must be a list of str"),
    ([], {}, "argv is empty"),
    (["/bin/echo", 7], {}, "every argv item must be a str"),
    (["bin/echo"], {}, "is a relative path"),
    (["no-such-program-bgjob"], {}, "'no-such-program-bgjob' is not on PATH"),
    (["/bin/echo"], {"timeout": 0}, "timeout must be a finite number of seconds > 0"),
    (["/bin/echo"], {"timeout": 10**400}, "timeout must be a finite number of seconds > 0"),  # was OverflowError
    (["/bin/echo"], {"timeout": "60"}, "timeout must be seconds"),
    (["/bin/echo"], {"env": {"A=B": "x"}}, "env name 'A=B'"),
    (["/bin/echo"], {"env": {"A": 1}}, "env['A'] must be a str"),
    (["/bin/echo"], {"cwd": "/no/such/dir"}, "is not a directory"),
    (["/bin/echo"], {"max_output": 0}, "max_output must be an int >= 1"),
])  # fmt: skip
def test_bad_configuration_is_refused_at_registration(argv, options, message) -> None:
    with pytest.raises(bgjob.HandlerError, match=message.replace("[", r"\[").replace("]", r"\]")):
        bgjob.Mux().external_process("convert", argv, **options)


def test_a_program_that_is_missing_or_not_executable_is_refused_at_registration_saying_which(tmp_path) -> None:
    plain = tmp_path / "plain.sh"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    for argv, message in (
        ([str(plain)], f"program '{plain}' is not executable"),
        ([str(tmp_path)], f"program '{tmp_path}' is a directory, not a program"),
        ([str(tmp_path / "count-words")], f"program '{tmp_path / 'count-words'}' does not exist"),
    ):
        with pytest.raises(bgjob.HandlerError, match=re.escape(message)):
            bgjob.Mux().external_process("convert", argv)


def test_a_name_on_path_is_kept_as_its_absolute_path() -> None:
    handler = bgjob.Mux().external_process("list", ["ls", "-l"])
    assert os.path.isabs(handler.argv[0]) and handler.argv[1:] == ("-l",)
    assert json.loads(json.dumps(list(handler.argv)))[0].endswith("/ls")
