from django.db import models


class Report(models.Model):
    """A report a background job builds."""

    title = models.CharField(max_length=200)
    status = models.CharField(max_length=20, default="queued")
    request_id = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.title} ({self.status})"
