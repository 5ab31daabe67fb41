"""Pull requests on a queue's consumer, sized to a worker's free capacity, and what their statuses mean."""

from __future__ import annotations

import enum
import json
import logging
import time
from typing import TYPE_CHECKING

from nats.js.api import StatusCode

from ..headers import DESCRIPTION, PENDING_MESSAGES, STATUS

if TYPE_CHECKING:
    from ..core import Core

log = logging.getLogger("bgjob.worker")


class PullTrouble(enum.Enum):
    """Why pull requests stopped working; the fetch loop decides what to do about each."""

    #: 409 Consumer Deleted: the consumer (or its stream) is gone and must be created again.
    CONSUMER_GONE = "consumer_gone"
    #: 503 No Responders: nothing answered for the consumer. Either it does not exist, or JetStream is
    #: unavailable for now (a cluster without quorum, a restarting server); the loop asks which.
    NO_RESPONDERS = "no_responders"


class PullRequests:
    """Book-keeping for pull requests on the queue's consumer: how many jobs are asked for and not yet here.

    Each request expires server-side after `expires` seconds and the server then says how many of its
    jobs it did not deliver (408 + Nats-Pending-Messages). A request lost with a connection is
    forgotten once its expiry has passed without word.
    """

    def __init__(self, core: Core, stream: str, consumer: str, expires: float) -> None:
        self._nc = core.nc
        self._subject = f"{core.js._prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._expires = expires
        self._bodies: dict[int, bytes] = {}  # per batch size: the request's body (one per size, made once)
        self.requested = 0
        self.deadline = 0.0
        #: set by a status that calls for more than another request; the fetch loop clears it.
        self.trouble: PullTrouble | None = None

    async def request(self, batch: int, inbox: str) -> None:
        body = self._bodies.get(batch)
        if body is None:
            body = self._bodies[batch] = json.dumps({"batch": batch, "expires": int(self._expires * 1e9)}).encode()
        await self._nc.publish(self._subject, body, reply=inbox)
        self.requested += batch
        self.deadline = time.monotonic() + self._expires + 1.0

    def time_left(self) -> float:
        return max(0.0, self.deadline - time.monotonic()) if self.requested else self._expires

    def expire_lost(self) -> None:
        if self.requested and time.monotonic() > self.deadline:
            self.requested = 0

    def on_status(self, headers: dict[str, str]) -> None:
        status = headers.get(STATUS)
        if status == StatusCode.CONTROL_MESSAGE:  # idle heartbeat
            return
        pending = headers.get(PENDING_MESSAGES)
        if pending is not None and pending.isdigit():
            self.requested = max(0, self.requested - int(pending))
        elif status != StatusCode.NO_MESSAGES:
            self.requested = 0
        if status == StatusCode.SERVICE_UNAVAILABLE:
            self.trouble = PullTrouble.NO_RESPONDERS
        elif status == StatusCode.CONFLICT:
            # nats-py keys Description with a str-Enum member, which hashes unlike the plain string.
            description = next((v for k, v in headers.items() if k == DESCRIPTION), "")
            if "deleted" in description.lower():
                self.trouble = PullTrouble.CONSUMER_GONE
            elif pending is None:  # 409 Leadership Change and friends: the next request goes to the new leader
                log.warning("pull request ended by the server: 409 %s; asking again", description or "(no reason)")
