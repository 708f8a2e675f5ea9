"""`python -m drivers.onvif.simulator`: the same as `edge-agent simulate-camera`."""

from drivers.onvif.simulator.standalone import main

main()
