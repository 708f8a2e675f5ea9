"""How a camera process the agent starts (the template, a worker) sets itself up.

Its end of the agent's socket comes as a file descriptor number in argv, its log level in
`WORKER_LOG_LEVEL`. It ignores SIGTERM and SIGINT: systemd's stop signals the whole cgroup
and Ctrl-C the whole process group, and the child leaves stopping to the agent (its end
closing), or it would die first and be reported as a crash during every stop.
"""

from __future__ import annotations

import os
import signal
import socket

from edge_agent.contract.logs import configure

from .worker_proto import WORKER_LOG_LEVEL

__all__ = ["start_child"]


def start_child(fd: str) -> socket.socket:
    """Ignore the stop signals, log at the agent's level; the socket on descriptor `fd`."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure(os.environ.get(WORKER_LOG_LEVEL, "info"))
    return socket.socket(fileno=int(fd))
