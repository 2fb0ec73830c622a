"""The fair concurrency cap: slots go round-robin to the groups waiting."""

from __future__ import annotations

import asyncio

import pytest

from eventrouter.runtime.limiter import FairLimiter


async def test_a_noisy_group_does_not_starve_a_quiet_one() -> None:
    limiter = FairLimiter(1)
    order: list[str] = []
    gate = asyncio.Event()

    async def run(group: str) -> None:
        async with limiter.slot(group):
            order.append(group)
            await gate.wait()

    first = asyncio.create_task(run("noisy"))
    await asyncio.sleep(0)
    noisy = [asyncio.create_task(run("noisy")) for _ in range(5)]
    await asyncio.sleep(0)
    quiet = asyncio.create_task(run("quiet"))
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, *noisy, quiet)
    # With a FIFO semaphore the quiet run would come last, after the whole backlog.
    assert order[:3] == ["noisy", "noisy", "quiet"]
    assert len(order) == 7


async def test_never_more_holders_than_capacity() -> None:
    limiter = FairLimiter(3)
    holding = peak = 0

    async def run(group: str) -> None:
        nonlocal holding, peak
        async with limiter.slot(group):
            holding += 1
            peak = max(peak, holding)
            await asyncio.sleep(0.001)
            holding -= 1

    await asyncio.gather(*(run(f"g{n % 4}") for n in range(40)))
    assert peak == 3
    assert limiter.waiting == 0


async def test_a_cancelled_waiter_gives_its_turn_away() -> None:
    limiter = FairLimiter(1)
    await limiter.acquire("a")
    waiter = asyncio.create_task(limiter.acquire("b"))
    other = asyncio.create_task(limiter.acquire("c"))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    limiter.release()
    await asyncio.wait_for(other, 1)  # the slot went to c, not lost with b
    assert limiter.waiting == 0


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        FairLimiter(0)
