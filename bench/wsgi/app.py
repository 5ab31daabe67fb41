"""The WSGI app the wsgi scenario serves with gunicorn.

/plain answers without a job; /send/<system> enqueues one job per request with that system's producer
(bench/systems), the queue named in BENCH_WSGI_QUEUES ({system: queue}, JSON). Both answer the same
two bytes, so the endpoints differ only by the send call.

gunicorn (without --preload) imports this module in each worker process after the fork, and a system's
producer is built on its first request in that process, so no connection is shared across forks; under
`-k gevent` that is after the monkey-patching, so the clients use cooperative sockets. A send that
raises answers 500 with the error, which the scenario reports as that system skipped.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from typing import Any

from bench.env import Context
from bench.systems import load_system

_ctx = Context.from_env()
_queues: dict[str, str] = json.loads(os.environ.get("BENCH_WSGI_QUEUES", "{}"))
_senders: dict[str, Callable[[dict[str, Any]], None]] = {}
_lock = threading.Lock()
_BODY = b"ok"


def _sender(name: str) -> Callable[[dict[str, Any]], None]:
    send = _senders.get(name)
    if send is None:
        with _lock:
            send = _senders.get(name)
            if send is None:
                send = _senders[name] = load_system(name, _ctx).producer(_queues[name])
    return send


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    path = environ.get("PATH_INFO", "")
    status, body = "200 OK", _BODY
    if path.startswith("/send/"):
        try:
            _sender(path[6:])({"q": environ.get("QUERY_STRING", "")})
        except Exception as exc:  # noqa: BLE001 - the scenario reports it as this system skipped
            status, body = "500 Internal Server Error", f"{type(exc).__name__}: {exc}".encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
