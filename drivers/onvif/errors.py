"""Precise errors of the ONVIF driver: what failed, on which camera, in which operation.

Every error names the device and the ONVIF operation and carries a hint; none ever holds
a password, a nonce or a URL with credentials. `OnvifError.reason` is the one-line text
the driver gives `device_state` and `report_poll_error` (safe for the status page).
"""

from __future__ import annotations


class OnvifError(Exception):
    """Base class: `device`, `operation`, a plain `detail` and a `hint`."""

    kind = "error"

    def __init__(self, device: str, operation: str, detail: str, hint: str = "") -> None:
        self.device, self.operation, self.detail, self.hint = device, operation, detail, hint
        super().__init__(self.message)

    @property
    def reason(self) -> str:
        """Short text for device state and poll errors: `<operation>: <detail>`."""
        return f"{self.operation}: {self.detail}"

    @property
    def message(self) -> str:
        hint = f" ({self.hint})" if self.hint else ""
        return f"camera {self.device}: {self.operation} failed: {self.detail}{hint}"


class AuthError(OnvifError):
    """Wrong user name or password (HTTP 401, SOAP ter:NotAuthorized), or a clock so far off
    that the camera rejects the WS-UsernameToken."""

    kind = "auth"


class SoapFault(OnvifError):
    """The camera answered with a SOAP Fault other than an authentication failure."""

    kind = "soap_fault"

    def __init__(self, device: str, operation: str, code: str, subcode: str, text: str,
                 hint: str = "") -> None:
        self.code, self.subcode, self.text = code, subcode, text
        sub = f"/{subcode}" if subcode else ""
        super().__init__(device, operation, f"SOAP fault {code}{sub}: {text}", hint)


class Unreachable(OnvifError):
    """No answer at all: connection refused, timed out, DNS, network down."""

    kind = "unreachable"

    def __init__(self, device: str, operation: str, address: str, cause: str,
                 hint: str = "") -> None:
        self.address, self.cause = address, cause
        super().__init__(device, operation, f"{address} unreachable: {cause}", hint)


class BadReply(OnvifError):
    """The camera answered with something that is not a usable SOAP reply (HTML, a DTD or
    entities, an unexpected HTTP status, missing fields)."""

    kind = "bad_reply"


class OddReply(BadReply):
    """A reply that parsed but lacks what the operation needs (the library failed on it)."""


class SubscriptionLost(OnvifError):
    """The PullPoint subscription is gone (camera rebooted, expired, or refused Renew)."""

    kind = "subscription_lost"


class NotSupported(OnvifError):
    """The camera lacks a service the configuration needs (events, media)."""

    kind = "not_supported"
