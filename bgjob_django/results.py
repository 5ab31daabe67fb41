"""django.tasks results in the JetStream KV bucket `<PREFIX>_TASKS` (key: the result id, value: JSON).

bgjob's own stored results (`send_job(..., store_result=True)`, bucket `<PREFIX>_RESULTS`) keep neither
the call's arguments nor one worker id per attempt nor exception classes, all of which a Django
TaskResult has; this is the one place that reads and writes the tasks' records.

Records are bounded as bgjob's own are (`bgjob.job_results.encode_record`): at most the last 10 errors, long
tracebacks cut, and a return value that does not fit in one message of the server refused with
`bgjob.job_results.ResultTooLarge` ("return value too large (N bytes; the limit is M)").
"""

from __future__ import annotations

import asyncio
import json
import weakref
from typing import TYPE_CHECKING, Any

import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

import bgjob
from bgjob import job as jobmod
from bgjob.job_results import encode_record

if TYPE_CHECKING:
    from bgjob.core import Core


_buckets: weakref.WeakKeyDictionary[Core, KeyValue] = weakref.WeakKeyDictionary()
_bucket_locks: weakref.WeakKeyDictionary[Core, asyncio.Lock] = weakref.WeakKeyDictionary()


class ResultStore:
    """Blocking get/put of result records (JSON objects) through a bgjob Client."""

    def __init__(self, client: bgjob.Client, ttl: float) -> None:
        self.client = client
        self.ttl = ttl

    def get(self, result_id: str) -> dict[str, Any] | None:
        """The record of `result_id`, or None if there is none (never stored, expired, or a bad id)."""
        if not _valid_key(result_id):
            return None
        return self.client.run(self._get, result_id)

    def put(self, result_id: str, record: dict[str, Any]) -> None:
        """Store `record` (a JSON object with `errors` and `return_value`) under `result_id`.

        The record is bounded first (in place; see the module's docstring). Raises
        bgjob.job_results.ResultTooLarge, before anything is written, when it cannot fit in one message of
        the server (`what` says whether the return value is what does not fit), and bgjob.ConnectionError
        when NATS stays unreachable for Settings.retry_for.
        """
        self.client.run(self._put, result_id, record)

    def add(self, result_id: str, record: dict[str, Any]) -> bool:
        """Store `record` under `result_id` unless a record is there already (a worker's, which is newer); True
        if it was stored. Raises as `put` does."""
        return bool(self.client.run(self._add, result_id, record))

    def delete(self, result_id: str) -> None:
        self.client.run(self._delete, result_id)

    async def _bucket(self, core: Core) -> KeyValue:
        kv = _buckets.get(core)
        if kv is not None:
            return kv
        lock = _bucket_locks.setdefault(core, asyncio.Lock())
        async with lock:
            kv = _buckets.get(core)
            if kv is None:
                name = core.topology.stream_prefix + "TASKS"
                try:
                    kv = await core.js.key_value(name)
                except nats.js.errors.BucketNotFoundError:
                    kv = await core.js.create_key_value(KeyValueConfig(
                        bucket=name, description="bgjob_django: django.tasks results", ttl=self.ttl, history=1,
                        storage=StorageType.FILE, replicas=core.settings.replicas,
                    ))  # fmt: skip
                _buckets[core] = kv
        return kv

    async def _get(self, core: Core, result_id: str) -> dict[str, Any] | None:
        kv = await self._bucket(core)

        async def read() -> bytes | None:
            try:
                return (await kv.get(result_id)).value
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                return None

        value = await core.retry(read)
        return json.loads(value) if value else None

    async def _put(self, core: Core, result_id: str, record: dict[str, Any]) -> None:
        value = encode_record(record, core.max_payload, value_key="return_value")
        kv = await core.retry(self._bucket, core)
        await core.retry(kv.put, result_id, value)

    async def _add(self, core: Core, result_id: str, record: dict[str, Any]) -> bool:
        value = encode_record(record, core.max_payload, value_key="return_value")
        kv = await core.retry(self._bucket, core)
        try:
            await core.retry(kv.create, result_id, value)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        return True

    async def _delete(self, core: Core, result_id: str) -> None:
        kv = await self._bucket(core)

        async def delete() -> None:
            try:
                await kv.delete(result_id)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                pass

        await core.retry(delete)


def _valid_key(key: object) -> bool:
    return isinstance(key, str) and jobmod.is_valid_job_id(key) and ":" not in key and "+" not in key
