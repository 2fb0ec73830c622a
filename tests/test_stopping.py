"""Stopping background tasks when a library swallows the cancellation (the daemon's shutdown).

redis-py 8.1 was seen to swallow a CancelledError that arrived while a command ran on a
connection it was opening again; a single ``cancel()`` then never ended the task, and a
shutdown that awaited it hung (seen as tests/test_ready.py hanging now and then).
"""

from __future__ import annotations

import asyncio

import pytest

from eventrouter.support.stopping import cancel_until_done


async def _swallows_one_cancellation(seen: list[str]) -> None:
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        seen.append("swallowed")  # as the library does: the task goes on
    await asyncio.sleep(10)


async def test_a_task_that_swallows_a_cancellation_is_still_stopped() -> None:
    seen: list[str] = []
    task = asyncio.create_task(_swallows_one_cancellation(seen))
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_until_done(task, "the stubborn task", every=0.01), 5)
    assert task.cancelled()
    assert seen == ["swallowed"]


async def test_a_task_that_does_not_end_is_left_with_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stubborn = True

    async def swallows_every_cancellation() -> None:
        while stubborn:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(swallows_every_cancellation())
    await asyncio.sleep(0)
    await cancel_until_done(task, "the stubborn task", every=0.01, within=0.05)
    assert not task.done()
    assert "the stubborn task did not stop within 0.05s of being cancelled" in caplog.text
    stubborn = False  # let it end, so that the test's loop can close
    task.cancel()
    await asyncio.wait([task], timeout=5)
    assert task.done()
