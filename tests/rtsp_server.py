"""A local RTSP H.264 camera for tests and benches: gst-rtsp-server through python3-gi.

Run with Debian's interpreter (`/usr/bin/python3`, which has `gi`), not the venv:

    /usr/bin/python3 tests/rtsp_server.py --port 8554 [--path /stream] [--fps 15]
        [--width 640 --height 360] [--mounts 1]

Serves `rtsp://127.0.0.1:PORT/PATH` (and `PATH1`... with `--mounts N`, each its own
encoder) from `videotestsrc` (SMPTE bars scrolling, so frames differ) through
`x264enc tune=zerolatency ! rtph264pay`, bound to 127.0.0.1 only. Prints `ready` on
stdout once listening. Reads commands on stdin, one per line, for every mount:
`pattern black|white|smpte|snow` switches the picture. EOF on stdin stops it.
Its options are read by hand (`--name value`): Debian's interpreter has no click.

Each mount's media is shared by its clients (one encoder for all), and gst-rtsp-server
1.22 aborts the whole server (`gst_rtsp_media_get_rates: assertion failed`) when a
client's PLAY reaches a shared live media whose stream has a client but no segment
yet: several clients opening a fresh media at once (16 cameras in two workers: 2 runs
of 12 with 3 clients starting together; a bench run once opened 1 stream of 16, every
other connection refused). So before saying `ready` the server plays each mount to a
client of its own (`Keeper`, RTP over the RTSP connection, read and dropped) until RTP
flows, and keeps it playing: the media is never fresh or torn down when real clients
come, between rounds of a bench included.
"""

from __future__ import annotations

import sys
import threading
from types import SimpleNamespace

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402
from rtsp_keeper import Keeper  # noqa: E402  (beside this file: sys.path[0])

PATTERNS = {"smpte": 0, "snow": 1, "black": 2, "white": 3}
#: the options and their defaults (None: required); all but --path are integers
OPTIONS: dict[str, int | str | None] = {"port": None, "path": "/stream", "fps": 15,
                                        "width": 640, "height": 360, "mounts": 1}


def options(argv: list[str]) -> SimpleNamespace:
    """`--name value` pairs over OPTIONS; a mistake exits 2 with one line."""
    values = dict(OPTIONS)
    given = iter(argv)
    for flag in given:
        name, raw = flag.removeprefix("--"), next(given, None)
        if not flag.startswith("--") or name not in values or raw is None:
            sys.stderr.write(f"rtsp_server: {flag}: options are --NAME VALUE, NAME one of "
                             f"{', '.join(OPTIONS)}\n")
            sys.exit(2)
        if name != "path" and not raw.isdigit():
            sys.stderr.write(f"rtsp_server: {flag} takes a whole number, not {raw!r}\n")
            sys.exit(2)
        values[name] = raw if name == "path" else int(raw)
    if values["port"] is None:
        sys.stderr.write("rtsp_server: --port is required\n")
        sys.exit(2)
    return SimpleNamespace(**values)


def main() -> None:
    args = options(sys.argv[1:])
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

    def keep_playing() -> None:
        """Play every mount to a keeper, then say ready (or fail: exit 2 with why)."""
        paths = [args.path if i == 0 else f"{args.path}{i}" for i in range(args.mounts)]
        keepers = [Keeper(args.port, path) for path in paths]
        for keeper in keepers:
            keeper.start()
        for keeper in keepers:
            if not keeper.flowing.wait(30) or keeper.failed:
                sys.stderr.write(f"rtsp_server: {keeper.url} does not play: "
                                 f"{keeper.failed or 'no RTP within 30 s'}\n")
                failed.set()
                GLib.idle_add(lambda: loop.quit() and False)
                return
        sys.stdout.write("ready\n")
        sys.stdout.flush()

    failed = threading.Event()
    threading.Thread(target=keep_playing, daemon=True).start()
    loop.run()
    if failed.is_set():
        sys.exit(2)


if __name__ == "__main__":
    main()
