"""The test suite: behaviour against real peers (Mosquitto, pymodbus, socat ptys, an RTSP
server, Chromium) that the tests start on 127.0.0.1 and random ports, never on any other
address. Tests check behaviour and ordering, not speed: a timeout only bounds a wait, and
how fast something is belongs to `bench/` (docs/benchmarks.md). A test skips only when a
peer is missing (`tests.peers.require_binary`), and fails instead under CI=true. CI runs
as root: a check that needs an unprivileged process runs in `tests.unprivileged`'s forked
child, so it runs as root and as a normal user alike. Tests may import anything.
"""
