"""Gateway configuration: the models of one gateway YAML and its `devices:` list.

Owns the gateway's settings (`models`) and the validation of each device entry by its
driver's options model (`_devices`, through `edge_agent.sdk.registry`). Built on the
shared strict loader `edge_agent.contract.settings`; imports the contract and the SDK.
"""

from edge_agent.config.loader import ConfigError, ConfigIssue, load_gateway_config, load_model

__all__ = ["ConfigError", "ConfigIssue", "load_gateway_config", "load_model"]
