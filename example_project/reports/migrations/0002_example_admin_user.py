"""The example's admin login, admin / admin: only with DEBUG on, never in a real project."""

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.db import migrations


def create_admin(apps, schema_editor):
    if not settings.DEBUG:
        return
    User = apps.get_model("auth", "User")
    if not User.objects.filter(username="admin").exists():
        User.objects.create(username="admin", password=make_password("admin"), is_staff=True, is_superuser=True)


class Migration(migrations.Migration):
    dependencies = [("reports", "0001_initial"), ("auth", "0012_alter_user_first_name_max_length")]
    operations = [migrations.RunPython(create_admin, migrations.RunPython.noop)]
