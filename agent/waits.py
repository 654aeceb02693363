"""Bounded waits that a cancellation always ends.

Not ``asyncio.wait_for``: on Python 3.11 it swallows a cancellation that arrives just as what it waits for
completes, so a worker cancelled at shutdown (or at a config reload) in that moment would go on running, feeding
pipelines that are gone, and a shutdown awaiting it would hang. ``asyncio.timeout`` runs the wait in the caller's
own task, where a cancellation of the wait is never lost. ruff bans ``asyncio.wait_for`` in the agent (pyproject.toml).
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait at most ``seconds`` for ``event``; whether it is set."""
    try:
        async with asyncio.timeout(max(seconds, 0.0)):
            await event.wait()
    except TimeoutError:
        return event.is_set()  # set in the very turn the time ran out: it came
    return True
