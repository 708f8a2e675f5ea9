"""aiomqtt's incoming queue, bounded in bytes: what paho received and the reader has not
taken yet.

aiomqtt hands each message from paho's socket callback to `put_nowait` of its queue; the
reader drains it into the `Inbox`. Under a flood the socket callbacks outrun the reader
(validation in its thread holds the GIL), and an unbounded queue grew with the flood
(1,500 x 300 KB: 359 MiB, bench/collector_flood.py). Here a message that would take the
queue past `limit` bytes is refused (`asyncio.QueueFull`: aiomqtt discards it) and
reported to `on_shed`, like a payload the inbox sheds: paho has PUBACKed it already, the
edge resends it after its ack timeout. One message bigger than `limit` is still taken
into an empty queue.
"""

from __future__ import annotations

from asyncio import Queue, QueueFull
from collections.abc import Callable

import aiomqtt


def size_of(message: aiomqtt.Message) -> int:
    payload = message.payload
    return len(payload) if isinstance(payload, bytes | bytearray | str) else 0


def bounded_queue(limit: int,
                  on_shed: Callable[[aiomqtt.Message], None]) -> type[Queue[aiomqtt.Message]]:
    """A queue class for aiomqtt's `queue_type`, holding at most `limit` payload bytes."""

    class ReceivedQueue(Queue[aiomqtt.Message]):
        def __init__(self, maxsize: int = 0) -> None:
            super().__init__(maxsize)
            self.bytes = 0

        def put_nowait(self, item: aiomqtt.Message) -> None:
            size = size_of(item)
            if self.bytes and self.bytes + size > limit:
                on_shed(item)
                raise QueueFull
            super().put_nowait(item)
            self.bytes += size

        def get_nowait(self) -> aiomqtt.Message:
            item = super().get_nowait()
            self.bytes -= size_of(item)
            return item

    return ReceivedQueue
