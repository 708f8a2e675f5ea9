"""The rules engine and chatter control, as drivers use them (`edge_agent.rules`)."""

from edge_agent.rules import DeviceRules, RuleSpec, new_alarm_id, parse_rules, point_issues
from edge_agent.rules.chatter import (
    ChatterGuard,
    chatter_alarm_id,
    chatter_policy,
    report_chatter,
)

__all__ = ["ChatterGuard", "DeviceRules", "RuleSpec", "chatter_alarm_id", "chatter_policy",
           "new_alarm_id", "parse_rules", "point_issues", "report_chatter"]
