from django.contrib import admin
from django.urls import path

from .testapp import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("report/", views.send_report, name="send-report"),
    path("report-in-transaction/", views.send_report_in_transaction, name="send-report-in-transaction"),
]
