r"""The producer's public hook protocol: what a `SendHooks` sees of each job sent, and the headers it may add.

The producing twin of `bgjob.hooks.WorkerHooks`, for tracing (`bgjob.contrib.opentelemetry` injects the W3C
`traceparent`/`tracestate` of a PRODUCER span) and anything else that must travel with a job from the call that
sends it. Hooks registered with `register_send_hooks` apply to every Client in the process:

    class Tenant(bgjob.send_hooks.SendHooks):
        def start_send(self, spec, queue, *, publish):
            return bgjob.send_hooks.SendScope({"X-Tenant": current_tenant()})

    bgjob.send_hooks.register_send_hooks(Tenant())

`start_send` runs once per job at the call (`send_job`, each job of `send_jobs`, `prepare_job`: so a job sent at
a transaction's commit or through an outbox carries what was current at the call, not at the commit), in the
caller's thread, before the job is built. The headers of the `SendScope` it returns are added to the job's
(a header the caller set wins), through the same validation as the caller's (`bgjob.job.validate_headers`: a
reserved or malformed name, or a value that is not one printable line, is logged and left out, never a refused
send) and the same size limit (a job they push over it is JobTooLarge). Like every user header they are not
covered by a job signature (`bgjob.signing`). `SendScope.end(job_id, error)` is called once, when the send is
over: after the job's PubAck (or its refusal) for `send_job`/`send_jobs`, at once after building for
`prepare_job` (`publish=False`: the publish, later, is another call's). A hook that raises is logged and skipped:
it never changes what is sent.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

from .errors import InvalidJob
from .job import JobSpec, validate_headers

log = logging.getLogger("bgjob.send_hooks")


class SendScope:
    """One job's send as one SendHooks sees it: `headers` to add to the job, `end` when the send is over."""

    def __init__(self, headers: Mapping[str, str] | None = None) -> None:
        #: header name -> single-line str value, added to the job unless the caller set that header.
        self.headers: dict[str, str] = dict(headers or {})

    def end(self, job_id: str | None, error: BaseException | None) -> None:
        """The send is over: `job_id` is the job's id (None when it was refused before it had one), `error` None
        when the job was stored (PubAck) or prepared, else the bgjob error that refused it or left it
        unconfirmed. Called once, in the sender's thread; the default does nothing."""


class SendHooks:
    """Override `start_send`; the default adds nothing. See the module docstring."""

    def start_send(self, spec: JobSpec, queue: str, *, publish: bool) -> SendScope | None:
        """A job is about to be built from `spec` for `queue` (spec.queue, when set, wins), in the caller's thread:
        return a SendScope (headers to add, and its `end`), or None to leave it alone. `publish` is False for
        `prepare_job` (published later by another call), True when the same call publishes it."""
        return None


_send_hooks: list[SendHooks] = []


def register_send_hooks(hooks: SendHooks) -> None:
    """Add `hooks` to every Client's sends in this process. Registering the same object twice has no effect.
    Raises TypeError for anything but a SendHooks."""
    if not isinstance(hooks, SendHooks):
        raise TypeError(f"register_send_hooks needs a bgjob.send_hooks.SendHooks instance, got {hooks!r}")
    if not any(h is hooks for h in _send_hooks):
        _send_hooks.append(hooks)


def unregister_send_hooks(hooks: SendHooks) -> None:
    """Remove hooks added with register_send_hooks (nothing happens if they were not)."""
    _send_hooks[:] = [h for h in _send_hooks if h is not hooks]


def start_sends(spec: JobSpec, queue: str, *, publish: bool) -> tuple[JobSpec, list[SendScope]]:
    """Call every registered hook's `start_send`; returns `spec` with their valid headers added (the caller's
    win) and the scopes to `end_sends`. Never raises for a hook's fault."""
    if not _send_hooks:
        return spec, []
    scopes: list[SendScope] = []
    added: dict[str, str] = {}
    for hooks in list(_send_hooks):
        try:
            scope = hooks.start_send(spec, queue, publish=publish)
            if scope is None:
                continue
            if not isinstance(scope, SendScope):
                raise TypeError(f"start_send returned {type(scope).__name__}, not a SendScope or None")
        except Exception:
            log.exception("bgjob: send hook %r failed; the job is sent without it", hooks)
            continue
        scopes.append(scope)
        try:
            added.update(validate_headers(scope.headers))
        except InvalidJob as exc:
            log.error("bgjob: send hook %r added a bad header (%s); its headers are left out", hooks, exc)
    own = spec.headers or {}
    if not added or not isinstance(own, Mapping):  # the caller's bad headers: building the job refuses them
        return spec, scopes
    lowered = {str(name).lower() for name in own}
    extra = {name: value for name, value in added.items() if name.lower() not in lowered}
    if not extra:
        return spec, scopes
    return dataclasses.replace(spec, headers={**own, **extra}), scopes


def end_sends(scopes: Sequence[SendScope], job_id: str | None, error: BaseException | None) -> None:
    """Call each scope's `end`; one that raises is logged and skipped."""
    for scope in scopes:
        try:
            scope.end(job_id, error)
        except Exception:
            log.exception("bgjob: send hook scope %r failed to end", scope)
