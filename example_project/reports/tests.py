"""The example's tests (`python manage.py test reports`): no nats-server needed.

- `captured_jobs()` asserts which jobs a view sent, like `django.core.mail.outbox` for mail.
- `BGJOB["IMMEDIATE"]` runs the handlers inline, to test what a job does end to end.
(With a real server, the pytest plugin's `run_jobs` fixture runs them through a real worker: see docs/testing.md.)
"""

from django.conf import settings
from django.test import TestCase, override_settings

from bgjob.testing import immediate_log
from bgjob_django import get_client
from bgjob_django.testing import captured_jobs

from .models import Report


class SendReportTests(TestCase):
    def test_the_button_sends_a_report_job_at_commit(self):
        # TestCase never commits: captureOnCommitCallbacks(execute=True) runs the on_commit callbacks, and the job
        # (sent with BGJOB["ON_COMMIT"]) is recorded then.
        with captured_jobs() as jobs, self.captureOnCommitCallbacks(execute=True):
            response = self.client.post("/send/report/")
        self.assertEqual(response.status_code, 302)
        report = Report.objects.get()
        [job] = jobs
        self.assertEqual((job.type, job.arg, job.on_commit), ("report", {"report_id": report.pk}, True))

    def test_the_failing_button_sends_one_export_job(self):
        with captured_jobs() as jobs, self.captureOnCommitCallbacks(execute=False):
            self.client.post("/send/failing/")
        # The callbacks never ran (as when a transaction rolls back): the job was never sent.
        self.assertEqual((jobs, [job.type for job in jobs.pending]), ([], ["flaky-export"]))


@override_settings(BGJOB={**settings.BGJOB, "IMMEDIATE": True})
class ReportJobTests(TestCase):
    def test_the_report_job_builds_the_report(self):
        with self.captureOnCommitCallbacks(execute=True):
            self.client.post("/send/report/")
        self.assertEqual(Report.objects.get().status, "done")

    def test_the_export_job_ends_in_the_dead_letter_queue(self):
        with self.captureOnCommitCallbacks(execute=True):
            self.client.post("/send/failing/")  # run at commit: 3 attempts (BGJOB["MAX_ATTEMPTS"]), then the DLQ
        [dead] = immediate_log(get_client()).dead_letters
        self.assertEqual((dead.type, dead.attempt, dead.fate.reason), ("flaky-export", 3, "max_attempts"))
