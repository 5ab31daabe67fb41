"""The one place where bgjob's configuration and its defaults live."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError

_PREFIX = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Settings:
    """Client and topology settings; every field has a working default.

    `url` None means: use `BGJOB_URL`, else start the project's embedded nats-server.
    Several URLs may be given comma-separated (a cluster).
    """

    url: str | None = None
    #: subject prefix; stream names are the upper-cased prefix plus the queue name.
    prefix: str = "bgjob"
    #: stream replicas (1 for a single server, 3 for a production cluster).
    replicas: int = 1
    #: seconds within which a repeated job id (`Nats-Msg-Id`) is dropped as a duplicate.
    duplicate_window: float = 120.0
    #: seconds a delivered job may go unacknowledged before JetStream redelivers it;
    #: workers extend it with heartbeats while a handler runs.
    ack_wait: float = 30.0
    #: queue-wide cap on delivered-but-unfinished jobs across all workers (None: server default).
    max_ack_pending: int | None = None
    #: seconds dead letters are kept.
    dlq_max_age: float = 30 * 24 * 3600.0
    #: seconds stored job results are kept.
    result_ttl: float = 24 * 3600.0
    #: seconds a worker's directory entry outlives its last heartbeat (it beats every third of this).
    worker_ttl: float = 15.0
    #: queues whose jobs store their results by default (send_job's store_result overrides).
    result_queues: frozenset[str] = frozenset()
    connect_timeout: float = 5.0
    #: seconds one JetStream request (a publish's PubAck) may take.
    request_timeout: float = 5.0
    #: seconds transient errors are retried (tenacity) before bgjob.ConnectionError.
    retry_for: float = 15.0
    #: wait for the server to confirm acks (slower; closes the lost-ack duplicate window).
    double_ack: bool = False
    #: base64 ed25519 key that signs every job sent (see bgjob.signing.generate_keypair).
    signing_key: str | None = None
    #: base64 ed25519 public keys; when given, workers dead-letter jobs no key verifies (reason "signature").
    verify_keys: tuple[str, ...] = ()
    #: embedded server data dir (None: per-user, per-project default).
    data_dir: str | None = None
    #: connection name shown by the server's monitoring.
    name: str | None = None
    #: extra keyword arguments for nats.connect (user, password, token, tls, user_credentials, ...).
    nats_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _PREFIX.fullmatch(self.prefix):
            raise ConfigurationError(f"prefix {self.prefix!r} must match {_PREFIX.pattern}")
        if self.replicas < 1:
            raise ConfigurationError("replicas must be >= 1")
        if self.ack_wait < 1:
            raise ConfigurationError("ack_wait must be at least 1 second")
        object.__setattr__(self, "result_queues", frozenset(self.result_queues))
        if isinstance(self.verify_keys, str):
            object.__setattr__(self, "verify_keys", (self.verify_keys,))
        object.__setattr__(self, "verify_keys", tuple(self.verify_keys))

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Settings from `BGJOB_*` environment variables, then explicit overrides."""
        env: dict[str, Any] = {}
        if os.environ.get("BGJOB_URL"):
            env["url"] = os.environ["BGJOB_URL"]
        if os.environ.get("BGJOB_PREFIX"):
            env["prefix"] = os.environ["BGJOB_PREFIX"]
        if os.environ.get("BGJOB_REPLICAS"):
            env["replicas"] = int(os.environ["BGJOB_REPLICAS"])
        if os.environ.get("BGJOB_DATA_DIR"):
            env["data_dir"] = os.environ["BGJOB_DATA_DIR"]
        env.update({k: v for k, v in overrides.items() if v is not None})
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(env) - fields
        options = {k: env.pop(k) for k in unknown}
        if options:
            env["nats_options"] = {**env.get("nats_options", {}), **options}
        return cls(**env)
