"""The simulator's ONVIF operations: device, media and events services (reply bodies)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .pullpoint import parse_duration
from .soap import Fault, Request, iso, text, xml_attr, xml_text

if TYPE_CHECKING:
    from .app import OnvifSimulator

__all__ = ["AUTHLESS", "HOSTILE_BODY", "OPERATIONS"]

#: Operations a camera answers without credentials (ONVIF Core: the pre-auth set).
AUTHLESS = frozenset({"GetSystemDateAndTime"})

#: A "billion laughs" reply: what the hostile switch makes an operation answer.
HOSTILE_BODY = (b'<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
                + b"".join(b'<!ENTITY lol%d "%s">' % (i, b"".join(
                    [b"&lol%d;" % (i - 1) if i > 1 else b"&lol;"] * 10)) for i in range(1, 10))
                + b']>\n<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope">'
                  b"<env:Body><x>&lol9;</x></env:Body></env:Envelope>")


def _service(ns: str, url: str) -> str:
    return (f"<tds:Service><tds:Namespace>{ns}</tds:Namespace><tds:XAddr>{xml_text(url)}"
            "</tds:XAddr><tds:Version><tt:Major>2</tt:Major><tt:Minor>60</tt:Minor>"
            "</tds:Version></tds:Service>")


def get_system_date_and_time(sim: OnvifSimulator, _req: Request) -> str:
    t = time.gmtime(sim.camera_now())
    if sim.switches.no_utc_time:
        return ("<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime>"
                "<tt:DateTimeType>Manual</tt:DateTimeType><tt:DaylightSavings>false"
                "</tt:DaylightSavings></tds:SystemDateAndTime>"
                "</tds:GetSystemDateAndTimeResponse>")
    return ("<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime>"
            "<tt:DateTimeType>NTP</tt:DateTimeType><tt:DaylightSavings>false"
            "</tt:DaylightSavings><tt:TimeZone><tt:TZ>UTC0</tt:TZ></tt:TimeZone>"
            f"<tt:UTCDateTime><tt:Time><tt:Hour>{t.tm_hour}</tt:Hour><tt:Minute>{t.tm_min}"
            f"</tt:Minute><tt:Second>{t.tm_sec}</tt:Second></tt:Time><tt:Date><tt:Year>"
            f"{t.tm_year}</tt:Year><tt:Month>{t.tm_mon}</tt:Month><tt:Day>{t.tm_mday}</tt:Day>"
            "</tt:Date></tt:UTCDateTime></tds:SystemDateAndTime>"
            "</tds:GetSystemDateAndTimeResponse>")


def get_services(sim: OnvifSimulator, _req: Request) -> str:
    return ("<tds:GetServicesResponse>"
            + _service("http://www.onvif.org/ver10/device/wsdl", sim.url("/onvif/device_service"))
            + ("" if sim.switches.no_media else
               _service("http://www.onvif.org/ver10/media/wsdl", sim.url("/onvif/media_service")))
            + ("" if sim.switches.no_events else
               _service("http://www.onvif.org/ver10/events/wsdl",
                        sim.url("/onvif/event_service")))
            + "</tds:GetServicesResponse>")


def get_capabilities(sim: OnvifSimulator, _req: Request) -> str:
    events = ("" if sim.switches.no_events else
              f"<tt:Events><tt:XAddr>{sim.url('/onvif/event_service')}</tt:XAddr>"
              "<tt:WSSubscriptionPolicySupport>false</tt:WSSubscriptionPolicySupport>"
              "<tt:WSPullPointSupport>true</tt:WSPullPointSupport>"
              "<tt:WSPausableSubscriptionManagerInterfaceSupport>false"
              "</tt:WSPausableSubscriptionManagerInterfaceSupport></tt:Events>")
    return ("<tds:GetCapabilitiesResponse><tds:Capabilities>"
            f"<tt:Device><tt:XAddr>{sim.url('/onvif/device_service')}</tt:XAddr></tt:Device>"
            + events +
            f"<tt:Media><tt:XAddr>{sim.url('/onvif/media_service')}</tt:XAddr>"
            "<tt:StreamingCapabilities><tt:RTPMulticast>false</tt:RTPMulticast>"
            "<tt:RTP_TCP>true</tt:RTP_TCP><tt:RTP_RTSP_TCP>true</tt:RTP_RTSP_TCP>"
            "</tt:StreamingCapabilities></tt:Media></tds:Capabilities>"
            "</tds:GetCapabilitiesResponse>")


def get_device_information(sim: OnvifSimulator, _req: Request) -> str:
    return ("<tds:GetDeviceInformationResponse><tds:Manufacturer>EdgeAgent</tds:Manufacturer>"
            f"<tds:Model>{xml_text(sim.model)}</tds:Model><tds:FirmwareVersion>1.4.2"
            f"</tds:FirmwareVersion><tds:SerialNumber>{xml_text(sim.serial)}</tds:SerialNumber>"
            "<tds:HardwareId>SIM-1</tds:HardwareId></tds:GetDeviceInformationResponse>")


def _profile(token: str, width: int, height: int) -> str:
    return (f"<trt:Profiles token={xml_attr(token)} fixed=\"true\"><tt:Name>{token}</tt:Name>"
            "<tt:VideoSourceConfiguration token=\"vsc0\"><tt:Name>vsc0</tt:Name>"
            "<tt:UseCount>2</tt:UseCount><tt:SourceToken>vs0</tt:SourceToken>"
            f"<tt:Bounds x=\"0\" y=\"0\" width=\"{width}\" height=\"{height}\"/>"
            "</tt:VideoSourceConfiguration>"
            f"<tt:VideoEncoderConfiguration token=\"enc-{token}\"><tt:Name>enc-{token}</tt:Name>"
            "<tt:UseCount>1</tt:UseCount><tt:Encoding>JPEG</tt:Encoding><tt:Resolution>"
            f"<tt:Width>{width}</tt:Width><tt:Height>{height}</tt:Height></tt:Resolution>"
            "<tt:Quality>80</tt:Quality></tt:VideoEncoderConfiguration></trt:Profiles>")


def get_profiles(sim: OnvifSimulator, _req: Request) -> str:
    return ("<trt:GetProfilesResponse>" + _profile("main", 640, 360) + _profile("sub", 640, 360)
            + "</trt:GetProfilesResponse>")


def _check_profile(req: Request) -> str:
    token = text(req.body, "ProfileToken")
    if token not in ("main", "sub"):
        raise Fault("Sender", "ter:InvalidArgVal/ter:NoProfile", f"no profile {token!r}")
    return token


def get_stream_uri(sim: OnvifSimulator, req: Request) -> str:
    _check_profile(req)
    return ("<trt:GetStreamUriResponse><trt:MediaUri>"
            f"<tt:Uri>{xml_text(sim.stream_uri or sim.url('/video.mjpg'))}</tt:Uri>"
            "<tt:InvalidAfterConnect>false</tt:InvalidAfterConnect><tt:InvalidAfterReboot>"
            "false</tt:InvalidAfterReboot><tt:Timeout>PT0S</tt:Timeout></trt:MediaUri>"
            "</trt:GetStreamUriResponse>")


def get_snapshot_uri(sim: OnvifSimulator, req: Request) -> str:
    token = _check_profile(req)
    if sim.switches.no_snapshot_uri:
        raise Fault("Receiver", "ter:ActionNotSupported", "snapshots are not supported")
    return ("<trt:GetSnapshotUriResponse><trt:MediaUri>"
            f"<tt:Uri>{xml_text(sim.url(f'/onvif/snapshot?profile={token}'))}</tt:Uri>"
            "<tt:InvalidAfterConnect>false</tt:InvalidAfterConnect><tt:InvalidAfterReboot>"
            "false</tt:InvalidAfterReboot><tt:Timeout>PT0S</tt:Timeout></trt:MediaUri>"
            "</trt:GetSnapshotUriResponse>")


def _times(sim: OnvifSimulator, expires: float) -> str:
    return (f"<tev:CurrentTime>{iso(sim.camera_now())}</tev:CurrentTime>"
            f"<tev:TerminationTime>{iso(expires)}</tev:TerminationTime>")


def create_pull_point_subscription(sim: OnvifSimulator, req: Request) -> str:
    now = sim.camera_now()
    asked = text(req.body, "InitialTerminationTime") or "PT60S"
    lifetime = min(max(parse_duration(asked, now), 1.0), sim.max_termination_s)
    sub = sim.subscriptions.create(now + lifetime, sim.initial_messages())
    return ("<tev:CreatePullPointSubscriptionResponse><tev:SubscriptionReference>"
            f"<wsa:Address>{xml_text(sim.url(f'/onvif/subscription/{sub.id}'))}</wsa:Address>"
            "</tev:SubscriptionReference>"
            f"<wsnt:CurrentTime>{iso(now)}</wsnt:CurrentTime>"
            f"<wsnt:TerminationTime>{iso(sub.expires)}</wsnt:TerminationTime>"
            "</tev:CreatePullPointSubscriptionResponse>")


def get_event_properties(_sim: OnvifSimulator, _req: Request) -> str:
    return ("<tev:GetEventPropertiesResponse>"
            "<tev:TopicNamespaceLocation>http://www.onvif.org/onvif/ver10/topics/"
            "topicns.xml</tev:TopicNamespaceLocation><wsnt:FixedTopicSet>true"
            "</wsnt:FixedTopicSet><wstop:TopicSet><tns1:RuleEngine wstop:topic=\"true\"/>"
            "<tns1:VideoSource wstop:topic=\"true\"/></wstop:TopicSet>"
            "<wsnt:TopicExpressionDialect>http://www.onvif.org/ver10/tev/topicExpression/"
            "ConcreteSet</wsnt:TopicExpressionDialect>"
            "<tev:MessageContentFilterDialect>http://www.onvif.org/ver10/tev/messageContent"
            "Filter/ItemFilter</tev:MessageContentFilterDialect>"
            "<tev:MessageContentSchemaLocation>http://www.onvif.org/onvif/ver10/schema/"
            "onvif.xsd</tev:MessageContentSchemaLocation></tev:GetEventPropertiesResponse>")


async def pull_messages(sim: OnvifSimulator, req: Request, sub_id: str) -> str:
    sub = sim.subscriptions.get(sub_id, sim.camera_now())
    sim.subscriptions.pulls += 1
    number = sim.subscriptions.pulls
    timeout = min(parse_duration(text(req.body, "Timeout") or "PT10S", sim.camera_now()), 60.0)
    try:
        limit = max(1, min(int(text(req.body, "MessageLimit") or "100"), 1000))
    except ValueError:
        raise Fault("Sender", "ter:InvalidArgVal", "MessageLimit is not a number") from None
    if sim.switches.hang_pulls:
        await sim.hang()
    if sim.switches.pull_body is not None:
        return sim.switches.pull_body
    if not sub.queue and not sim.switches.eager_pulls:
        sub.wake.clear()
        await sim.wait_for(sub.wake, timeout)
        sub = sim.subscriptions.get(sub_id, sim.camera_now())  # dropped while waiting?
    out = [sub.queue.popleft().xml() for _ in range(min(limit, len(sub.queue)))]
    if out:
        sim.subscriptions.last_delivery = number
    return ("<tev:PullMessagesResponse>" + _times(sim, sub.expires) + "".join(out)
            + "</tev:PullMessagesResponse>")


def renew(sim: OnvifSimulator, req: Request, sub_id: str) -> str:
    now = sim.camera_now()
    sub = sim.subscriptions.get(sub_id, now)
    asked = text(req.body, "TerminationTime") or "PT60S"
    sub.expires = now + min(max(parse_duration(asked, now), 1.0), sim.max_termination_s)
    sim.subscriptions.renewed += 1
    return ("<wsnt:RenewResponse>"
            f"<wsnt:TerminationTime>{iso(sub.expires)}</wsnt:TerminationTime>"
            f"<wsnt:CurrentTime>{iso(now)}</wsnt:CurrentTime></wsnt:RenewResponse>")


def unsubscribe(sim: OnvifSimulator, _req: Request, sub_id: str) -> str:
    sim.subscriptions.get(sub_id, sim.camera_now())
    sim.subscriptions.live.pop(sub_id, None)
    sim.subscriptions.unsubscribed += 1
    return "<wsnt:UnsubscribeResponse/>"


def set_synchronization_point(sim: OnvifSimulator, _req: Request, sub_id: str) -> str:
    sub = sim.subscriptions.get(sub_id, sim.camera_now())
    sub.queue.extend(sim.initial_messages())
    sub.wake.set()
    return "<tev:SetSynchronizationPointResponse/>"


#: path kind -> operation -> handler; a subscription handler gets the subscription id.
OPERATIONS: dict[str, dict[str, Callable[..., Any]]] = {
    "device": {"GetSystemDateAndTime": get_system_date_and_time, "GetServices": get_services,
               "GetCapabilities": get_capabilities,
               "GetDeviceInformation": get_device_information},
    "media": {"GetProfiles": get_profiles, "GetStreamUri": get_stream_uri,
              "GetSnapshotUri": get_snapshot_uri},
    "events": {"CreatePullPointSubscription": create_pull_point_subscription,
               "GetEventProperties": get_event_properties},
    "subscription": {"PullMessages": pull_messages, "Renew": renew,
                     "Unsubscribe": unsubscribe,
                     "SetSynchronizationPoint": set_synchronization_point},
}
