from django.apps import AppConfig


class TestappConfig(AppConfig):
    name = "tests.django.testapp"
    label = "testapp"
