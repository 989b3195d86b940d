"""Every async test runs on one event loop: grpc.aio objects outlive a test (channels closing, late
stream events) and fail a later test when the loop they were bound to is closed."""

from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.anyio

_LOOPS: list[asyncio.AbstractEventLoop] = []


async def test_a_first_async_test_records_its_loop() -> None:
    _LOOPS.append(asyncio.get_running_loop())


def test_a_sync_test_in_between() -> None:
    assert _LOOPS


async def test_a_second_async_test_runs_on_the_same_loop() -> None:
    if not _LOOPS:
        pytest.skip("run together with the first test of this module")
    assert asyncio.get_running_loop() is _LOOPS[0]
