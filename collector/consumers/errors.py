"""The one error the consumers package raises for anything an operator or a caller got wrong."""

from __future__ import annotations


class ConsumerError(ValueError):
    """A mistake (bad name, scope, expiry, unknown consumer) or an unusable store.

    The message names what was wrong and, after `hint:`, what to do; the CLI prints it as
    is, never a traceback.
    """


class StoreUnavailable(ConsumerError):
    """The store could not be read or written just now (server down, file locked): a
    request should be answered 503 (try again), not 401."""
