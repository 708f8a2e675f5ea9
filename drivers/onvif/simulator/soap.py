"""SOAP 1.2 for the simulator: parse a request safely, build replies and faults."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from drivers.onvif.xmlsafe import parse_untrusted

__all__ = ["NS", "Fault", "Request", "envelope", "fault_envelope", "iso", "parse_request",
           "text", "xml_attr", "xml_text"]

NS = {
    "env": "http://www.w3.org/2003/05/soap-envelope",
    "wsse": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd",
    "wsu": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd",
    "wsa": "http://www.w3.org/2005/08/addressing",
    "tds": "http://www.onvif.org/ver10/device/wsdl",
    "trt": "http://www.onvif.org/ver10/media/wsdl",
    "tev": "http://www.onvif.org/ver10/events/wsdl",
    "wsnt": "http://docs.oasis-open.org/wsn/b-2",
    "wstop": "http://docs.oasis-open.org/wsn/t-1",
    "tt": "http://www.onvif.org/ver10/schema",
    "tns1": "http://www.onvif.org/ver10/topics",
    "ter": "http://www.onvif.org/ver10/error",
    "wsrf-rw": "http://docs.oasis-open.org/wsrf/rw-2",
    "d": "http://schemas.xmlsoap.org/ws/2005/04/discovery",
    "dn": "http://www.onvif.org/ver10/network/wsdl",
}
_XMLNS = " ".join(f'xmlns:{k}="{v}"' for k, v in NS.items())


def xml_text(value: object) -> str:
    return escape(str(value))


def xml_attr(value: object) -> str:
    return quoteattr(str(value))


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Fault(Exception):
    """Answered as a SOAP 1.2 Fault: env:Sender (HTTP 400) or env:Receiver (HTTP 500)."""

    def __init__(self, code: str, subcode: str, reason: str) -> None:
        self.code, self.subcode, self.reason = code, subcode, reason
        super().__init__(f"{code}/{subcode}: {reason}")

    @property
    def status(self) -> int:
        return 400 if self.code == "Sender" else 500


@dataclass(frozen=True)
class Request:
    operation: str
    body: etree._Element
    header: etree._Element | None


def parse_request(data: bytes) -> Request:
    """The operation and its element; HostileXml or Fault for anything else."""
    root = parse_untrusted(data, max_bytes=256 * 1024)
    if etree.QName(root).localname != "Envelope":
        raise Fault("Sender", "ter:WellFormed", "the root element is not a SOAP Envelope")
    header = body = None
    for child in root:
        name = etree.QName(child).localname
        if name == "Header":
            header = child
        elif name == "Body":
            body = child
    if body is None or len(body) == 0:
        raise Fault("Sender", "ter:WellFormed", "the SOAP Body is missing or empty")
    operation = body[0]
    return Request(etree.QName(operation).localname, operation, header)


def text(el: etree._Element | None, local: str, default: str = "") -> str:
    """Text of the first descendant named `local` (any namespace)."""
    if el is None:
        return default
    for found in el.iter():
        if isinstance(found.tag, str) and etree.QName(found).localname == local:
            return (found.text or "").strip()
    return default


def envelope(body: str, header: str = "") -> bytes:
    head = f"<env:Header>{header}</env:Header>" if header else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<env:Envelope {_XMLNS}>{head}'
            f"<env:Body>{body}</env:Body></env:Envelope>").encode()


def fault_envelope(fault: Fault) -> bytes:
    sub = (f"<env:Subcode><env:Value>{xml_text(fault.subcode)}</env:Value></env:Subcode>"
           if fault.subcode else "")
    return envelope(
        f"<env:Fault><env:Code><env:Value>env:{fault.code}</env:Value>{sub}</env:Code>"
        f'<env:Reason><env:Text xml:lang="en">{xml_text(fault.reason)}</env:Text></env:Reason>'
        "</env:Fault>")
