"""Value types every settings file shares (gateway, collector, gateways registry).

Secrets are never inline: a secret is given as `<name>: {file: PATH}` (a file holding
it) or `<name>: {env: NAME}` (an environment variable) and read by `SecretRef.reveal()`
only where it is used. Sizes (`256MiB`), admin codes written as numbers, broker URLs
without credentials, TLS files checked before OpenSSL reads them, and back-off settings.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any
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

from edge_agent.contract.settings._secret_files import (
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
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:  # "Port out of range 0-65535", "Invalid IPv6 URL"
        raise ValueError(f"expected mqtt://host:port or mqtts://host:port ({exc})") from None
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError("expected mqtt://host:port or mqtts://host:port")
    if parts.username or parts.password:
        raise ValueError("put no credentials in the URL; use username and password: {file: ...}")
    if port == 0:
        raise ValueError("port 0 is not a port to connect to (1-65535)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("expected mqtt://host:port or mqtts://host:port, nothing after the port")
    return value


_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


def host_problem(host: str) -> str:
    """What is wrong with `host` as a device's address (an IP address or a DNS name, no
    scheme, path, credentials or port), or "" when nothing is."""
    if "://" in host or "/" in host:
        return f"`{host}` looks like a URL; give only the address, e.g. 192.168.10.31"
    if "@" in host:
        return "put no credentials in `host`; use username and password: {file: ...}"
    candidate = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(candidate)
        return ""
    except ValueError:
        pass
    if ":" in host:
        return f"`{host}` holds a port; write the port as `port:`"
    if not _HOSTNAME.match(host) or host.replace(".", "").isdigit():
        return f"`{host}` is not an IP address or a DNS name"
    return ""


#: a name a service's environment can hold (systemd's Environment= takes no other)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")


def _listen_port(value: str) -> str:
    if not 0 <= int(value.rsplit(":", 1)[1]) <= 65535:  # 0: the system picks one (tests)
        raise ValueError("the port must be 1-65535")
    return value


ByteSize = Annotated[int, BeforeValidator(_parse_size), Field(gt=0)]
BrokerUrl = Annotated[str, AfterValidator(_broker_url)]
#: `host:port` a server listens on
ListenAddress = Annotated[str, Field(pattern=r"^[^:\s]+:\d{1,5}$"), AfterValidator(_listen_port)]
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
        if self.env is not None and not _ENV_NAME.match(self.env):
            raise ValueError("`env` is not an environment variable name (letters, digits and "
                             "_, not starting with a digit), e.g. EDGE_MQTT_PASSWORD")
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
