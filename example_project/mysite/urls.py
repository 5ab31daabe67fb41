from django.contrib import admin
from django.urls import path
from reports import views

urlpatterns = [
    path("", views.index, name="index"),
    path("send/<str:what>/", views.send, name="send"),
    path("admin/", admin.site.urls),
]
