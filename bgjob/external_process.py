"""External-process handlers (from choria asyncjobs): a job type run by a program outside the worker process.

`Mux.external_process(job_type, argv, ...)` registers an `ExternalProcess`. Each job runs `argv` as a child
process, never through a shell, in a session (and process group) of its own; the job reaches it only as one JSON
object on stdin, never in its arguments or environment. The contract (docs/delegated.md, "External-process handlers"):

- stdin: `{"id", "type", "queue", "arg", "arg_encoding", "attempt", "request_id", "deadline", "timeout"}`, then
  EOF. `arg` is the job's JSON arg; a bytes arg is base64 text with `"arg_encoding": "base64"` (else `"json"`).
  `deadline` is the job's deadline (RFC 3339, UTC) or null; `timeout` the seconds this run may take.
- exit 0: `Complete(value)`, the value stdout parsed as JSON, else stdout as text (None when stdout is empty).
- exit 75 (`EX_TEMPFAIL`, RETRY_EXIT): `Retry()`: again after the retry policy's delay, the stderr tail as error.
- exit 65 (`EX_DATAERR`, DEAD_LETTER_EXIT): `MoveToDlq` with the stderr tail as the error.
- any other status, a signal, a program that cannot be started, or a run past its timeout: `ExternalProcessFailed`
  raised (a retryable failure, by the retry policy), the stderr tail in its message.
- timeout: min(`timeout`, the time left to the job's deadline); then the whole process group gets SIGTERM, after
  KILL_GRACE seconds SIGKILL, and the program is reaped. Whatever the program leaves running in its group when
  it exits is killed too. A worker time limit (TimeLimitExceeded) or a drain handing the job back kills it the
  same way, and so does the worker's interpreter exiting (atexit) or exiting hard on a second SIGTERM/SIGINT
  (`bgjob.hard_exit`). Nothing can when the worker is SIGKILLed (no PR_SET_PDEATHSIG: it needs `preexec_fn`,
  unsafe in a threaded process): the program runs on until it exits, beside the job's redelivery.
- stdout and stderr are read concurrently, `max_output` bytes each kept (stdout's head, stderr's tail); the rest
  is read and discarded, and said so in the value or error. A text value is stdout as written (its trailing
  newline kept, as `subprocess.run(...).stdout` has it); the value, as a result stores it (compact JSON), never
  exceeds MAX_VALUE_BYTES, its note included.

Every wait is bounded: the loop below never blocks longer than POLL seconds, so a time limit's asynchronous
exception reaches it, and never past the run's timeout plus the kill's grace.
"""

from __future__ import annotations

import atexit
import base64
import json
import logging
import os
import reprlib
import selectors
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BgjobError, HandlerError
from .handler import time_limit_seconds
from .hard_exit import before_hard_exit
from .hooks import Fate, FateKind, WorkerHooks, register_hooks
from .job import Job, format_time, positive_seconds, validate_type
from .result import Complete, MoveToDlq, Result, Retry

if TYPE_CHECKING:
    from .handler import Mux
    from .middleware.base import Middleware
    from .retry_policy import RetryPolicy

log = logging.getLogger("bgjob.worker")

#: exit status meaning "retry me by the retry policy" (sysexits.h EX_TEMPFAIL).
RETRY_EXIT = 75
#: exit status meaning "dead-letter this job now" (sysexits.h EX_DATAERR).
DEAD_LETTER_EXIT = 65
#: bytes of stdout and of stderr kept by default (256 KiB each): a value this size always fits in a stored result.
DEFAULT_MAX_OUTPUT = 256 * 1024
#: the most bytes Complete's value takes as a result stores it (compact UTF-8 JSON), its discard note included:
#: half of what a result holds on a server with the default 1 MiB max_payload (about 1,047,000 bytes), leaving
#: room for the record's errors. Output past it (a max_output above it, or text that JSON-escapes to more) is cut.
MAX_VALUE_BYTES = 512 * 1024
#: seconds between SIGTERM to the process group and SIGKILL.
KILL_GRACE = 2.0
#: seconds between SIGTERM and SIGKILL when the worker exits hard (a second SIGTERM/SIGINT).
HARD_EXIT_GRACE = 0.5
#: the longest single wait (seconds): a time limit or a hand-back is noticed within it.
POLL = 0.1
#: characters of stderr's end quoted in an error (the dead letter's, the retry's).
ERROR_TAIL = 4000
#: the worker's environment variables a program inherits (when set); everything else is left out.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
#: PATH given to a program when the worker has none.
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

_READ = 65536


class ExternalProcessFailed(BgjobError):
    """An external-process handler's program failed: it exited with a status other than 0, 65 or 75, was killed
    by a signal, ran past its timeout or could not be started. Raised in the handler, so the job is retried by
    its retry policy (dead-lettered at max_attempts); the message quotes the end of the program's stderr.

    Attributes: `program` (argv[0]), `returncode` (int, or None when it never ran), `signal` (the signal number
    that ended it, or None), `stderr` (the kept tail, text), `timed_out` (bool)."""

    def __init__(self, message: str, *, program: str, returncode: int | None = None, signal: int | None = None,
                 stderr: str = "", timed_out: bool = False) -> None:  # fmt: skip
        super().__init__(message)
        self.program = program
        self.returncode = returncode
        self.signal = signal
        self.stderr = stderr
        self.timed_out = timed_out


class ExternalProcessTimeout(ExternalProcessFailed):
    """An external-process handler's program ran past its timeout; its process group was killed."""


@dataclass(slots=True)
class _Capture:
    """One output stream: the first `limit` bytes (head) or the last (tail), and how many were discarded."""

    limit: int
    tail: bool
    data: bytearray = field(default_factory=bytearray)
    discarded: int = 0

    def add(self, chunk: bytes) -> None:
        if self.tail:
            self.data += chunk
            extra = len(self.data) - self.limit
            if extra > 0:
                del self.data[:extra]
                self.discarded += extra
            return
        room = self.limit - len(self.data)
        self.data += chunk[: max(room, 0)]
        self.discarded += max(len(chunk) - max(room, 0), 0)

    def text(self) -> str:
        return bytes(self.data).decode("utf-8", errors="replace")


@dataclass(slots=True)
class _Run:
    """A running child, as the kill-on-hand-back hook and atexit see it."""

    process: subprocess.Popen[bytes]
    cancelled: threading.Event = field(default_factory=threading.Event)


_running: dict[tuple[str, int], _Run] = {}
_running_lock = threading.Lock()


class _KillHandedBack(WorkerHooks):
    """Registered process-wide with the first external-process handler: a delivery a worker's drain hands back
    (its grace period over) has its program's process group killed, so no child outlives the job's run."""

    def on_settled(self, job: Job, outcome: object, fate: Fate) -> None:
        if fate.kind is not FateKind.HANDED_BACK:
            return
        with _running_lock:
            run = _running.get((job.id, job.attempt))
        if run is not None:
            run.cancelled.set()
            _signal_group(run.process, signal.SIGTERM)  # the handler's thread goes on to SIGKILL and reaping


_hooks = _KillHandedBack()
_installed = False


def _install() -> None:
    """Register the hand-back hook and the atexit kill, once per process."""
    global _installed
    with _running_lock:
        if _installed:
            return
        _installed = True
    register_hooks(_hooks)
    atexit.register(_kill_all)
    before_hard_exit(_kill_all_now)


def _kill_all() -> None:
    """At interpreter exit: kill every program still running (their handler threads are daemons that die here)."""
    with _running_lock:
        runs = list(_running.values())
    for run in runs:
        _signal_group(run.process, signal.SIGTERM)
    for run in runs:
        _stop(run.process, KILL_GRACE / 2, signal_first=False)


def _kill_all_now() -> None:
    """Before a hard exit (bgjob.hard_exit, in a signal handler): SIGTERM every running program's process group,
    up to HARD_EXIT_GRACE seconds for the programs to exit, then SIGKILL the groups. Takes no lock (the signal
    may have interrupted its holder) and reaps nothing (the process is about to go; init reaps)."""
    runs = list(_running.values())  # one C-level copy under the GIL
    for run in runs:
        _signal_group(run.process, signal.SIGTERM)
    deadline = time.monotonic() + HARD_EXIT_GRACE
    while time.monotonic() < deadline and not all(_exited(run.process) for run in runs):
        time.sleep(0.01)
    for run in runs:
        _signal_group(run.process, signal.SIGKILL)


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    """Send `signum` to the child's process group (its pid: it leads a session of its own); never raises. The
    child is not reaped before its group is killed, so the group id cannot belong to anyone else yet."""
    if process.returncode is not None:
        return
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _exited(process: subprocess.Popen[bytes]) -> bool:
    """Whether the child has exited, without reaping it (its zombie keeps the process-group id ours)."""
    if process.returncode is not None:
        return True
    try:
        info = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped elsewhere (e.g. gevent's child watcher): Popen knows the status
        return process.poll() is not None
    return info is not None and info.si_pid == process.pid


def _stop(process: subprocess.Popen[bytes], grace: float, *, signal_first: bool = True) -> None:
    """Kill the child's whole process group (SIGTERM, up to `grace` seconds for the child to exit, then SIGKILL)
    and reap the child (waiting at most 5 s more: a process stuck in the kernel is logged and left)."""
    if signal_first:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while not _exited(process) and time.monotonic() < deadline:
        time.sleep(0.01)
    _signal_group(process, signal.SIGKILL)  # members that outlived or ignored SIGTERM
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        log.error("external program %s (pid %d) did not die after SIGKILL; left unreaped", process.args,
                  process.pid)  # fmt: skip


class ExternalProcess:
    """The handler behind `Mux.external_process` (from choria asyncjobs): runs `argv` once per job, the job as
    JSON on stdin (see the module docstring for the whole contract). Built by `external_process_handler`, which
    validates everything; `handle(job)` is what the worker calls."""

    def __init__(self, job_type: str, argv: tuple[str, ...], timeout: float, env: dict[str, str],
                 cwd: str | None, max_output: int) -> None:  # fmt: skip
        self.job_type = job_type
        #: the program (argv[0] as an absolute path) and its fixed arguments.
        self.argv = argv
        #: seconds a run may take at most.
        self.timeout = timeout
        #: the program's whole environment: INHERITED_ENV from the worker's, then the configured variables.
        self.env = env
        self.cwd = cwd
        #: bytes kept of stdout, and of stderr.
        self.max_output = max_output

    def __repr__(self) -> str:
        return f"ExternalProcess({self.job_type!r}, {list(self.argv)!r}, timeout={self.timeout:g})"

    def handle(self, job: Job) -> Result:
        """Run the program for `job` and map its exit to a Result: Complete(stdout value) on 0, Retry() on 75,
        MoveToDlq(stderr tail) on 65. Raises ExternalProcessFailed (or ExternalProcessTimeout) otherwise; the
        program's process group is killed before anything leaves this call, a TimeLimitExceeded included."""
        budget = self.timeout
        if job.deadline is not None:
            budget = min(budget, max((job.deadline - datetime.now(UTC)).total_seconds(), 0.0))
        payload = stdin_payload(job, budget)
        program = self.argv[0]
        try:
            process = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, env=self.env, cwd=self.cwd, shell=False,
                                       start_new_session=True, close_fds=True)  # fmt: skip
        except OSError as exc:
            raise ExternalProcessFailed(f"could not start {program}: {exc.strerror or exc}", program=program) from exc
        run = _Run(process)
        key = (job.id, job.attempt)
        with _running_lock:
            _running[key] = run
        stdout, stderr = _Capture(self.max_output, tail=False), _Capture(self.max_output, tail=True)
        timed_out = False
        try:
            timed_out = not _communicate(process, payload, stdout, stderr, time.monotonic() + budget, run.cancelled)
        finally:
            # Always, even on a TimeLimitExceeded: the program and anything it started go with the run. After a
            # normal exit this only clears leftovers of its group (and reaps it).
            _stop(process, KILL_GRACE, signal_first=not _exited(process))
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:  # stdin's unread rest: nothing is buffered, nothing is lost
                        pass
            with _running_lock:
                if _running.get(key) is run:
                    del _running[key]
        return self._outcome(process, stdout, stderr, timed_out, budget, run.cancelled.is_set())

    def _outcome(self, process: subprocess.Popen[bytes], stdout: _Capture, stderr: _Capture, timed_out: bool,
                 budget: float, cancelled: bool) -> Result:  # fmt: skip
        program, code = self.argv[0], process.returncode
        err = stderr.text()
        tail = _tail(stderr)
        if timed_out or cancelled:
            why = "was handed back by the worker's drain" if cancelled else f"ran past its timeout of {budget:g}s"
            raise ExternalProcessTimeout(f"{program} {why}: its process group was killed{tail}", program=program,
                                         returncode=code, stderr=err, timed_out=True)  # fmt: skip
        if code == 0:
            return Complete(_value(stdout))
        if code == RETRY_EXIT:
            return Retry(error=f"{program} exited {RETRY_EXIT} (EX_TEMPFAIL: retry){tail}")
        if code == DEAD_LETTER_EXIT:
            return MoveToDlq(f"{program} exited {DEAD_LETTER_EXIT} (EX_DATAERR: dead-letter){tail}")
        if code is not None and code < 0:
            name = _signal_name(-code)
            raise ExternalProcessFailed(f"{program} was killed by signal {-code} ({name}){tail}", program=program,
                                        returncode=code, signal=-code, stderr=err)  # fmt: skip
        raise ExternalProcessFailed(f"{program} exited with status {code}{tail}", program=program, returncode=code,
                                    stderr=err)  # fmt: skip


def _communicate(process: subprocess.Popen[bytes], payload: bytes, stdout: _Capture, stderr: _Capture,
                 deadline: float, cancelled: threading.Event) -> bool:  # fmt: skip
    """Write `payload` to the child's stdin (then close it) while reading stdout and stderr, until both are at
    EOF and the child exited. Returns False when `deadline` (time.monotonic()) passed or the run was cancelled
    first. Every wait is at most POLL seconds."""
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    captures = {process.stdout.fileno(): stdout, process.stderr.fileno(): stderr}
    with selectors.DefaultSelector() as selector:
        view = memoryview(payload)
        stdin_fd = process.stdin.fileno()
        if view:
            os.set_blocking(stdin_fd, False)
            selector.register(stdin_fd, selectors.EVENT_WRITE)
        else:
            process.stdin.close()
        for fd in captures:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        exited_at: float | None = None
        while selector.get_map():
            now = time.monotonic()
            if now >= deadline or cancelled.is_set():
                return False
            if exited_at is None and _exited(process):
                exited_at = now
            elif exited_at is not None and now - exited_at > 1.0:
                break  # the program exited but something it started holds its output open: stop reading
            for key, _ in selector.select(min(POLL, deadline - now)):
                fd = key.fd
                if fd == stdin_fd:
                    try:
                        view = view[os.write(fd, view[:_READ]) :]
                    except BlockingIOError:
                        continue
                    except (BrokenPipeError, OSError):  # it stopped reading: the rest is not needed
                        view = view[len(view) :]
                    if not view:
                        selector.unregister(fd)
                        process.stdin.close()
                    continue
                try:
                    chunk = os.read(fd, _READ)
                except BlockingIOError:
                    continue
                if chunk:
                    captures[fd].add(chunk)
                else:
                    selector.unregister(fd)
    pause = 0.0005
    while not _exited(process):  # output closed: the child is exiting
        now = time.monotonic()
        if now >= deadline or cancelled.is_set():
            return False
        time.sleep(min(pause, POLL, deadline - now))
        pause *= 2
    return True


def stdin_payload(job: Job, timeout: float) -> bytes:
    """The JSON object an external program reads on stdin for `job` (UTF-8), `timeout` the seconds it may run."""
    arg, encoding = job.arg, "json"
    if isinstance(arg, (bytes, bytearray, memoryview)):
        arg, encoding = base64.b64encode(bytes(arg)).decode("ascii"), "base64"
    document = {"id": job.id, "type": job.type, "queue": job.queue, "arg": arg, "arg_encoding": encoding,
                "attempt": job.attempt, "request_id": job.request_id,
                "deadline": format_time(job.deadline) if job.deadline is not None else None,
                "timeout": round(timeout, 3)}  # fmt: skip
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _value(stdout: _Capture) -> Any:
    """Complete's value: stdout as JSON when all of it was kept and it parses, else stdout as text, exactly as
    written (trailing newline included; invalid UTF-8 as U+FFFD); None when it is empty or only whitespace.
    Text cut by max_output ends with a note; a value that would take more than MAX_VALUE_BYTES stored is cut to
    fit (as text, a parsed JSON value too), note included."""
    data = bytes(stdout.data)
    if not stdout.discarded:
        if not data.strip():
            return None
        try:
            value = json.loads(data)
        except ValueError:
            value = stdout.text()
        if _stored_size(value) <= MAX_VALUE_BYTES:
            return value
    return _cut_value(data, stdout.discarded, stdout.limit)


def _cut_value(data: bytes, discarded: int, limit: int) -> str:
    """`data` (the kept head of stdout, `discarded` bytes after it thrown away) as text, cut so that it and its
    note take at most MAX_VALUE_BYTES stored."""
    total = len(data) + discarded

    def text(kept: int, reason: str) -> str:
        return f"{data[:kept].decode('utf-8', errors='replace')}\n[bgjob: {total - kept} more bytes of output " \
               f"discarded, past {reason}]"  # fmt: skip

    reason = f"max_output={limit}"
    if discarded and _stored_size(text(len(data), reason)) <= MAX_VALUE_BYTES:
        return text(len(data), reason)
    reason = f"the {MAX_VALUE_BYTES}-byte limit of a stored value"
    low, high = 0, len(data)  # the most bytes kept whose text fits (text(0, ...) always does)
    while low < high:
        middle = (low + high + 1) // 2
        if _stored_size(text(middle, reason)) <= MAX_VALUE_BYTES:
            low = middle
        else:
            high = middle - 1
    return text(low, reason)


def _stored_size(value: Any) -> int:
    """Bytes `value` takes in a stored result (compact UTF-8 JSON, as bgjob.job_results.encoded_size counts)."""
    try:
        return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates: stored escaped
        return len(json.dumps(value, separators=(",", ":")))


def _tail(stderr: _Capture) -> str:
    """The error-message suffix quoting stderr's end: at most ERROR_TAIL characters of its kept tail, surrounding
    whitespace left out; "" when stderr was empty. When that is not all of stderr, the suffix says how many
    characters it quotes and how many bytes stderr had in all."""
    text = stderr.text()
    quoted = text.rstrip()[-ERROR_TAIL:].lstrip()
    if not quoted:
        return ""
    if quoted == text.strip() and not stderr.discarded:
        return f"; stderr: {quoted}"
    return f"; stderr (its last {len(quoted)} characters, of {len(stderr.data) + stderr.discarded} bytes): {quoted}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def external_process_handler(mux: Mux, job_type: str, argv: Sequence[str], *, timeout: float | timedelta = 60,
                             env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
                             max_output: int = DEFAULT_MAX_OUTPUT, sensitive: Collection[str] | None = None,
                             retry_policy: RetryPolicy | None = None, middleware: Sequence[Middleware] | None = None,
                             time_limit: float | timedelta | None = None, group: str | None = None,
                             singleton: bool = False, partitioned: bool = False) -> ExternalProcess:  # fmt: skip
    """Validate an external-process handler's configuration, register it on `mux` (see `Mux.external_process`)
    and return it. Raises HandlerError naming the option at fault (and InvalidJob for a bad job type)."""
    validate_type(job_type)
    seconds = _timeout(job_type, timeout)
    try:
        limit = time_limit_seconds(time_limit)
    except ValueError as exc:
        raise HandlerError(f"external process for {job_type!r}: {exc}") from None
    if limit is not None:
        seconds = min(seconds, limit)
    handler = ExternalProcess(job_type, _argv(job_type, argv), seconds, _env(job_type, env), _cwd(job_type, cwd),
                              _max_output(job_type, max_output))  # fmt: skip
    mux.handle(job_type, handler, sensitive=sensitive, retry_policy=retry_policy, middleware=middleware,
               time_limit=time_limit, group=group, singleton=singleton, partitioned=partitioned)  # fmt: skip
    _install()
    return handler


def _argv(job_type: str, argv: Sequence[str]) -> tuple[str, ...]:
    """argv with argv[0] as an absolute path to an executable file."""
    where = f"external process for {job_type!r}"
    if isinstance(argv, (str, bytes)) or not isinstance(argv, (list, tuple)):
        raise HandlerError(f"{where}: argv must be a list of str (the program, then its fixed arguments; never a "
                           f"shell command line), got {reprlib.repr(argv)}")  # fmt: skip
    if not argv:
        raise HandlerError(f"{where}: argv is empty: give the program first, e.g. ['/usr/local/bin/convert-job']")
    for item in argv:
        if not isinstance(item, str) or "\0" in item:
            raise HandlerError(f"{where}: every argv item must be a str without NUL, got {reprlib.repr(item)}")
    program = argv[0]
    if os.path.isabs(program):
        path = program
    elif "/" in program or not program:
        raise HandlerError(f"{where}: program {program!r} is a relative path: give an absolute path or a name found "
                           "on PATH")  # fmt: skip
    else:
        found = shutil.which(program)
        if found is None:
            raise HandlerError(f"{where}: program {program!r} is not on PATH; give its absolute path")
        path = os.path.abspath(found)
    if not os.path.exists(path):
        raise HandlerError(f"{where}: program {path!r} does not exist")
    if os.path.isdir(path):
        raise HandlerError(f"{where}: program {path!r} is a directory, not a program")
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise HandlerError(f"{where}: program {path!r} is not executable (chmod +x it, or give its interpreter "
                           "as argv[0])")  # fmt: skip
    return (path, *argv[1:])


def _timeout(job_type: str, value: float | timedelta) -> float:
    try:
        return positive_seconds("timeout", value)
    except ValueError as exc:
        raise HandlerError(f"external process for {job_type!r}: {exc}") from None


def _env(job_type: str, env: Mapping[str, str] | None) -> dict[str, str]:
    """The program's environment: INHERITED_ENV from this process (PATH defaulted), then `env`."""
    base = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    base.setdefault("PATH", DEFAULT_PATH)
    if env is None:
        return base
    if not isinstance(env, Mapping):
        raise HandlerError(f"external process for {job_type!r}: env must be a dict of str to str, got "
                           f"{reprlib.repr(env)}")  # fmt: skip
    for name, value in env.items():
        if not isinstance(name, str) or not name or "=" in name or "\0" in name:
            raise HandlerError(f"external process for {job_type!r}: env name {reprlib.repr(name)} must be a non-empty "
                               "str without '=' or NUL")  # fmt: skip
        if not isinstance(value, str) or "\0" in value:
            raise HandlerError(f"external process for {job_type!r}: env[{name!r}] must be a str without NUL, got a "
                               f"{type(value).__name__}")  # fmt: skip
    return {**base, **env}


def _cwd(job_type: str, cwd: str | os.PathLike[str] | None) -> str | None:
    if cwd is None:
        return None
    if not isinstance(cwd, (str, os.PathLike)):
        raise HandlerError(f"external process for {job_type!r}: cwd must be a path or None, got {reprlib.repr(cwd)}")
    path = Path(cwd)
    if not path.is_dir():
        raise HandlerError(f"external process for {job_type!r}: cwd {str(path)!r} is not a directory")
    return str(path.resolve())


def _max_output(job_type: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HandlerError(f"external process for {job_type!r}: max_output must be an int >= 1 (bytes), got "
                           f"{reprlib.repr(value)}")  # fmt: skip
    return value
