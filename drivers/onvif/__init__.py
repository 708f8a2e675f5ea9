"""ONVIF cameras on onvif-zeep-async: events, snapshots and video health.

Pure parts: `topics` (ONVIF topic -> catalog type table), `notifications` (PullMessages
replies -> notifications), `options` (the device entry), `errors`, `xmlsafe`,
`wsdiscovery`. Runtime: `client` (the library, with precise errors and clock-skew
correction), `events` (PullPoint subscription: pull, renew, re-create, liveness),
`alarms` (raise/clear and snapshots), `snapshots` (the on-disk ring), `driver`
(`OnvifDriver`), `discovery` (`edge-agent discover cameras`) and the OpenCV video
health (`video_*`). `simulator/` is an ONVIF camera for tests and the demo.
See README.md in this folder.

Imports `edge_agent.sdk` and `edge_agent.contract` only (no other driver).
"""

from edge_agent.sdk.api import DriverSpec

from .driver import OnvifDriver
from .options import OnvifCamera

DRIVER = DriverSpec(name="onvif", options=OnvifCamera, build=OnvifDriver,
                    summary="ONVIF cameras: PullPoint events, snapshots, video health")

__all__ = ["DRIVER", "OnvifCamera", "OnvifDriver"]
