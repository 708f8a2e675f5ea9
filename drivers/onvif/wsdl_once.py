"""Load each ONVIF WSDL once per process, however many cameras connect at the same time.

onvif-zeep-async caches a parsed WSDL (`onvif.client._cached_document`) only once its
load finished: N cameras connecting together each parse the same WSDLs (lxml trees and
zeep types, ~10 MiB per camera), and the copies that lose the race are freed into a heap
that keeps them in RSS. Measured in a camera worker: 8 cameras starting together grew
by 82 MiB, one by 11 MiB (docs/benchmarks.md). `share_wsdl_loads` wraps that function
so concurrent loads of one URL wait for the first; idempotent; the wrapped function is
looked up at each call by the library, so replacing the module attribute suffices.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["share_wsdl_loads"]

_ATTR = "_cached_document"


def share_wsdl_loads() -> bool:
    """Install the wrapper; False when this onvif-zeep-async has no such function (a
    newer release may do it itself): the library then works as it is."""
    import onvif.client as lib

    original: Callable[[str], Awaitable[Any]] | None = getattr(lib, _ATTR, None)
    if original is None:
        return False
    if getattr(original, "_shared", False):
        return True
    # per event loop (an asyncio.Lock belongs to one), dropped with the loop
    locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
        weakref.WeakKeyDictionary())

    async def once(url: str) -> Any:
        per_loop = locks.setdefault(asyncio.get_running_loop(), {})
        lock = per_loop.setdefault(url, asyncio.Lock())
        async with lock:  # the first loads; the others find it in the library's cache
            return await original(url)

    once._shared = True  # type: ignore[attr-defined]
    setattr(lib, _ATTR, once)
    return True
