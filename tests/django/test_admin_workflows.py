"""The admin's workflow runs pages: the newest runs with their steps' states, a run's steps (state, attempts,
start, duration, error), cancel, permissions, and hostile run ids and stored records, against a real nats-server
and a real worker."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.test import Client

import bgjob
from bgjob.workflows import _bucket

from ..conftest import wait_until

RUNS = "/admin/bgjob_django/workflowrun/"
HOSTILE_ERROR = "<script>alert('x')</script> & broke"


def staff(django_user_model, *perms: str, csrf: bool = False) -> Client:
    user = django_user_model.objects.create_user(f"staff-{'-'.join(perms) or 'none'}", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="bgjob_django", codename__in=perms))
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """Holds the `wait` step until set (set at the end, so the worker can stop)."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def worker(run_worker, gate: threading.Event) -> None:
    """A real worker (WorkerGroup on default) running typed-arg steps: add, mul, boom (raises), wait (gated)."""
    mux = bgjob.Mux()

    def step(name, fn):
        mux.handle(name, lambda job: bgjob.Complete(fn(*job.arg["args"], **job.arg["kwargs"])))

    def boom(*args):
        raise RuntimeError(HOSTILE_ERROR)

    step("add", lambda a, b=0: a + b)
    step("mul", lambda a, b=1: a * b)
    step("boom", boom)
    step("wait", lambda *args: gate.wait(30) and (args[0] if args else None))
    run_worker(mux=mux)


def s(job_type: str, *args: object) -> bgjob.Signature:
    return bgjob.signature(job_type, *args).set(max_attempts=1)


def run_ids(html: str) -> list[str]:
    return re.findall(r'<tr data-run="([^"]+)"', html)


def put_record(bgjob_client: bgjob.Client, key: str, value: bytes) -> None:
    """Write `value` under `key` of the <PREFIX>_WORKFLOWS bucket, as a hostile or broken writer could."""

    async def put(core) -> None:
        await (await _bucket(core)).put(key, value)

    bgjob_client.run(put)


@pytest.mark.django_db
def test_admin_index_shows_workflow_runs_without_add(admin_client) -> None:
    html = admin_client.get("/admin/").content.decode()
    assert f'href="{RUNS}"' in html and "Workflow runs" in html
    assert f"{RUNS}add/" not in html


@pytest.mark.django_db
def test_list_shows_the_newest_runs_first_with_step_counts_and_the_failed_step(admin_client, bgjob_client,
                                                                               worker) -> None:  # fmt: skip
    first = bgjob_client.start(bgjob.chain(s("add", 1, 2), s("mul", 10)), run_id="first-ok")
    assert first.result(timeout=20) == 30
    failed = bgjob_client.start(bgjob.chain(s("add", 1), s("boom"), s("mul", 2)), run_id="then-failed")
    with pytest.raises(bgjob.WorkflowFailed):
        failed.result(timeout=20)
    response = admin_client.get(RUNS)
    html = response.content.decode()
    assert response.status_code == 200
    assert run_ids(html) == ["then-failed", "first-ok"]
    row = re.search(r'<tr data-run="then-failed".*?</tr>', html, re.S).group(0)
    assert 'data-state="failed"' in row and "1 failed, 1 skipped, 1 succeeded" in row
    failed_step = re.search(r"<td data-failed-step>(.*?)</td>", row, re.S).group(1)
    assert "<code>1</code>" in failed_step and "&lt;script&gt;" in failed_step and "<script>" not in html
    ok = re.search(r'<tr data-run="first-ok".*?</tr>', html, re.S).group(0)
    assert "2 succeeded" in ok and "<code>" in ok and "Created (UTC)" in html and "Finished (UTC)" in html
    assert f'href="{RUNS}first-ok/change/"' in html
    assert '<ol class="breadcrumbs">' in html or '<div class="breadcrumbs">' in html


@pytest.mark.django_db
def test_list_is_bounded(admin_client, bgjob_client, worker, monkeypatch) -> None:
    monkeypatch.setattr("bgjob_django.admin_views.WORKFLOW_RUNS_SHOWN", 2)
    for n in range(3):
        bgjob_client.start(bgjob.chain(s("add", n)), run_id=f"run-{n}").result(timeout=20)
    assert run_ids(admin_client.get(RUNS).content.decode()) == ["run-2", "run-1"]


@pytest.mark.django_db
def test_detail_shows_each_step_state_attempts_start_duration_and_escaped_error(admin_client, bgjob_client,
                                                                                worker, settings) -> None:  # fmt: skip
    settings.TIME_ZONE = "Europe/Berlin"
    run = bgjob_client.start(bgjob.chain(s("add", 1, 2), s("boom"), s("mul", 3)), run_id="broken")
    with pytest.raises(bgjob.WorkflowFailed):
        run.result(timeout=20)
    status = run.status()
    html = admin_client.get(f"{RUNS}broken/change/").content.decode()
    assert "Started (Europe/Berlin)" in html and "Created (Europe/Berlin)" in html
    steps = dict(re.findall(r'<tr data-step="([^"]+)" data-state="([^"]+)"', html))
    assert steps == {"0": "succeeded", "1": "failed", "2": "skipped"}
    ok = re.search(r'<tr data-step="0".*?</tr>', html, re.S).group(0)
    started = status.steps["0"].started_at.astimezone(ZoneInfo("Europe/Berlin"))
    assert started.strftime("%Y-%m-%d %H:%M:%S") in ok and f"{status.steps['0'].duration:.3f}s" in ok
    assert re.search(r'<td class="bgjob-num">1</td>', ok)  # one attempt
    bad = re.search(r'<tr data-step="1".*?</tr>', html, re.S).group(0)
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; broke" in bad and "<script>" not in html
    assert "skipped: <code>1</code> failed" in html
    assert 'id="bgjob-failed-step"><code>1</code>' in html
    assert 'href="/admin/bgjob_django/deadletter/wf-broken-1/change/"' in bad  # a superuser sees the DLQ
    assert 'id="bgjob-cancel"' not in html  # finished: nothing to cancel
    assert re.search(r'<a href="[^"]*/admin/bgjob_django/workflowrun/">Workflow runs</a>', html)  # breadcrumbs


@pytest.mark.django_db
def test_cancel_stops_a_running_run_and_is_logged(admin_client, bgjob_client, worker, gate, admin_user) -> None:
    run = bgjob_client.start(bgjob.chain(s("wait", 1), s("add", 1)), run_id="long")
    wait_until(lambda: run.status().steps["0"].state == "running", message="the first step to run")
    page = admin_client.get(f"{RUNS}long/change/").content.decode()
    assert 'id="bgjob-cancel"' in page and 'name="csrfmiddlewaretoken"' in page
    assert admin_client.get(f"{RUNS}long/cancel/").status_code == 302  # a GET changes nothing
    assert run.status().state == "running"
    response = admin_client.post(f"{RUNS}long/cancel/")
    assert response.status_code == 302 and response["Location"] == f"{RUNS}long/change/"
    assert run.status().state == "cancelled"
    assert LogEntry.objects.get(object_id="long").change_message == "Cancelled."
    gate.set()
    wait_until(lambda: run.status().steps["0"].state == "succeeded", message="the running step to finish")
    after = admin_client.get(f"{RUNS}long/change/", follow=True).content.decode()
    assert 'data-step="1" data-state="cancelled"' in after and 'id="bgjob-cancel"' not in after
    again = admin_client.post(f"{RUNS}long/cancel/", follow=True).content.decode()
    assert "had already finished or been cancelled" in again


@pytest.mark.django_db
def test_cancel_needs_csrf_and_the_change_permission(django_user_model, bgjob_client, worker, gate) -> None:
    run = bgjob_client.start(bgjob.chain(s("wait", 1), s("add", 1)), run_id="guarded")
    viewer = staff(django_user_model, "view_workflowrun")
    assert 'id="bgjob-cancel"' not in viewer.get(f"{RUNS}guarded/change/").content.decode()
    assert viewer.post(f"{RUNS}guarded/cancel/").status_code == 403
    changer = staff(django_user_model, "view_workflowrun", "change_workflowrun", csrf=True)
    assert changer.post(f"{RUNS}guarded/cancel/").status_code == 403  # no CSRF token
    assert run.status().state == "running"
    page = changer.get(f"{RUNS}guarded/change/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    assert changer.post(f"{RUNS}guarded/cancel/", {"csrfmiddlewaretoken": token}).status_code == 302
    assert run.status().state == "cancelled"


@pytest.mark.django_db
def test_staff_without_the_view_permission_get_403(django_user_model, bgjob_client, worker) -> None:
    bgjob_client.start(bgjob.chain(s("add", 1)), run_id="secret").result(timeout=20)
    nobody = staff(django_user_model)
    assert nobody.get(RUNS).status_code == 403
    assert nobody.get(f"{RUNS}secret/change/").status_code == 403
    assert nobody.post(f"{RUNS}secret/cancel/").status_code == 403
    assert 'href="/admin/bgjob_django/workflowrun/"' not in nobody.get("/admin/").content.decode()
    viewer = staff(django_user_model, "view_workflowrun")
    assert run_ids(viewer.get(RUNS).content.decode()) == ["secret"]


@pytest.mark.django_db
@pytest.mark.parametrize("run_id", ["nope", "a.b", "*", ">", "a%20b", "x" * 65, "%3Cb%3Eo"])
def test_an_unknown_or_invalid_run_id_goes_back_to_the_list_with_a_message(admin_client, bgjob_client,
                                                                           run_id: str) -> None:  # fmt: skip
    response = admin_client.get(f"{RUNS}{run_id}/change/")
    assert response.status_code == 302 and response["Location"] == RUNS
    page = admin_client.get(RUNS).content.decode()
    assert "There is no workflow run with id" in page and "<b>o" not in page
    assert admin_client.post(f"{RUNS}{run_id}/cancel/").status_code == 302
    assert admin_client.get(RUNS, {"run": run_id})["Location"] in (RUNS, f"{RUNS}{run_id}/change/")


@pytest.mark.django_db
def test_open_a_run_by_id_from_the_list(admin_client, bgjob_client, worker) -> None:
    bgjob_client.start(bgjob.chain(s("add", 1)), run_id="by-id").result(timeout=20)
    assert admin_client.get(RUNS, {"run": "by-id"})["Location"] == f"{RUNS}by-id/change/"
    assert admin_client.get(RUNS, {"run": "not valid!"})["Location"] == RUNS


@pytest.mark.django_db
@pytest.mark.parametrize("record", [
    b"not json",
    b"[1, 2]",
    b'{"id": "evil", "state": "running"}',
    b'{"id": "evil", "state": "running", "created_at": "yesterday", "def": {"steps": {"a": {"type": 5, "after": 7}}}}',
    b'{"id": "evil", "state": "failed", "created_at": 1e300, "def": {"steps": {}}}',
])  # fmt: skip
def test_a_malformed_stored_run_never_breaks_the_pages(admin_client, bgjob_client, record: bytes) -> None:
    put_record(bgjob_client, "evil.run", record)
    listing = admin_client.get(RUNS)
    assert listing.status_code == 200
    detail = admin_client.get(f"{RUNS}evil/change/")
    assert detail.status_code == 302 and detail["Location"] == RUNS
    assert admin_client.post(f"{RUNS}evil/cancel/").status_code == 302


@pytest.mark.django_db
def test_hostile_html_in_a_stored_run_is_escaped(admin_client, bgjob_client) -> None:
    record = (b'{"id": "evil", "state": "<i>x</i>", "created_at": 1, "failed_step": "<b>s</b>", "error": '
              b'"<img src=x>", "def": {"steps": {"s": {"type": "<u>t</u>", "after": []}}}}')  # fmt: skip
    put_record(bgjob_client, "evil.run", record)
    put_record(bgjob_client, "evil.s.s", b'{"state": "<em>odd</em>", "attempts": "<a>", "error": "<svg onload=x>"}')
    for page in (admin_client.get(RUNS), admin_client.get(f"{RUNS}evil/change/")):
        html = page.content.decode()
        assert page.status_code == 200
        assert 'data-run="evil"' in html or 'id="bgjob-run-id">evil<' in html
        for raw in ("<i>x</i>", "<b>s</b>", "<img src=x>", "<u>t</u>", "<em>odd</em>", "<svg onload=x>", "<a></td>"):
            assert raw not in html
    assert "&lt;img src=x&gt;" in html and "&lt;svg onload=x&gt;" in html and "&lt;u&gt;t&lt;/u&gt;" in html


@pytest.mark.django_db
@pytest.mark.parametrize("record", [b"not json", b"[1, 2]", b'{"id": "evil", "state": "running"}',
                                    b'{"id": "../x", "created_at": 1}'])  # fmt: skip
def test_one_unreadable_run_record_hides_none_of_the_others(admin_client, bgjob_client, worker, record) -> None:
    bgjob_client.start(bgjob.chain(s("add", 1)), run_id="good-one").result(timeout=20)
    put_record(bgjob_client, "evil.run", record)
    html = admin_client.get(RUNS).content.decode()
    assert 'data-run="good-one"' in html and "errornote" not in html
    assert [r.id for r in bgjob.workflows.list_runs(bgjob_client)] == ["good-one"]
