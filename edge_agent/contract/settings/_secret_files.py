"""Checking and reading one secret (or TLS) file, bounded.

A secret file is a small regular file readable by the agent's user and by nobody else.
`inspect_file()` says what is wrong with one without keeping its contents (for
`edge-agent validate` and the start-up check); `read_secret_file()` is the only way the
agent reads one (`SecretRef.reveal()`): the same checks on the opened file, and never
more than the size cap, so a directory, `/dev/zero` or a FIFO given as a secret is a
clear error instead of a MemoryError or a hang. Nothing here ever returns or logs a
file's contents in a message.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["MAX_SECRET_BYTES", "MAX_TLS_FILE_BYTES", "FileCheck", "SecretFileError",
           "inspect_file", "read_secret_file"]

#: A password, a salt, a private key: a few hundred bytes; this leaves room for any.
MAX_SECRET_BYTES = 64 * 1024
#: A CA bundle or certificate chain (the system bundle is ~220 KB).
MAX_TLS_FILE_BYTES = 1024 * 1024

_GROUP_OR_WORLD = stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH


class SecretFileError(Exception):
    """A secret file that cannot be used: `message` names the file, `hint` the fix."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(f"{message} ({hint})")
        self.message, self.hint = message, hint


@dataclass
class FileCheck:
    """What `inspect_file` found: one error (the file cannot be used) or none, and
    warnings (it can, but should not be like this)."""

    error: SecretFileError | None = None
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (message, hint)


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _not_regular(path: Path, mode: int) -> SecretFileError:
    hint = ("give the file inside it" if stat.S_ISDIR(mode)
            else "a secret is read from a plain file holding it")
    return SecretFileError(f"{path} is {_kind_of(mode)}, not a regular file", hint)


def _too_big(path: Path, size: int, cap: int) -> SecretFileError:
    return SecretFileError(f"{path} is {size:,} bytes; more than the {cap // 1024} KiB a "
                           "secret file may hold", "is this the right file?")


def _os_error(path: Path, exc: OSError, private: bool = True) -> SecretFileError:
    if isinstance(exc, FileNotFoundError):
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        what = ("a secret: one line, chmod 600, owned by the service's user" if private
                else "a PEM file the service's user can read")
        return SecretFileError(f"{path} does not exist{where}",
                               f"create it or correct the path ({what})")
    if isinstance(exc, PermissionError):
        return SecretFileError(f"{path} cannot be read by this user (uid {os.getuid()})",
                               "chown it to the service's user and chmod 600; check it as that "
                               "user: sudo -u edge-agent edge-agent validate ...")
    return SecretFileError(f"cannot read {path}: {exc.strerror or type(exc).__name__}",
                           "check the path and the disk")


def inspect_file(path: Path, *, cap: int = MAX_SECRET_BYTES, private: bool = True
                 ) -> FileCheck:
    """Check `path` without keeping what it holds: exists, a regular file, at most `cap`
    bytes, readable by this user; `private`: warn if group or others may read it."""
    check = FileCheck()
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            check.error = _not_regular(path, info.st_mode)
            return check
        if info.st_size > cap:
            check.error = _too_big(path, info.st_size, cap)
            return check
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        os.close(fd)
    except OSError as exc:
        check.error = _os_error(path, exc, private)
        return check
    if private and info.st_mode & _GROUP_OR_WORLD:
        who = "group and others" if info.st_mode & (stat.S_IROTH | stat.S_IWOTH) and \
            info.st_mode & (stat.S_IRGRP | stat.S_IWGRP) else \
            "others" if info.st_mode & (stat.S_IROTH | stat.S_IWOTH) else "its group"
        check.warnings.append((f"{path} may be read by {who} (mode "
                               f"{stat.S_IMODE(info.st_mode):04o})",
                               f"chmod 600 {path}; only the service's user needs it"))
    if info.st_size == 0:
        check.warnings.append((f"{path} is empty", "write the secret into it"))
    return check


def read_secret_file(path: Path, *, cap: int = MAX_SECRET_BYTES) -> str:
    """The text of a secret file, surrounding whitespace stripped; SecretFileError when
    it is not a regular file, larger than `cap`, unreadable or not UTF-8."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise _os_error(path, exc) from None
    try:
        info = os.fstat(fd)  # of what was opened: no race with a swapped path
        if not stat.S_ISREG(info.st_mode):
            raise _not_regular(path, info.st_mode)
        if info.st_size > cap:
            raise _too_big(path, info.st_size, cap)
        chunks: list[bytes] = []
        total = 0
        while total <= cap:
            chunk = os.read(fd, cap + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > cap:
            raise _too_big(path, total, cap)
    except OSError as exc:
        raise _os_error(path, exc) from None
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SecretFileError(f"{path} is not UTF-8 text",
                              "a secret file holds the secret as text, on one line") from None
