"""ONVIF cameras on onvif-zeep-async: events, snapshots and video health.

Pure parts: `topics` (ONVIF topic -> catalog type table), `notifications` (PullMessages
replies -> notifications), `options` (the device entry), `errors`, `xmlsafe`,
`wsdiscovery`, `worker_proto` (the agent <-> worker frames). Runtime: `host`
(`CameraHost`, what the agent runs: cameras in supervised worker processes),
`camera_process` (a worker's main), and inside a worker: `client` (the library, with
precise errors and clock-skew correction), `events` (PullPoint subscription: pull, renew,
re-create, liveness), `alarms` (raise/clear and snapshots), `snapshots` (the on-disk
ring), `driver` (`OnvifDriver`, the cameras of one process), `discovery` (`edge-agent
discover cameras`) and the OpenCV video health (`video_*`). `simulator/` is an ONVIF
camera for tests and the demo. See README.md in this folder.

Importing this package loads neither the ONVIF client (zeep, lxml, aiohttp) nor OpenCV:
only the worker processes do. Imports `edge_agent.sdk` and `edge_agent.contract` only.
"""

from collections.abc import Sequence

from edge_agent.sdk.api import DriverSpec
from edge_agent.sdk.config import DeviceConfig

from .host import CameraHost
from .options import OnvifCamera


def _same_process_settings(devices: Sequence[DeviceConfig]) -> list[tuple[int, str]]:
    """`process:` is gateway-wide: every camera must carry the first one's (or none)."""
    cams = [d for d in devices if isinstance(d, OnvifCamera)]
    return [(i, "`process:` differs from the first camera's; the worker settings apply to "
                "all cameras, give the same block (or none) everywhere")
            for i, d in enumerate(devices)
            if isinstance(d, OnvifCamera) and cams and d.process != cams[0].process]


DRIVER = DriverSpec(name="onvif", options=OnvifCamera, build=CameraHost,
                    summary="ONVIF cameras: PullPoint events, snapshots, video health",
                    check_devices=_same_process_settings)

__all__ = ["DRIVER", "CameraHost", "OnvifCamera"]
