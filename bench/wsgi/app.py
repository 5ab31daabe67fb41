"""The WSGI app the wsgi scenario serves with gunicorn: /send enqueues a job per request, /plain does not."""

from __future__ import annotations

import bgjob

client = bgjob.Client(bgjob.Settings.from_env())


def application(environ, start_response):
    if environ.get("PATH_INFO") == "/send":
        body = client.send_job("hit", {"q": environ.get("QUERY_STRING", "")}).encode()
    else:
        body = b"ok"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
