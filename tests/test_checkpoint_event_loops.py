"""The event loops orbax creates inside mbde_jax's checkpoint calls: a failed save or restore (full disk, damaged
file) ends in one error raised to the caller, not in asyncio's tracebacks for the reads and writes that failed with
it. The end-to-end checks are the full-disk and damaged-checkpoint tests; these pin the loop's two duties."""

from __future__ import annotations

import asyncio
import errno
import gc

from mbde_jax import checkpoint


def _loop_as_orbax_makes_it() -> tuple[asyncio.AbstractEventLoop, list[str]]:
    with checkpoint._orbax_calls():
        loop = asyncio.new_event_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _, context: reported.append(context["message"]))
    return loop, reported


async def _fails_after(seconds: float) -> None:
    await asyncio.sleep(seconds)
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_write_that_failed_unseen_is_not_reported_when_its_loop_is_gone():
    loop, reported = _loop_as_orbax_makes_it()
    failed = loop.create_task(_fails_after(0))
    loop.run_until_complete(asyncio.sleep(0.01))  # it fails while nothing awaits it
    assert failed.done() and asyncio.all_tasks(loop) == set()
    loop.close()
    del failed
    gc.collect()
    assert reported == []


def test_a_write_still_in_flight_ends_before_its_loop_closes():
    loop, reported = _loop_as_orbax_makes_it()
    in_flight = loop.create_task(_fails_after(0.05))
    loop.close()
    assert in_flight.done() and isinstance(in_flight.exception(), OSError)
    del in_flight
    gc.collect()
    assert reported == []


def test_the_loops_outside_checkpoint_calls_are_asyncios_own():
    loop = asyncio.new_event_loop()
    try:
        assert not isinstance(loop, checkpoint._LoopClosedAfterItsTasks)
    finally:
        loop.close()
