"""The rules engine and chatter control, as drivers use them (`edge_agent.rules`)."""

from edge_agent.contract.units import (
    ALARM_TYPE_PATTERN,
    KIND_PATTERN,
    RESERVED_KINDS,
    UNITS,
    unit_hint,
)
from edge_agent.rules import (
    DECLARED_ALARM,
    SENSOR_READING,
    DeviceRules,
    RuleSpec,
    new_alarm_id,
    parse_rules,
    point_issues,
)
from edge_agent.rules.chatter import (
    ChatterGuard,
    chatter_alarm_id,
    chatter_policy,
    report_chatter,
)

__all__ = ["ALARM_TYPE_PATTERN", "DECLARED_ALARM", "KIND_PATTERN", "RESERVED_KINDS",
           "SENSOR_READING", "UNITS", "ChatterGuard", "DeviceRules", "RuleSpec",
           "chatter_alarm_id", "chatter_policy", "new_alarm_id", "parse_rules", "point_issues",
           "report_chatter", "unit_hint"]
