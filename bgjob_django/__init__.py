"""bgjob for Django: settings, jobs.py handlers, send_job with on_commit, manage.py commands, admin pages,
request ids, and a django.tasks backend.

```python
from bgjob_django import handler, send_job

@handler("report")                       # in an app's jobs.py
def report(job): ...

send_job("report", {"user": 7}, on_commit=True)   # in a view
```
"""

from __future__ import annotations

from .conf import get_client
from .producer import send_job, send_jobs
from .registry import handler, periodic, registry
from .request_id import get_request_id

__all__ = ["get_client", "get_request_id", "handler", "periodic", "registry", "send_job", "send_jobs"]
