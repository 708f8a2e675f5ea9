"""Gateway configuration: pydantic models and the strict YAML loader."""

from edge_agent.config.loader import ConfigError, ConfigIssue, load_gateway_config, load_model

__all__ = ["ConfigError", "ConfigIssue", "load_gateway_config", "load_model"]
