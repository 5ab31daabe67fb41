"""Deleting a stored message another worker or admin deleted first: the server answers 10057 "no message found"
(a 500, not a 404), which the DLQ paths took for an error (a second no_target sweeper aborted its sweep)."""

from __future__ import annotations

import bgjob


def test_delete_stored_says_whether_this_call_deleted_it(client: bgjob.Client) -> None:
    client.send_job("t", {"n": 1})

    async def twice(core) -> tuple[bool, bool, bool]:
        stream = core.topology.queue_stream("default")
        seq = (await core.js.stream_info(stream)).state.last_seq
        return (await core.delete_stored(stream, seq), await core.delete_stored(stream, seq),
                await core.delete_stored(stream, seq + 1000))  # fmt: skip

    assert client.run(twice) == (True, False, False)
    assert client.queue_stats().pending == 0
