from django.db import transaction
from django.http import HttpRequest, JsonResponse

from bgjob_django import send_job

from .models import Report


def send_report(request: HttpRequest) -> JsonResponse:
    job_id = send_job("report", {"user": int(request.GET.get("user", 1))})
    return JsonResponse({"job_id": job_id})


def send_report_in_transaction(request: HttpRequest) -> JsonResponse:
    """Saves a Report and sends a job on commit; `?fail=1` raises inside the transaction (rollback)."""
    user = int(request.GET.get("user", 1))
    try:
        with transaction.atomic():
            Report.objects.create(user=user, request_id="view")
            job_id = send_job("report", {"user": user}, on_commit=True)
            if request.GET.get("fail"):
                raise RuntimeError("rolled back")
    except RuntimeError:
        return JsonResponse({"job_id": None}, status=500)
    return JsonResponse({"job_id": job_id})
