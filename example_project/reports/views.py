from django.contrib import messages
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from bgjob_django import send_job

from .models import Report


def index(request: HttpRequest) -> HttpResponse:
    return render(request, "reports/index.html", {"reports": Report.objects.order_by("-id")[:10]})


@require_POST
def send(request: HttpRequest, what: str) -> HttpResponse:
    if what == "report":
        with transaction.atomic():
            report = Report.objects.create(title="Sales report", request_id=request.request_id)
            # Published when this transaction commits (BGJOB["ON_COMMIT"]), so the worker finds the row.
            job_id = send_job("report", {"report_id": report.pk})
        messages.success(request, f"Report {report.pk} queued as job {job_id} (request {request.request_id}).")
    elif what == "cleanup":
        # A fixed job id: pressing the button twice within the dedup window starts one chain, not two.
        send_job("hourly-cleanup", None, job_id="hourly-cleanup")
        messages.success(request, "Hourly cleanup started: it runs now, then at the top of every hour.")
    elif what == "failing":
        job_id = send_job("flaky-export", {"target": "s3://exports"})
        messages.warning(request, f"Job {job_id} will fail three times and land in the dead-letter queue.")
    return redirect("index")
