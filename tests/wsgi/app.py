"""A tiny WSGI app for the gunicorn tests: /send enqueues a job, /plain does not."""

from __future__ import annotations

import json
import os

import bgjob

# Created and used at import time: with --preload the master is connected before it forks the workers.
client = bgjob.Client(bgjob.Settings.from_env())
client.send_job("boot", None, job_id=f"boot-{os.getpid()}")


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/send":
        n = environ.get("QUERY_STRING", "").removeprefix("n=")
        job_id = client.send_job("hit", {"n": n})
        body = json.dumps({"id": job_id}).encode()
    elif path == "/plain":
        body = b'{"ok": true}'
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
