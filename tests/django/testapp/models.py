from django.db import models


class Report(models.Model):
    user = models.IntegerField()
    request_id = models.CharField(max_length=200, blank=True)
    job_id = models.CharField(max_length=200, blank=True)


class Marker(models.Model):
    name = models.CharField(max_length=100)
