"""Untrusted XML, parsed defensively: no DTD, no entities, no network, bounded size.

Used for everything that arrives from the network outside zeep: SOAP requests in the
simulator and WS-Discovery ProbeMatches. `harden_zeep()` sets the same policy on the
settings onvif-zeep-async gives zeep for camera replies.
"""

from __future__ import annotations

import re
from typing import Any

from lxml import etree

__all__ = ["MAX_XML_BYTES", "HostileXml", "harden_zeep", "parse_untrusted"]

#: A SOAP reply or request larger than this is refused unparsed.
MAX_XML_BYTES = 1024 * 1024
_DECLARATION = re.compile(rb"<!\s*(DOCTYPE|ENTITY|ELEMENT|ATTLIST)", re.IGNORECASE)


class HostileXml(ValueError):
    """XML refused: too large, a DTD or entity declaration, or not well-formed."""


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_comments=True,
                           remove_pis=True, collect_ids=False)


def parse_untrusted(data: bytes, *, max_bytes: int = MAX_XML_BYTES) -> etree._Element:
    """Parse `data` or raise HostileXml with a plain reason (never the content)."""
    if len(data) > max_bytes:
        raise HostileXml(f"XML of {len(data)} bytes; at most {max_bytes}")
    found = _DECLARATION.search(data[:65536])
    if found:
        raise HostileXml(f"XML with a <!{found.group(1).decode().upper()}> declaration "
                         "(DTDs and entities are refused)")
    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise HostileXml(f"not well-formed XML: {exc.msg}") from None
    if root.getroottree().docinfo.doctype:
        raise HostileXml("XML with a DOCTYPE (DTDs are refused)")
    return root


_hardened = False


def harden_zeep() -> None:
    """Make zeep (as configured by onvif-zeep-async) refuse DTDs, entities and external
    references in camera replies, and keep libxml2's depth limits on (they bound nesting,
    not the body: `reply_guard` bounds that)."""
    global _hardened
    if _hardened:
        return
    from onvif.settings import DEFAULT_SETTINGS

    DEFAULT_SETTINGS.forbid_dtd = True
    DEFAULT_SETTINGS.forbid_entities = True
    DEFAULT_SETTINGS.forbid_external = True
    DEFAULT_SETTINGS.xml_huge_tree = False
    _refuse_non_xml_replies()
    _hardened = True


def _refuse_non_xml_replies() -> None:
    """A reply that is no XML at all (an HTTP 503 page, "busy") makes zeep's lenient
    parser return nothing and then fail with AttributeError; make it the XMLSyntaxError
    zeep turns into a TransportError that keeps the HTTP status."""
    import zeep.wsdl.bindings.soap as soap
    from zeep.exceptions import XMLSyntaxError

    original: Any = getattr(soap, "parse_xml")  # noqa: B009 (not exported by zeep)
    if getattr(original, "_refuses_non_xml", False):
        return

    def parse_xml(content: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(content, *args, **kwargs)
        except AttributeError:
            raise XMLSyntaxError("the reply is not XML") from None  # type: ignore[no-untyped-call]

    parse_xml._refuses_non_xml = True  # type: ignore[attr-defined]
    setattr(soap, "parse_xml", parse_xml)  # noqa: B010
