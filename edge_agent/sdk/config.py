"""Configuration as drivers use it: the base of a device's options, and the loader."""

from edge_agent.config.loader import load_gateway_config
from edge_agent.config.models import (
    ChatterConfig,
    ChatterOverride,
    DeviceConfig,
    SnapshotsConfig,
)
from edge_agent.config.profile_dirs import profile_dirs, using_profile_dirs
from edge_agent.contract.settings import (
    SEGMENT,
    ConfigError,
    ConfigIssue,
    SecretError,
    SecretRef,
    Strict,
    host_problem,
    load_model,
)

__all__ = ["SEGMENT", "ChatterConfig", "ChatterOverride", "ConfigError", "ConfigIssue",
           "DeviceConfig", "SecretError", "SecretRef", "SnapshotsConfig", "Strict",
           "host_problem", "load_gateway_config", "load_model", "profile_dirs",
           "using_profile_dirs"]
