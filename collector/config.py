"""Collector configuration: one YAML file, loaded with `edge_agent.config.load_model`.

Example: `configs/collector.example.yaml`. Secrets are `SecretRef`s (`file:` or `env:`),
never inline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from collector.quarantine import QuarantineLimits
from collector.registry import Unregistered
from edge_agent.config.models import (
    SEGMENT,
    BackoffConfig,
    BrokerUrl,
    ByteSize,
    SecretRef,
    Strict,
    TlsConfig,
)
from edge_agent.mqtt import Endpoint

LISTEN = r"^[^:\s]+:\d{1,5}$"
#: Reserved for the collector's own connection to its embedded broker.
INTERNAL_USER_PREFIX = "_collector-"


class CollectorIdentity(Strict):
    id: str = Field(pattern=SEGMENT, description="collector instance id, unique per district")


class BrokerConnection(Strict):
    """An external broker (Mosquitto, EMQX, ...) the collector subscribes on."""

    url: BrokerUrl = Field(description="mqtt://host:port or mqtts://host:port")
    username: str | None = None
    password: SecretRef | None = None
    tls: TlsConfig | None = None
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    share_group: str = Field(default="collectors", pattern=SEGMENT)
    client_id: str | None = Field(default=None, pattern=SEGMENT)
    keepalive_s: int = Field(default=30, ge=5, le=3600)

    def endpoint(self) -> Endpoint:
        """Reads the password secret now (raises SecretError if it cannot)."""
        return Endpoint.for_broker(self.url, username=self.username, password=self.password,
                                   tls=self.tls, protocol=self.protocol,
                                   keepalive_s=self.keepalive_s)


class BrokerUser(Strict):
    """A broker account. A `gateway` user's name is its gateway id."""

    username: str = Field(pattern=SEGMENT)
    password: SecretRef
    role: Literal["gateway", "collector"] = "gateway"


class EmbeddedBrokerConfig(Strict):
    listen: str = Field(default="127.0.0.1:1883", pattern=LISTEN)
    users: list[BrokerUser] = Field(default_factory=list)
    allow_anonymous: bool = False

    @model_validator(mode="after")
    def _users(self) -> EmbeddedBrokerConfig:
        seen: set[str] = set()
        for user in self.users:
            if user.username in seen:
                raise ValueError(f"user {user.username!r} is listed twice")
            seen.add(user.username)
        if not self.users and not self.allow_anonymous:
            raise ValueError("no users and allow_anonymous is false: no gateway could connect; "
                             "add users (one per gateway) or set allow_anonymous: true")
        return self

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


class IngestConfig(Strict):
    max_payload_bytes: ByteSize = 1024 * 1024
    max_events_per_batch: int = Field(default=5000, ge=1, le=100_000)
    ack_timeout_s: float = Field(default=5.0, gt=0, le=600)


class GatewaysConfig(Strict):
    """Where each gateway is installed: the registry file and the rule for the unlisted."""

    file: Path = Field(description="YAML: `gateways:` mapping gateway id -> district, street, "
                                   "community (docs/config.md)")
    unregistered: Unregistered = Field(
        default="quarantine",
        description="events of a gateway the file does not list: `quarantine` (and ack) or "
                    "`accept` with a warning")


def _embedded_as_none(value: Any) -> Any:
    """`broker: embedded` (the default) is stored as None; a mapping is an external broker."""
    if isinstance(value, str):
        if value != "embedded":
            raise ValueError("expected `embedded` or a mapping with url, username, password, …")
        return None
    return value


class CollectorConfig(Strict):
    collector: CollectorIdentity
    store: str = Field(description="sqlite:///relative.db, sqlite:////absolute.db or postgresql://…")
    #: None means `broker: embedded`.
    broker: Annotated[BrokerConnection | None, BeforeValidator(_embedded_as_none)] = None
    embedded_broker: EmbeddedBrokerConfig | None = None
    ingest: IngestConfig = IngestConfig()
    #: None: no registry, every place is accepted (warned at start).
    gateways: GatewaysConfig | None = None
    quarantine: QuarantineLimits = QuarantineLimits()
    reconnect: BackoffConfig = BackoffConfig()
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("store")
    @classmethod
    def _store_url(cls, v: str) -> str:
        from collector.store.url import parse_store_url

        parse_store_url(v)  # raises ValueError with the reason
        return v

    @model_validator(mode="after")
    def _embedded(self) -> CollectorConfig:
        if self.broker is None and self.embedded_broker is None:
            raise ValueError("broker: embedded needs an embedded_broker section (listen, users)")
        if self.broker is not None and self.embedded_broker is not None:
            raise ValueError("embedded_broker is only used with broker: embedded")
        return self

    @property
    def client_id(self) -> str:
        if self.broker is not None and self.broker.client_id:
            return self.broker.client_id
        return f"collector-{self.collector.id}"
