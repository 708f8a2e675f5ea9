"""WS-Discovery messages (SOAP 1.2 over UDP): build a Probe, answer one, read ProbeMatches.

Pure functions shared by `discovery` (the agent side) and the simulator's responder.
Everything received is parsed with `xmlsafe.parse_untrusted` (no DTD, no entities,
at most 64 KiB) and read defensively: a match without an http(s) XAddr is skipped.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import escape

from lxml import etree

from .xmlsafe import HostileXml, parse_untrusted

__all__ = ["MAX_DATAGRAM", "ProbeMatch", "build_probe", "build_probe_matches", "parse_probe",
           "parse_probe_matches"]

MAX_DATAGRAM = 65536
_ENV = ('xmlns:e="http://www.w3.org/2003/05/soap-envelope" '
        'xmlns:w="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
        'xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery" '
        'xmlns:dn="http://www.onvif.org/ver10/network/wsdl"')
_ACTION = "http://schemas.xmlsoap.org/ws/2005/04/discovery/"


@dataclass(frozen=True)
class ProbeMatch:
    endpoint: str
    xaddr: str
    host: str
    port: int
    scopes: tuple[str, ...]

    def scope(self, kind: str) -> str:
        """`name`, `hardware`, `location/...`: the value of onvif://www.onvif.org/<kind>/X."""
        prefix = f"onvif://www.onvif.org/{kind}/"
        for s in self.scopes:
            if s.lower().startswith(prefix):
                return unquote(s[len(prefix):])
        return ""


def build_probe(message_id: str | None = None) -> tuple[str, bytes]:
    mid = message_id or f"uuid:{uuid.uuid4()}"
    body = (f'<?xml version="1.0" encoding="UTF-8"?><e:Envelope {_ENV}><e:Header>'
            f"<w:MessageID>{mid}</w:MessageID>"
            "<w:To>urn:schemas-xmlsoap-org:ws:2005:04:discovery</w:To>"
            f"<w:Action>{_ACTION}Probe</w:Action></e:Header><e:Body><d:Probe>"
            "<d:Types>dn:NetworkVideoTransmitter</d:Types></d:Probe></e:Body></e:Envelope>")
    return mid, body.encode()


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname if isinstance(el.tag, str) else ""


def _first(root: etree._Element, local: str) -> etree._Element | None:
    return next((el for el in root.iter() if _local(el) == local), None)


def parse_probe(data: bytes) -> str | None:
    """The MessageID of a Probe, or None for anything else (or hostile XML)."""
    try:
        root = parse_untrusted(data, max_bytes=MAX_DATAGRAM)
    except HostileXml:
        return None
    if _first(root, "Probe") is None:
        return None
    mid = _first(root, "MessageID")
    return (mid.text or "").strip() if mid is not None else None


def build_probe_matches(relates_to: str, endpoint: str, xaddr: str,
                        scopes: list[str]) -> bytes:
    body = (f'<?xml version="1.0" encoding="UTF-8"?><e:Envelope {_ENV}><e:Header>'
            f"<w:MessageID>uuid:{uuid.uuid4()}</w:MessageID>"
            f"<w:RelatesTo>{escape(relates_to)}</w:RelatesTo>"
            "<w:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</w:To>"
            f"<w:Action>{_ACTION}ProbeMatches</w:Action></e:Header><e:Body><d:ProbeMatches>"
            f"<d:ProbeMatch><w:EndpointReference><w:Address>{escape(endpoint)}</w:Address>"
            "</w:EndpointReference><d:Types>dn:NetworkVideoTransmitter</d:Types>"
            f"<d:Scopes>{escape(' '.join(scopes))}</d:Scopes><d:XAddrs>{escape(xaddr)}"
            "</d:XAddrs><d:MetadataVersion>1</d:MetadataVersion></d:ProbeMatch>"
            "</d:ProbeMatches></e:Body></e:Envelope>")
    return body.encode()


def parse_probe_matches(data: bytes, message_id: str) -> list[ProbeMatch]:
    """The matches of a reply to our probe `message_id`; [] for anything else.
    Raises HostileXml for a reply with a DTD or entities (the caller logs it)."""
    root = parse_untrusted(data, max_bytes=MAX_DATAGRAM)
    relates = _first(root, "RelatesTo")
    if relates is None or (relates.text or "").strip() != message_id:
        return []
    out: list[ProbeMatch] = []
    for match in (el for el in root.iter() if _local(el) == "ProbeMatch"):
        xaddrs = _first(match, "XAddrs")
        urls = ((xaddrs.text or "").split() if xaddrs is not None else [])
        url = next((u for u in urls if u.lower().startswith(("http://", "https://"))), None)
        if url is None:
            continue
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            continue
        if not host or parts.username or parts.password:
            continue
        address = _first(match, "Address")
        scopes = _first(match, "Scopes")
        out.append(ProbeMatch(
            endpoint=((address.text or "").strip() if address is not None else "")[:200],
            xaddr=url[:300], host=host, port=port,
            scopes=tuple((scopes.text or "").split()[:32]) if scopes is not None else ()))
    return out
