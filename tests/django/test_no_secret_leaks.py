"""The Django channels with planted secrets: a password-protected nats-server in BGJOB['URL'] (the password
holding '@'), and a dead letter holding a sensitive card number, an Authorization header and texts quoting both.
Every admin page and manage.py command shows neither the URL's password, nor (without
`view_deadletter_payload`) the job's secrets; with that permission the payload shows, the password still not.
The bgjob channels are tests/test_no_secret_leaks.py."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import call_command

from bgjob.server import EmbeddedServer, free_port

from .dlq_fill import store_dead_letter
from .test_admin import DLQ, staff

PASSWORD = "dj@ngo-Planted-Passw0rd"
CARD, BEARER = "4111-2222-3333-4444", "planted-bearer-d1a7"
QUEUES = "/admin/bgjob_django/queue/"


@pytest.fixture
def secured_url(tmp_path: Path, bgjob_settings: dict, prefix: str) -> Iterator[str]:
    """BGJOB['URL'] pointed at a server that needs user `app` with PASSWORD."""
    from bgjob_django import conf

    port = free_port()
    (tmp_path / "auth.conf").write_text(f'authorization {{ user: "app", password: "{PASSWORD}" }}\n')
    server = EmbeddedServer(tmp_path / "nats", port=port, extra_args=["-c", str(tmp_path / "auth.conf")])
    server.start()
    url = f"nats://app:{PASSWORD}@127.0.0.1:{port}"
    bgjob_settings["URL"] = url
    conf.reset()
    try:
        yield url
    finally:
        conf.reset()
        server.stop()


def _command(*args: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue() + err.getvalue()


@pytest.mark.django_db
def test_no_admin_page_or_command_shows_the_url_password_or_unpermitted_job_secrets(
    secured_url: str, django_user_model
) -> None:
    from bgjob_django import get_client

    client = get_client()
    store_dead_letter(client, "job-7", {"card": CARD, "customer_id": 7},
                      headers={"Bgjob-Sensitive": "card", "Authorization": f"Bearer {BEARER}"},
                      error=f"card {CARD} declined ({BEARER})", traceback=f"ValueError: {CARD} {BEARER}")  # fmt: skip
    viewer = staff(django_user_model, "view_deadletter", "view_queue")
    reader = staff(django_user_model, "view_deadletter", "view_queue", "view_deadletter_payload")
    pages = {f"{who} {path}": user.get(path) for who, user in (("viewer", viewer), ("reader", reader))
             for path in (QUEUES, DLQ, f"{DLQ}job-7/change/", f"{DLQ}?q=job-7")}  # fmt: skip
    assert {name: page.status_code for name, page in pages.items()} == dict.fromkeys(pages, 200)
    shown = {name: page.content.decode() for name, page in pages.items()}
    for command in (["bgjob_status"], ["bgjob_dlq", "list"], ["bgjob_dlq", "list", "--json"],
                    ["bgjob_dlq", "show", "job-7"], ["bgjob_dlq", "find", "--match", "customer_id=7", "--json"],
                    ["bgjob_queue", "show"]):  # fmt: skip
        shown[f"manage.py {' '.join(command)}"] = _command(*command)

    assert [name for name, text in shown.items() if PASSWORD in text or "Planted" in text] == []
    unpermitted = [name for name, text in shown.items() if not name.startswith("reader")]
    assert [name for name in unpermitted if CARD in shown[name] or BEARER in shown[name]] == []
    # The pages did show the server and the failure; the payload permission shows the payload.
    assert f"nats://***@127.0.0.1:{secured_url.rsplit(':', 1)[1]}" in shown[f"viewer {QUEUES}"]
    assert "declined" in shown[f"viewer {DLQ}"] and "********" in shown[f"viewer {DLQ}job-7/change/"]
    assert CARD in shown[f"reader {DLQ}job-7/change/"] and f"Bearer {BEARER}" in shown[f"reader {DLQ}job-7/change/"]
