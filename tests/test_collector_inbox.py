"""collector.inbox: the bounds hold, offers never block, groups respect their caps."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.inbox import Bounds, Inbox


def msg(size: int, tag: str = "t") -> tuple[str, bytes]:
    return (tag, b"x" * size)


def test_full_by_count_refuses_and_keeps_what_it_holds() -> None:
    inbox = Inbox(Bounds(queued_payloads=3))
    assert [inbox.offer(msg(1, str(i))) for i in range(5)] == [True, True, True, False, False]
    assert len(inbox) == 3 and inbox.high_water == 3
    group = asyncio.run(inbox.take())
    assert [t for t, _ in group] == ["0", "1", "2"]
    assert inbox.offer(msg(1)), "room again once taken"


def test_full_by_bytes_but_one_oversized_payload_still_fits_an_empty_inbox() -> None:
    inbox = Inbox(Bounds(queued_bytes=100))
    assert inbox.offer(msg(60)) and not inbox.offer(msg(60))
    asyncio.run(inbox.take())
    assert inbox.offer(msg(1000)), "a payload bigger than the bound is taken when empty"
    assert not inbox.offer(msg(1))


def test_groups_stop_at_their_caps_oldest_first() -> None:
    inbox = Inbox(Bounds(group_payloads=2, group_bytes=150))
    for i, size in enumerate([100, 40, 30, 200, 10]):
        inbox.offer(msg(size, str(i)))

    async def groups() -> list[list[str]]:
        return [[t for t, _ in await inbox.take()] for _ in range(4)]
    assert asyncio.run(groups()) == [["0", "1"], ["2"], ["3"], ["4"]]


def test_take_waits_for_an_offer_and_close_ends_it() -> None:
    async def scenario() -> tuple[list[str], list[str], bool]:
        inbox = Inbox(Bounds())
        waiter = asyncio.create_task(inbox.take())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        inbox.offer(msg(5, "late"))
        first = [t for t, _ in await waiter]
        inbox.offer(msg(5, "left"))
        inbox.close()
        return first, [t for t, _ in await inbox.take()], inbox.offer(msg(1))
    first, after_close, offered = asyncio.run(scenario())
    assert first == ["late"] and after_close == [] and offered is False


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["offer", "take"]), st.integers(0, 300)), max_size=80),
       st.integers(1, 6), st.integers(50, 600), st.integers(1, 4), st.integers(50, 400))
def test_bounds_hold_and_nothing_offered_is_lost_or_reordered(
        ops: list[tuple[str, int]], max_n: int, max_bytes: int, group_n: int,
        group_bytes: int) -> None:
    bounds = Bounds(queued_payloads=max_n, queued_bytes=max_bytes, group_payloads=group_n,
                    group_bytes=group_bytes)
    inbox = Inbox(bounds)
    accepted: list[str] = []
    taken: list[str] = []

    async def run() -> None:
        for i, (op, size) in enumerate(ops):
            if op == "offer":
                if inbox.offer(msg(size, str(i))):
                    accepted.append(str(i))
                held = sum(len(p) for _, p in inbox._waiting)
                assert len(inbox) <= max_n
                assert held <= max_bytes or len(inbox) == 1
            elif len(inbox):
                group = await inbox.take()
                assert 1 <= len(group) <= group_n
                assert len(group) == 1 or sum(len(p) for _, p in group) <= group_bytes
                taken.extend(t for t, _ in group)
        while len(inbox):
            taken.extend(t for t, _ in await inbox.take())
    asyncio.run(run())
    assert taken == accepted


@pytest.mark.parametrize("size", [0, 1])
def test_empty_payloads_count_against_the_payload_bound(size: int) -> None:
    inbox = Inbox(Bounds(queued_payloads=2))
    assert inbox.offer(msg(size)) and inbox.offer(msg(size)) and not inbox.offer(msg(size))
