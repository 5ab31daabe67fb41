"""Pull requests on a queue's consumer, sized to a worker's free capacity."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import Core

log = logging.getLogger("bgjob.worker")


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
        self.requested = 0
        self.deadline = 0.0
        self.consumer_gone = False

    async def request(self, batch: int, inbox: str) -> None:
        body = json.dumps({"batch": batch, "expires": int(self._expires * 1e9)}).encode()
        await self._nc.publish(self._subject, body, reply=inbox)
        self.requested += batch
        self.deadline = time.monotonic() + self._expires + 1.0

    def time_left(self) -> float:
        return max(0.0, self.deadline - time.monotonic()) if self.requested else self._expires

    def expire_lost(self) -> None:
        if self.requested and time.monotonic() > self.deadline:
            self.requested = 0

    def on_status(self, headers: dict[str, str]) -> None:
        status = headers.get("Status")
        if status == "100":  # idle heartbeat
            return
        pending = headers.get("Nats-Pending-Messages")
        if pending is not None and pending.isdigit():
            self.requested = max(0, self.requested - int(pending))
        elif status != "404":
            self.requested = 0
        if status in ("409", "503"):
            # nats-py keys Description with a str-Enum member, which hashes unlike the plain string.
            description = next((v for k, v in headers.items() if k == "Description"), "")
            if status == "503" or "Deleted" in description:
                self.consumer_gone = True
            if "Pending-Messages" not in str(headers):
                log.warning("pull request refused: %s %s", status, description)
