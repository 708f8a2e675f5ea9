"""Opening MQTT clients: endpoint settings, TLS, and v5-or-3.1.1 protocol selection.

Shared by the agent's uplink and the collector so both speak to a broker the same
way. `protocol: auto` tries MQTT v5 and falls back to 3.1.1 when the broker
refuses the version (CONNACK 0x01 under 3.1.1, reason 0x84 under v5).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import aiomqtt
from aiomqtt import ProtocolVersion
from pydantic import SecretStr

from edge_agent.contract.settings.types import SecretRef, TlsConfig

#: Connect return codes meaning "I don't speak that protocol version".
_VERSION_REFUSED = {1, 132}

ProtocolSetting = Literal["auto", "5", "3.1.1"]

_quiet_logger = logging.getLogger("edge_agent.contract.mqtt.paho")
# aiomqtt warns once per publish above 10 pending calls; we run many in flight on purpose.
_quiet_logger.setLevel(logging.ERROR)


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsConfig | None = None
    use_tls: bool = False
    protocol: ProtocolSetting = "auto"
    keepalive_s: int = 30

    @classmethod
    def for_broker(cls, url: str, *, username: str | None, password: SecretRef | None,
                   tls: TlsConfig | None, protocol: ProtocolSetting, keepalive_s: int) -> Endpoint:
        """From a validated `mqtt://` / `mqtts://` URL; reads the password secret now."""
        parts = urlsplit(url)
        use_tls = parts.scheme == "mqtts" or tls is not None
        return cls(host=parts.hostname or "", port=parts.port or (8883 if use_tls else 1883),
                   username=username, password=password.reveal() if password else None,
                   tls=tls, use_tls=use_tls, protocol=protocol, keepalive_s=keepalive_s)

    def describe(self) -> str:
        """Safe to log: no credentials."""
        return f"{'mqtts' if self.use_tls else 'mqtt'}://{self.host}:{self.port}"


def tls_context(tls: TlsConfig | None) -> ssl.SSLContext:
    if tls is not None:
        tls.check_files()  # never hand OpenSSL a directory or /dev/zero
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls and tls.ca_file else None)
    if tls and tls.cert_file and tls.key_file:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls and tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def initial_protocol(setting: ProtocolSetting) -> ProtocolVersion:
    return ProtocolVersion.V311 if setting == "3.1.1" else ProtocolVersion.V5


def is_version_refusal(exc: BaseException) -> bool:
    rc = getattr(exc, "rc", None)
    value = getattr(rc, "value", rc)
    return isinstance(exc, aiomqtt.MqttCodeError) and value in _VERSION_REFUSED


def is_timeout(exc: BaseException) -> bool:
    return type(exc) is aiomqtt.MqttError and str(exc) == "Operation timed out"


class ProtocolChooser:
    """Which MQTT version to try next under `protocol: auto`.

    A broker that refuses v5 (CONNACK 0x01 / 0x84) gets 3.1.1 from then on. A CONNECT
    that times out is ambiguous: some 3.1.1-only brokers never answer a v5 CONNECT
    carrying properties, but an overloaded v5 broker may time out too. So a timeout
    alternates the version, and whichever version connects is kept.
    """

    def __init__(self, setting: ProtocolSetting) -> None:
        self.setting = setting
        self.current = initial_protocol(setting)

    @property
    def label(self) -> str:
        return "5" if self.current == ProtocolVersion.V5 else "3.1.1"

    def failed(self, exc: BaseException) -> bool:
        """Record a failed CONNECT; True when the next attempt uses the other version."""
        if self.setting != "auto":
            return False
        if is_version_refusal(exc) and self.current == ProtocolVersion.V5:
            self.current = ProtocolVersion.V311
            return True
        if is_timeout(exc):
            self.current = (ProtocolVersion.V311 if self.current == ProtocolVersion.V5
                            else ProtocolVersion.V5)
            return True
        return False


def make_client(
    ep: Endpoint,
    protocol: ProtocolVersion,
    *,
    identifier: str | None,
    persistent: bool,
    will: aiomqtt.Will | None = None,
    timeout_s: float = 10.0,
    max_queued_incoming: int | None = None,
    queue_type: type[asyncio.Queue[aiomqtt.Message]] | None = None,
    session_expiry_s: int = 3600,
) -> aiomqtt.Client:
    """An aiomqtt client for `ep`; `persistent` keeps the broker session across reconnects."""
    kwargs: dict[str, Any] = {
        "username": ep.username,
        "password": ep.password.get_secret_value() if ep.password else None,
        "identifier": identifier,
        "protocol": protocol,
        "will": will,
        "keepalive": ep.keepalive_s,
        "timeout": timeout_s,
        "logger": _quiet_logger,
        "max_queued_incoming_messages": max_queued_incoming,
        "queue_type": queue_type,
        # Without TCP_NODELAY each small ack waits behind a delayed ACK (40 ms on Linux):
        # measured 4.5k -> 19k events/s end to end.
        "socket_options": [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    }
    if ep.use_tls:
        kwargs["tls_context"] = tls_context(ep.tls)
        if ep.tls and ep.tls.insecure_skip_verify:
            kwargs["tls_insecure"] = True
    if protocol == ProtocolVersion.V5:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        if persistent:
            props.SessionExpiryInterval = session_expiry_s
        kwargs["properties"] = props
        kwargs["clean_start"] = not persistent
    else:
        kwargs["clean_session"] = not persistent
    return aiomqtt.Client(ep.host, ep.port, **kwargs)
