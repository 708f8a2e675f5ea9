"""An ONVIF camera simulator (aiohttp SOAP 1.2) for tests, the demo and benches.

`OnvifSimulator` serves the device, media and events services with WS-UsernameToken
checks and clock skew, PullPoint subscriptions, a Digest snapshot and an MJPEG stream;
`DiscoveryResponder` answers WS-Discovery probes on a loopback UDP port.
Run one standalone: `edge-agent simulate-camera --port 18090` (or `python -m
drivers.onvif.simulator --port 18090`; `standalone.py`).

Test and demo peer: imports nothing of the agent but `edge_agent.contract` (logging).
"""

from .app import MOTION_TOPIC, TAMPER_TOPIC, OnvifSimulator, Switches
from .discovery import DiscoveryResponder
from .soap import Fault

__all__ = ["MOTION_TOPIC", "TAMPER_TOPIC", "DiscoveryResponder", "Fault", "OnvifSimulator",
           "Switches"]
