"""Rules: polled point values in, catalog events out.

Owns what turns a device's raw values into events: readings with deadband and
heartbeat, alarms with hysteresis, debounce and chatter control (`chatter`), state
changes and counted records (`engine`), the specs of a profile's `events:` list
(`_spec`, `_catalog`) and credential hashing for `gate.access` (`privacy`). Pure apart
from an injected clock: no I/O. Imports `edge_agent.contract` and the config models;
drivers reach it through `edge_agent.sdk.rules`.
"""

from edge_agent.rules._catalog import DECLARED_ALARM, SENSOR_READING
from edge_agent.rules.engine import (
    AlarmRule,
    DeviceRules,
    ReadingRule,
    RecordRule,
    RuleSpec,
    StateRule,
    new_alarm_id,
    parse_rules,
    point_issues,
)

__all__ = ["DECLARED_ALARM", "SENSOR_READING", "AlarmRule", "DeviceRules", "ReadingRule",
           "RecordRule", "RuleSpec", "StateRule", "new_alarm_id", "parse_rules", "point_issues"]
