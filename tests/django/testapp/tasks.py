"""django.tasks tasks (Django >= 6.0) for the BgjobBackend tests."""

import django

if django.VERSION >= (6, 0):
    from django.tasks import task

    @task
    def add(a: int, b: int) -> int:
        return a + b

    @task(takes_context=True)
    def attempt_number(context, label: str) -> dict:
        return {"label": label, "attempt": context.attempt, "result_id": context.task_result.id}

    @task
    def always_fails(message: str) -> None:
        raise ValueError(message)

    @task(takes_context=True)
    def fails_first_time(context) -> int:
        if context.attempt < 2:
            raise RuntimeError("first attempt fails")
        return context.attempt

    @task(priority=50)
    def urgent() -> str:
        return "urgent"

    @task
    async def async_add(a: int, b: int) -> int:
        return a + b
