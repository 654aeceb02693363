"""agent.waits: a bounded wait that a cancellation always ends (asyncio.wait_for on 3.11 may swallow one)."""

from __future__ import annotations

import asyncio

import pytest

from agent.waits import wait_event


async def test_a_wait_says_whether_the_event_came_or_the_time_ran_out() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0) is True  # already set: no wait at all
    assert await wait_event(event, -1) is True  # a deadline already past, as a shutdown may compute


async def test_a_cancellation_arriving_as_the_event_fires_is_not_lost() -> None:
    """The moment a worker is cancelled at shutdown may be the moment a batch wakes it: it must still stop."""
    event = asyncio.Event()

    async def worker() -> str:
        await wait_event(event, 10)
        await asyncio.sleep(0)  # the worker's next step: where a cancellation that was not lost takes effect
        return "went on running"

    task = asyncio.create_task(worker())
    await asyncio.sleep(0)  # the worker waits
    event.set()
    await asyncio.sleep(0)  # what the wait awaited completes, in the same turn as the cancellation below
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_event_set_in_the_turn_the_time_runs_out_counts_as_come() -> None:
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, event.set)  # the same deadline as the wait's own timeout below, scheduled first
    assert await wait_event(event, 0.01) is True
