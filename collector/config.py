"""Collector configuration: one YAML file, loaded with `edge_agent.config.load_model`.

Example: `configs/collector.example.yaml`. Secrets are `SecretRef`s (`file:` or `env:`),
never inline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from collector.quarantine import QuarantineLimits
from collector.registry import Unregistered
from edge_agent.contract.mqtt import Endpoint
from edge_agent.contract.settings import (
    SEGMENT,
    BackoffConfig,
    BrokerUrl,
    ByteSize,
    ListenAddress,
    SecretRef,
    Strict,
    TlsConfig,
)

#: The collector's own account on its managed broker: `_collector-<id>`. The leading `_`
#: keeps it out of the names a configured user may take (SEGMENT starts alphanumeric).
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
    """A broker account. A `gateway` user's name is its gateway id (and its client id)."""

    username: str = Field(pattern=SEGMENT)
    password: SecretRef
    role: Literal["gateway", "collector"] = "gateway"


class ListenerTls(Strict):
    """The managed broker's TLS listener: its certificate chain and private key (PEM)."""

    cert_file: Path
    key_file: Path


class _HasListen(Protocol):
    @property
    def listen(self) -> str: ...


class Listens:
    """`host` and `port` of a model's `listen: "host:port"` field."""

    @property
    def host(self: _HasListen) -> str:
        return self.listen.rsplit(":", 1)[0]

    @property
    def port(self: _HasListen) -> int:
        return int(self.listen.rsplit(":", 1)[1])


class ManagedBrokerConfig(Strict, Listens):
    """A Mosquitto the collector configures (files in `state_dir`) and supervises."""

    listen: ListenAddress = "127.0.0.1:1883"
    state_dir: Path = Field(description="mosquitto.conf, password file, ACL, persistence")
    users: list[BrokerUser] = Field(default_factory=list)
    tls: ListenerTls | None = None
    message_size_limit: ByteSize = 1024 * 1024
    binary: str = Field(default="mosquitto", min_length=1)
    restart: BackoffConfig = BackoffConfig(initial_s=0.5, max_s=30)

    @field_validator("users")
    @classmethod
    def _unique_users(cls, users: list[BrokerUser]) -> list[BrokerUser]:
        seen: set[str] = set()
        for user in users:
            if user.username in seen:
                raise ValueError(f"user {user.username!r} is listed twice")
            seen.add(user.username)
        return users


class ProvisionedCollector(Strict):
    """A collector account of the district broker, written into the provisioning ACL."""

    username: str = Field(pattern=SEGMENT, description="its broker user (mosquitto_passwd)")
    collector_id: str | None = Field(
        default=None, pattern=SEGMENT,
        description="its collector id: it may then write only its own presence topic")


class ProvisioningConfig(Strict):
    """`edge-collector provision`: where the broker's password file and ACL are written
    (docs/provisioning.md). The registry is `gateways.file`."""

    dir: Path = Field(description="holds `passwd` and `acl` (the broker's password_file and "
                                  "acl_file) and the lock of concurrent provisions")
    broker_url: BrokerUrl = Field(description="the broker as the gateway boxes reach it "
                                              "(printed in the box's uplink snippet)")
    collectors: list[ProvisionedCollector] = Field(
        default_factory=list,
        description="collector accounts of an external broker, given their rights in the "
                    "ACL (a managed broker adds its own)")


class IngestConfig(Strict):
    max_payload_bytes: ByteSize = 1024 * 1024
    max_events_per_batch: int = Field(default=5000, ge=1, le=100_000)
    ack_timeout_s: float = Field(default=5.0, gt=0, le=600)
    summary_interval_s: float = Field(
        default=60.0, gt=0, le=86400,
        description="how often `edge-collector run` logs its one-line `collector_summary`")
    max_queued_payloads: int = Field(
        default=10_000, ge=1, le=1_000_000,
        description="payloads waiting for the store, at most; beyond it a payload is shed "
                    "(not acked: its gateway resends it)")
    max_queued_bytes: ByteSize = Field(
        default=64 * 1024 * 1024, description="their bytes, at most (same rule)")


class GatewaysConfig(Strict):
    """Where each gateway is installed: the registry file and the rule for the unlisted."""

    file: Path = Field(description="YAML: `gateways:` mapping gateway id -> district, street, "
                                   "community (docs/config.md)")
    unregistered: Unregistered = Field(
        default="quarantine",
        description="events of a gateway the file does not list: `quarantine` (and ack) or "
                    "`accept` with a warning")


class ApiConfig(Strict, Listens):
    """The event stream API (docs/stream-api.md): `edge-collector serve`, or inside
    `edge-collector run` with `enabled: true` (or `run --serve`)."""

    enabled: bool = Field(default=False, description="serve the API inside `edge-collector run`")
    listen: ListenAddress = Field(default="127.0.0.1:8470",
                                  description="host:port; keep it on the loopback behind a "
                                              "reverse proxy, or give `tls`")
    cursor_key: SecretRef = Field(description="HMAC key of the cursors (at least 16 "
                                              "characters; a random 64-hex-digit file)")
    operator_token: SecretRef | None = Field(
        default=None, description="token of the webhook lag page (/webhooks, /v1/webhooks); "
                                  "without it the page answers 404")
    tls: ListenerTls | None = None
    heartbeat_s: float = Field(default=15.0, gt=0, le=300)
    poll_s: float = Field(default=0.1, gt=0, le=10,
                          description="how often the server looks for new events (SSE)")
    behind_after_s: float = Field(default=30.0, gt=0, le=3600,
                                  description="an SSE client that takes nothing for this long "
                                              "is told `behind` and disconnected")
    max_connections: int = Field(default=4096, ge=1, le=1_000_000,
                                 description="connections open at once, all clients; more are "
                                             "closed at once (the unit's LimitNOFILE is 65536)")
    max_connections_per_address: int = Field(
        default=1024, ge=1, le=1_000_000,
        description="connections from one address; behind a reverse proxy every consumer "
                    "comes from the proxy's address")
    request_head_timeout_s: float = Field(
        default=10.0, gt=0, le=300,
        description="a connection that has not sent a whole request head this long after "
                    "connecting is closed (slow or hostile clients)")


class FleetConfig(Strict):
    """The district fleet view on the API's listener (docs/fleet.md)."""

    enabled: bool = Field(default=True, description="serve `/fleet` and `/v1/fleet` with the API")
    heartbeat_s: float = Field(default=60.0, gt=0, le=3600,
                               description="the gateways' heartbeat interval: a gateway silent "
                                           "for twice this turns red")
    rebuild_s: float = Field(default=86_400.0, gt=0, le=90 * 86_400,
                             description="on start, the view is rebuilt from the events of "
                                         "this many seconds back")
    poll_s: float = Field(default=1.0, gt=0, le=60)
    gaps_s: float = Field(default=30.0, gt=0, le=3600,
                          description="how often the store's sequence gaps are read")


def _managed_as_none(value: Any) -> Any:
    """`broker: managed` (the default) is stored as None; a mapping is an external broker."""
    if value == "embedded":
        raise ValueError("the embedded broker (amqtt) was removed; use `broker: managed` with "
                         "a `managed_broker:` section (a Mosquitto the collector runs)")
    if isinstance(value, str):
        if value != "managed":
            raise ValueError("expected `managed` or a mapping with url, username, password, …")
        return None
    return value


class CollectorConfig(Strict):
    collector: CollectorIdentity
    store: str = Field(description="sqlite:///relative.db, sqlite:////absolute.db or postgresql://…")
    #: PostgreSQL: whole daily partitions of events older than this are dropped; None keeps all.
    store_retention_days: int | None = Field(default=None, ge=1, le=36500)
    #: None: `edge-collector provision` is not set up (docs/provisioning.md).
    provisioning: ProvisioningConfig | None = None
    #: None means `broker: managed`.
    broker: Annotated[BrokerConnection | None, BeforeValidator(_managed_as_none)] = None
    managed_broker: ManagedBrokerConfig | None = Field(default=None, validate_default=True)
    ingest: IngestConfig = IngestConfig()
    #: None: no registry, every place is accepted (warned at start).
    gateways: GatewaysConfig | None = None
    quarantine: QuarantineLimits = QuarantineLimits()
    reconnect: BackoffConfig = BackoffConfig()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: None: no stream API (`edge-collector serve` needs it).
    api: ApiConfig | None = None
    fleet: FleetConfig = FleetConfig()

    @field_validator("store")
    @classmethod
    def _store_url(cls, v: str) -> str:
        from collector.store.url import parse_store_url

        parse_store_url(v)  # raises ValueError with the reason
        return v

    @field_validator("managed_broker")
    @classmethod
    def _managed(cls, value: ManagedBrokerConfig | None,
                 info: ValidationInfo) -> ManagedBrokerConfig | None:
        if "broker" not in info.data:  # the broker key itself is wrong: reported there
            return value
        if info.data["broker"] is None and value is None:
            raise ValueError("`broker: managed` needs a managed_broker section "
                             "(listen, state_dir, users)")
        if info.data["broker"] is not None and value is not None:
            raise ValueError("managed_broker is only used with `broker: managed`")
        if (value is not None and info.data.get("provisioning") is None
                and not any(u.role == "gateway" for u in value.users)):
            raise ValueError("no gateway user: no gateway could connect; add one user per "
                             "gateway (its username is the gateway id) or a `provisioning:` "
                             "section (edge-collector provision)")
        return value

    @model_validator(mode="after")
    def _provisioning_needs_registry(self) -> CollectorConfig:
        if self.provisioning is not None and self.gateways is None:
            raise ValueError("provisioning needs a `gateways:` section: its `file` is the "
                             "registry `edge-collector provision` writes the places into")
        return self

    @property
    def client_id(self) -> str:
        if self.broker is not None and self.broker.client_id:
            return self.broker.client_id
        if self.broker is None:  # the managed broker binds client ids to user names
            return f"{INTERNAL_USER_PREFIX}{self.collector.id}"
        return f"collector-{self.collector.id}"
