"""Gateway configuration: one YAML file, validated completely before any I/O.

Every key is documented in docs/config.md. Secrets are never inline: a secret is
given as `<name>: {file: PATH}` (a file holding it) or `<name>: {env: NAME}` (an
environment variable) and read by `SecretRef.reveal()` only where it is used.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    model_validator,
)

from edge_agent.config._secret_files import (
    MAX_TLS_FILE_BYTES,
    SecretFileError,
    inspect_file,
    read_secret_file,
)

SEGMENT = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def _parse_size(value: Any) -> Any:
    """`268435456`, `256MiB`, `1.5 GB` -> bytes."""
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if not m:
            raise ValueError("a size such as 268435456, 256MiB or 1GB")
        return int(float(m.group(1)) * _UNITS[(m.group(2) or "b").lower()])
    return value


def _code_as_text(value: Any) -> Any:
    """Admin codes written unquoted in YAML arrive as int: keep them as text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _broker_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError("expected mqtt://host:port or mqtts://host:port")
    if parts.username or parts.password:
        raise ValueError("put no credentials in the URL; use username and password: {file: ...}")
    return value


ByteSize = Annotated[int, BeforeValidator(_parse_size), Field(gt=0)]
BrokerUrl = Annotated[str, AfterValidator(_broker_url)]
AdminCode = Annotated[str, BeforeValidator(_code_as_text)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(Strict):
    """A secret read from a file or an environment variable, never written inline."""

    file: Path | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of `file` or `env`")
        return self

    def reveal(self) -> SecretStr:
        """Read the secret now; raises SecretError naming the source, never the value."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise SecretError(f"environment variable {self.env} is not set")
            return SecretStr(value)
        assert self.file is not None
        try:
            return SecretStr(read_secret_file(self.file))
        except SecretFileError as exc:
            raise SecretError(f"secret file {exc}") from None


class SecretError(RuntimeError):
    pass


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


class TlsConfig(Strict):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self

    def check_files(self) -> None:
        """Raise SecretError naming a file that cannot be used, before OpenSSL reads it
        (a directory, /dev/zero, a missing or oversized file)."""
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, key)
            if path is None:
                continue
            error = inspect_file(path, cap=MAX_TLS_FILE_BYTES, private=False).error
            if error is not None:
                raise SecretError(f"broker TLS settings: tls.{key}: {error.message} (a PEM "
                                  "file; check the path and that this service's user can "
                                  "read it)")


class BackoffConfig(Strict):
    """Full-jitter exponential back-off. The 1 s cap keeps recovery after a broker restart
    short (issue 3: backlog drained within 2 s of the broker's return); jitter spreads
    thousands of gateways over that window (1,000 gateways: ~1,000 connects/s at most)."""

    initial_s: float = Field(default=0.2, gt=0, le=60)
    max_s: float = Field(default=1.0, gt=0, le=3600)


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
    publish_timeout_s: float = Field(default=5.0, gt=0, le=600)
    reconnect: BackoffConfig = BackoffConfig()


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


class StatusPageConfig(Strict):
    """The LAN status page (docs/status.md): overview open on the LAN, sensitive parts
    (camera snapshots) behind `credential`; without one they are not served at all."""

    enabled: bool = True
    listen: str = Field(default="0.0.0.0:8080", pattern=r"^[^:\s]+:\d{1,5}$",
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
    """Chatter control (edge_agent.chatter): an alarm instance (a rule of a device, a zone
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
    devices: list[DeviceConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_devices(self) -> GatewayConfig:
        seen: set[str] = set()
        for dev in self.devices:
            if dev.id in seen:
                raise ValueError(f"device id {dev.id!r} is used twice")
            seen.add(dev.id)
        return self
