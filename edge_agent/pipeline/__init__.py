"""Pipeline: from what drivers report to events committed in the outbox.

Owns the step between the drivers and the outbox: minting envelope-v1 events
(`core.Pipeline`, the drivers' `EventSink`), device online/offline transitions, the
in-memory queue before the commit (`pending`: alarms never dropped, the rest counted in
`dropped`), and the alarms open across restarts (`open_alarms`). Imports
`edge_agent.contract`, `edge_agent.outbox` and the driver SDK's types; nothing of the
uplink or the status page (they subscribe through callbacks).
"""

from edge_agent.pipeline.core import MAX_PENDING, DeviceStatus, Pipeline, transition_event
from edge_agent.pipeline.open_alarms import MAX_OPEN, OpenAlarm, OpenAlarms

__all__ = ["MAX_OPEN", "MAX_PENDING", "DeviceStatus", "OpenAlarm", "OpenAlarms", "Pipeline",
           "transition_event"]
