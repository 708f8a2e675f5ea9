"""Gateway configuration: one YAML file, validated completely before any I/O.

Every key is documented in docs/config.md. The value types shared with the collector
(secrets, TLS, sizes, back-off) are `edge_agent.contract.settings.types`, re-exported here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge_agent.contract.mqtt import Endpoint
from edge_agent.contract.settings.types import (
    SEGMENT,
    AdminCode,
    BackoffConfig,
    BrokerUrl,
    ByteSize,
    ListenAddress,
    SecretError,
    SecretRef,
    Strict,
    TlsConfig,
)

__all__ = [
    "SEGMENT",
    "AdminCode",
    "BackoffConfig",
    "BrokerUrl",
    "ByteSize",
    "ChatterConfig",
    "ChatterOverride",
    "DeviceConfig",
    "DriversConfig",
    "GatewayConfig",
    "GatewayIdentity",
    "OutboxConfig",
    "SecretError",
    "SecretRef",
    "SnapshotsConfig",
    "StatusPageConfig",
    "Strict",
    "TlsConfig",
    "TrustedKey",
    "UplinkConfig",
]

#: `uplink.ack_timeout_max_s` by default (docs/config.md says why).
ACK_TIMEOUT_MAX_S = 30.0


class GatewayIdentity(Strict):
    id: str = Field(pattern=SEGMENT, description="gateway id, unique in the district")
    district: AdminCode = Field(pattern=r"^[0-9]{6}$", description="6-digit admin code")
    street: AdminCode = Field(pattern=SEGMENT, description="street (township) code")
    community: AdminCode = Field(pattern=SEGMENT, description="community code")
    credential_salt: SecretRef | None = Field(
        default=None, description="secret salt for hashing access credentials (gate.access); "
        "without one a card number's hash can be reversed by trying every number")
    name: str | None = Field(
        default=None, max_length=100, description="human name, shown on the status page"
    )


class UplinkConfig(Strict):
    broker: BrokerUrl = Field(description="mqtt://host:port or mqtts://host:port")
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    client_id: str | None = Field(default=None, pattern=SEGMENT)
    username: str | None = None
    password: SecretRef | None = None
    tls: TlsConfig | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    batch_max_events: int = Field(default=200, ge=1, le=5000)
    batch_max_bytes: ByteSize = 256 * 1024
    max_inflight_batches: int = Field(default=8, ge=1, le=100)
    ack_timeout_s: float = Field(default=5.0, gt=0, le=3600)
    ack_timeout_max_s: float | None = Field(
        default=None, gt=0, le=3600,
        description="each resend of a batch doubles its ack timeout (jittered) up to this; "
        f"default {ACK_TIMEOUT_MAX_S:g} s, or ack_timeout_s if that is longer")
    publish_timeout_s: float = Field(default=5.0, gt=0, le=600)
    reconnect: BackoffConfig = BackoffConfig()
    wire: Literal["v2", "v1"] = Field(
        default="v2", description="batch format on the wire: v2 = shared fields once per "
        "batch, zstd-compressed (docs/wire.md); v1 = a JSON array of full CloudEvents, for "
        "collectors older than v2")

    @model_validator(mode="after")
    def _cap_not_below_timeout(self) -> UplinkConfig:
        if self.ack_timeout_max_s is not None and self.ack_timeout_max_s < self.ack_timeout_s:
            raise ValueError(
                f"ack_timeout_max_s ({self.ack_timeout_max_s:g}) is below ack_timeout_s "
                f"({self.ack_timeout_s:g}): the back-off starts at ack_timeout_s and grows up "
                "to ack_timeout_max_s; set it equal for a fixed timeout")
        return self

    @property
    def resend_cap_s(self) -> float:
        """The longest a batch waits for its ack before it is sent again."""
        if self.ack_timeout_max_s is None:
            return max(ACK_TIMEOUT_MAX_S, self.ack_timeout_s)
        return self.ack_timeout_max_s

    def endpoint(self) -> Endpoint:
        """Where and how to connect (no secret read until the connection is made)."""
        return Endpoint.for_broker(self.broker, username=self.username,
                                   password=self.password, tls=self.tls,
                                   protocol=self.protocol, keepalive_s=self.keepalive_s)


class OutboxConfig(Strict):
    path: Path = Path("/var/lib/edge-agent/outbox.db")
    max_bytes: ByteSize = 256 * 1024 * 1024
    commit_batch_max: int = Field(default=500, ge=1, le=10000)
    commit_linger_ms: int = Field(default=20, ge=0, le=1000,
                                  description="wait this long for more events before a "
                                  "commit; alarms never wait")
    loss_report_interval_s: float = Field(
        default=60.0, ge=0, le=86400,
        description="evictions are reported as one gateway.data_loss event per interval")

    @field_validator("path", mode="before")
    @classmethod
    def _a_file(cls, value: Any) -> Any:
        if isinstance(value, str) and (not value.strip() or value.endswith("/")):
            raise ValueError("the outbox is a database file, e.g. "
                             "/var/lib/edge-agent/outbox.db")
        return value

    @field_validator("path")
    @classmethod
    def _not_a_folder(cls, value: Path) -> Path:
        if value.is_dir():
            raise ValueError(f"{value} is a folder; give the database file inside it, e.g. "
                             f"{value / 'outbox.db'}")
        return value


class StatusPageConfig(Strict):
    """The LAN status page (docs/status.md): overview open on the LAN, sensitive parts
    (camera snapshots) behind `credential`; without one they are not served at all."""

    enabled: bool = True
    listen: ListenAddress = Field(default="0.0.0.0:8080",
                        description="host:port; 0.0.0.0:8080 serves the whole LAN")
    allowed_hosts: list[Annotated[str, Field(min_length=1, max_length=253,
                                             pattern=r"^[A-Za-z0-9.:\[\]_*-]+$")]] = Field(
        default_factory=list,
        description="extra names in the Host header (e.g. a DNS name staff type); the box's "
        "own addresses, its hostname, hostname.local and localhost are always accepted")
    credential: SecretRef | None = Field(
        default=None, description="password for snapshots and other sensitive parts")


class SnapshotsConfig(Strict):
    """Camera snapshots on disk: `<dir>/<ULID>.jpg`, oldest deleted beyond the bounds."""

    dir: Path = Field(default=Path("/var/lib/edge-agent/snapshots"),
                      description="where camera drivers keep snapshots; the status page "
                      "serves them from here by id")
    max_bytes: ByteSize = Field(default=256 * 1024 * 1024, description="total size bound")
    max_files: int = Field(default=2000, ge=1, le=1_000_000, description="file count bound")


class ChatterConfig(Strict):
    """Chatter control (edge_agent.rules.chatter): an alarm instance (a rule of a device, a zone
    of a panel) that toggles more than `max_toggles_per_min` times in a minute is reported
    once as `<kind>.chattering` instead of storing every raise and clear."""

    enabled: bool = Field(default=True, description="false: every toggle is an event")
    max_toggles_per_min: int = Field(
        default=10, ge=2, le=1000,
        description="raises plus clears in any 60 s beyond which the alarm is chattering")
    calm_s: float = Field(
        default=60.0, ge=1, le=3600, allow_inf_nan=False,
        description="no toggle for this long ends the chatter (the alarm's state is then "
        "reported as it is)")

    def overridden(self, override: ChatterOverride | None) -> ChatterConfig:
        """These settings with the keys a rule or zone sets itself replaced."""
        if override is None:
            return self
        return self.model_copy(update=override.model_dump(exclude_none=True))


class ChatterOverride(Strict):
    """`chatter:` of one alarm rule or zone spec: the keys given replace the gateway's
    `alarm_chatter` (the others keep the gateway's values)."""

    enabled: bool | None = None
    max_toggles_per_min: int | None = Field(default=None, ge=2, le=1000)
    calm_s: float | None = Field(default=None, ge=1, le=3600, allow_inf_nan=False)


class TrustedKey(Strict):
    """One maintainer's Ed25519 public key: a file (`keygen`'s OUT.pub, or PEM) or inline
    base64 of its raw 32 bytes. Public keys are not secrets."""

    file: Path | None = Field(default=None, description="public key file")
    key: str | None = Field(default=None, pattern=r"^[A-Za-z0-9+/]{43}=$",
                            description="base64 of the raw 32-byte public key")

    @model_validator(mode="after")
    def _one_of(self) -> TrustedKey:
        if (self.file is None) == (self.key is None):
            raise ValueError("give exactly one of `file` and `key`")
        return self


class DriversConfig(Strict):
    """Driver bundles (docs/drivers-updates.md): who may sign them, where they live."""

    trusted_keys: list[TrustedKey] = Field(
        default_factory=list, max_length=32,
        description="public keys whose signatures this gateway accepts on bundles")
    threshold: int = Field(default=1, ge=1, le=32,
                           description="distinct trusted keys that must sign a bundle")
    state_dir: Path | None = Field(
        default=None, description="where bundles are installed (<state_dir>/drivers); "
        "default: the outbox's folder")
    probation_s: float = Field(
        default=60.0, gt=0, le=86400, allow_inf_nan=False,
        description="after an update, a driver that crashes or reports nothing this long "
        "is rolled back")
    keep_versions: int = Field(default=3, ge=2, le=50,
                               description="installed versions kept per driver")

    @model_validator(mode="after")
    def _threshold_reachable(self) -> DriversConfig:
        # distinct keys: the same file or inline key listed twice is one key
        distinct = {("key", k.key) if k.key is not None
                    else ("file", os.path.normpath(str(k.file)))
                    for k in self.trusted_keys}
        if self.trusted_keys and self.threshold > len(distinct):
            raise ValueError(f"threshold {self.threshold} is more than the "
                             f"{len(distinct)} distinct trusted key(s): no bundle could pass")
        return self

    def store_root(self, outbox_path: Path) -> Path:
        return (self.state_dir or outbox_path.parent) / "drivers"


class DeviceConfig(BaseModel):
    """Common part of every device entry; the driver validates the rest."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str = Field(pattern=SEGMENT)
    driver: str = Field(min_length=1)
    name: str | None = Field(default=None, max_length=100)
    enabled: bool = True


class GatewayConfig(Strict):
    gateway: GatewayIdentity
    uplink: UplinkConfig
    outbox: OutboxConfig = OutboxConfig()
    status_page: StatusPageConfig = StatusPageConfig()
    snapshots: SnapshotsConfig = SnapshotsConfig()
    heartbeat_s: float = Field(default=60.0, gt=0, le=86400)
    alarm_chatter: ChatterConfig = ChatterConfig()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    drivers: DriversConfig = DriversConfig()
    profiles: list[str] = Field(
        default_factory=list, max_length=32,
        description="device profile directories searched before the shipped ones and "
        "/etc/edge-agent/profiles, in order; a relative path is relative to this file")
    devices: list[DeviceConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_devices(self) -> GatewayConfig:
        seen: set[str] = set()
        for dev in self.devices:
            if dev.id in seen:
                raise ValueError(f"device id {dev.id!r} is used twice")
            seen.add(dev.id)
        return self
