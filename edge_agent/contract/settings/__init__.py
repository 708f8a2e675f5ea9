"""Settings files as both sides read them: strict YAML -> pydantic, every mistake at once.

Owns the loader (`loader`: YAML 1.2 scalars only, duplicate keys, tags, aliases, depth
and size caps, each issue as `FILE:LINE:COL: key: message (hint)`), the checks of the
secret and TLS files a config names (never reading more than a small cap), and the
value types every config shares (`types`: `SecretRef`, `TlsConfig`, `ByteSize`, ...).
The gateway config (`edge_agent.config`), the collector config and the gateways
registry are built from it. Imports nothing of the agent outside `edge_agent.contract`.
"""

from edge_agent.contract.settings._issues import KeyPath
from edge_agent.contract.settings._messages import error_issue, for_device, unknown_key
from edge_agent.contract.settings._messages import validate as validate_part
from edge_agent.contract.settings._model_paths import field_names
from edge_agent.contract.settings.loader import (
    MAX_FILE_BYTES,
    ConfigError,
    ConfigIssue,
    Document,
    check_model_secrets,
    load_model,
    raise_issues,
    read_yaml,
)
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
    host_problem,
)

__all__ = [
    "MAX_FILE_BYTES", "SEGMENT", "AdminCode", "BackoffConfig", "BrokerUrl", "ByteSize",
    "ConfigError", "ConfigIssue", "Document", "KeyPath", "ListenAddress", "SecretError",
    "SecretRef", "Strict", "TlsConfig", "check_model_secrets", "error_issue", "field_names",
    "for_device", "host_problem", "load_model", "raise_issues", "read_yaml", "unknown_key",
    "validate_part",
]
