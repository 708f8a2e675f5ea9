"""A local RTSP H.264 camera for tests and benches: gst-rtsp-server through python3-gi.

Run with Debian's interpreter (`/usr/bin/python3`, which has `gi`), not the venv:

    /usr/bin/python3 tests/rtsp_server.py --port 8554 [--path /stream] [--fps 15]
        [--width 640 --height 360] [--mounts 1]

Serves `rtsp://127.0.0.1:PORT/PATH` (and `PATH1`... with `--mounts N`, each its own
encoder) from `videotestsrc` (SMPTE bars scrolling, so frames differ) through
`x264enc tune=zerolatency ! rtph264pay`, bound to 127.0.0.1 only. Prints `ready` on
stdout once listening. Reads commands on stdin, one per line, for every mount:
`pattern black|white|smpte|snow` switches the picture. EOF on stdin stops it.
"""

from __future__ import annotations

import argparse
import sys
import threading

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

PATTERNS = {"smpte": 0, "snow": 1, "black": 2, "white": 3}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/stream")
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--mounts", type=int, default=1)
    args = ap.parse_args()
    Gst.init(None)
    sources: list = []

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    launch = (f"( videotestsrc name=src is-live=true pattern=smpte horizontal-speed=3 "
              f"! video/x-raw,width={args.width},height={args.height},framerate={args.fps}/1 "
              f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.fps * 2} "
              f"bitrate=800 ! rtph264pay name=pay0 pt=96 )")

    def configured(_factory: object, media: GstRtspServer.RTSPMedia) -> None:
        src = media.get_element().get_by_name("src")
        if src is not None:
            sources.append(src)

    for i in range(args.mounts):
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch)
        factory.set_shared(True)
        factory.connect("media-configure", configured)
        path = args.path if i == 0 else f"{args.path}{i}"
        server.get_mount_points().add_factory(path, factory)
    if server.attach(None) == 0:
        sys.stderr.write(f"cannot listen on 127.0.0.1:{args.port}\n")
        sys.exit(2)
    loop = GLib.MainLoop()

    def commands() -> None:
        for line in sys.stdin:
            words = line.split()
            if len(words) == 2 and words[0] == "pattern" and words[1] in PATTERNS:
                value = PATTERNS[words[1]]
                GLib.idle_add(lambda v=value: [s.set_property("pattern", v) for s in sources]
                              and False)
        GLib.idle_add(loop.quit)

    threading.Thread(target=commands, daemon=True).start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    loop.run()


if __name__ == "__main__":
    main()
