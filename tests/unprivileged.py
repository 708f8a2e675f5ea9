"""Checks that need an unprivileged process, also when the tests run as root (as CI does).

Root reads every file and opens every port, so "this user cannot read X" cannot be seen
as root. `as_unprivileged(check)` runs `check` in a forked child that first gives up the
two capabilities that let root ignore file modes (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH),
then hands back its result or its exception; as a normal user it simply calls `check`.

Why not switch to the user `nobody`: the child would then need read access to the
interpreter, the virtualenv and the checkout for every module it imports lazily (a codec,
an entry point), and CI keeps those wherever it likes, e.g. under /root (0700). Without
those capabilities the kernel checks file modes for root as for any other owner: a file of
mode 0 cannot be opened, while the code and pytest's private `tmp_path` stay readable.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import traceback
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


class UnprivilegedCheckFailed(AssertionError):
    """The check raised in the child; the message carries the child's traceback."""


def drop_file_capabilities() -> None:
    """Give up CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (effective and permitted: for good)."""
    libc = ctypes.CDLL(None, use_errno=True)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    mask = ~((1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH)) & 0xFFFFFFFF
    data[0].effective &= mask
    data[0].permitted &= mask
    data[0].inheritable &= mask
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def as_unprivileged(check: Callable[[], T]) -> T:
    """`check()` without root's power over file modes when this process is root."""
    if os.geteuid() != 0:
        return check()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read_end)
        try:
            try:
                drop_file_capabilities()
                outcome: tuple[str, object] = ("ok", pickle.dumps(check()))
            except BaseException:  # handed to the parent
                outcome = ("raised", "as root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH: "
                           + traceback.format_exc())
            with os.fdopen(write_end, "wb") as out:
                pickle.dump(outcome, out)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as inp:
        data = inp.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise UnprivilegedCheckFailed(f"the unprivileged check died (wait status {status})")
    kind, payload = pickle.loads(data)  # our own child's pipe
    if kind != "ok":
        raise UnprivilegedCheckFailed(str(payload))
    assert isinstance(payload, bytes)
    result: T = pickle.loads(payload)  # our own child's pipe
    return result
