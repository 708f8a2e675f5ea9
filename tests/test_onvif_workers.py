"""Cameras in worker processes (drivers/onvif/host.py): events flow through the framed
socket, a worker that aborts or wedges is restarted (with `camera.video_worker_restarted`)
and goes on with its cameras' open alarms, the other workers and the agent never notice;
the agent process loads neither OpenCV nor the ONVIF client; the frames are parsed
defensively."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from drivers.onvif.host import CameraHost, WorkerGroup, exit_reason, plan_groups, worker_env
from drivers.onvif.options import OnvifCamera, ProcessOptions
from drivers.onvif.simulator import OnvifSimulator
from drivers.onvif.template_client import WorkerTemplate
from drivers.onvif.worker_proto import (
    FROM_WORKER,
    MAX_FRAME,
    ProtocolError,
    decode_body,
    encode,
    header_length,
)
from edge_agent.config.models import SnapshotsConfig
from edge_agent.sdk.api import DeviceState, OpenAlarm
from edge_agent.sdk.testing import RecordingSink, running
from tests.onvif_sim import camera, data_of, wait_for

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent
FAST = {"heartbeat_s": 0.2, "heartbeat_timeout_s": 2, "restart_initial_s": 0.1,
        "restart_max_s": 0.5}


def host(cams: list[OnvifCamera], sink: RecordingSink, tmp: Path, **kw: Any) -> CameraHost:
    return CameraHost(cams, sink, snapshots=SnapshotsConfig(dir=tmp / "snapshots"), **kw)


def restarted(sink: RecordingSink, device: str) -> list[dict[str, Any]]:
    return [e.data for e in sink.of("camera.video_worker_restarted") if e.subject == device]


def parent_of(pid: int) -> int:
    # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so after ")"
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    return int(stat.rpartition(")")[2].split()[1])


def maps_of(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text(encoding="ascii", errors="replace")


def environ_of(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


def alive(pid: int) -> bool:
    """Running (a zombie left to an init that does not reap, as in a container, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


async def test_events_and_video_health_flow_from_the_worker(sim: OnvifSimulator,
                                                            tmp_path: Path) -> None:
    sink = RecordingSink()
    cam = camera(sim, tmp_path / "pw", snapshots={"enabled": False}, process=FAST,
                 video={"enabled": True, "sample_fps": 5, "health_interval_s": 1})
    drv = host([cam], sink, tmp_path)
    async with running(drv):
        await wait_for(lambda: sink.of("camera.health"), 40, "video health")
        await wait_for(lambda: sim.subscriptions.pulls, what="the first pull")
        sim.tamper(True)
        await wait_for(lambda: sink.of("camera.tamper"), what="tamper")
        worker = drv.groups[0]
        assert worker.pid is not None and worker.rss_kib > 0
        pid = worker.pid
        os.kill(pid, signal.SIGTERM)  # a service stop signals the whole cgroup
        beats = worker.last_heartbeat
        await wait_for(lambda: worker.last_heartbeat > beats + 0.5, what="heartbeats go on")
        assert worker.pid == pid and worker.restarts == 0
    health = data_of(sink, "camera.health")[0]
    assert health["width"] > 0 and health["fps"] >= 0
    assert data_of(sink, "camera.tamper")[0]["state"] == "raised"
    assert sink.current["cam-1"] is DeviceState.ONLINE and sink.invalid == []
    assert restarted(sink, "cam-1") == []


async def test_an_aborting_worker_is_restarted_alone_and_keeps_its_alarm_ids(
        sim: OnvifSimulator, tmp_path: Path) -> None:
    """Worker 0 (cam-1) aborts (a decoder segfault would do the same) after its tamper
    alarm was raised; worker 1 (cam-2) is untouched; the new worker 0 clears the tamper
    under the first raise's id, without raising it again."""
    sink = RecordingSink()
    process = {**FAST, "cameras_per_worker": 1}
    cams = [camera(sim, tmp_path / "pw", device=d, snapshots={"enabled": False},
                   process=process) for d in ("cam-1", "cam-2")]
    trigger = tmp_path / "abort-now"
    drv = host(cams, sink, tmp_path, fault="abort", fault_after_s=0, fault_file=trigger)
    async with running(drv):
        await wait_for(lambda: sim.subscriptions.pulls, what="the first pull")
        sim.tamper(True)
        await wait_for(lambda: len(sink.of("camera.tamper")) >= 2, what="tamper on both")
        trigger.touch()
        await wait_for(lambda: restarted(sink, "cam-1"), 30, "the restart")
        tampers = len(sink.of("camera.tamper"))
        sim.tamper(False)
        await wait_for(lambda: len(sink.of("camera.tamper")) >= tampers + 2, 30,
                       "both cleared")
        assert drv.groups[1].restarts == 0
    (event,) = restarted(sink, "cam-1")
    # asyncio reports 255 when its child watcher could not read the status (seen once in
    # ~10 runs under load); any other reason would be a different death
    assert event["reason"] in ("killed by SIGABRT", "exited with code 255"), event
    assert event["restarts"] == 1
    assert event["worker"] == 0 and event["cameras"] == 1
    assert restarted(sink, "cam-2") == []
    one = [e.data for e in sink.of("camera.tamper") if e.subject == "cam-1"]
    assert [d["state"] for d in one] == ["raised", "cleared"], one
    assert one[0]["alarm_id"] == one[1]["alarm_id"]


@pytest.mark.parametrize("template", [False, True], ids=["own-interpreter", "forked"])
async def test_a_wedged_worker_is_killed_after_the_heartbeat_timeout(
        sim: OnvifSimulator, tmp_path: Path, template: bool) -> None:
    """Forked, the kill goes through the template (only it knows the pid is unreaped)."""
    sink = RecordingSink()
    cam = camera(sim, tmp_path / "pw", snapshots={"enabled": False}, process=FAST)
    drv = host([cam], sink, tmp_path, fault="hang", fault_after_s=0.5, template=template)
    async with running(drv):
        # the first worker's pid before it is replaced (read after the restart event, it
        # could already be the new worker's: seen once in CI)
        first_pid = await wait_for(lambda: drv.groups[0].pid, 30, "the first worker")
        await wait_for(lambda: restarted(sink, "cam-1"), 30, "the restart")
        await wait_for(lambda: drv.groups[0].pid not in (0, None, first_pid), 30,
                       "a new worker")
        pulls = sim.subscriptions.pulls
        await wait_for(lambda: sim.subscriptions.pulls > pulls, what="pulls again")
    (event, *_) = restarted(sink, "cam-1")
    assert event["reason"] == "no heartbeat for 2 s (wedged)"


async def test_a_worker_sending_garbage_is_restarted(sim: OnvifSimulator,
                                                    tmp_path: Path) -> None:
    sink = RecordingSink()
    cam = camera(sim, tmp_path / "pw", snapshots={"enabled": False}, process=FAST)
    async with running(host([cam], sink, tmp_path, fault="garbage", fault_after_s=0.5)):
        await wait_for(lambda: restarted(sink, "cam-1"), 30, "the restart")
    reason = restarted(sink, "cam-1")[0]["reason"]
    assert reason == "protocol error: frame is not UTF-8 JSON (JSONDecodeError)", reason


async def test_workers_are_forked_from_one_preloaded_template(sim: OnvifSimulator,
                                                              tmp_path: Path) -> None:
    """Both workers are children of the one template (not of the agent), which holds
    OpenCV before any worker asked for it; closing the host ends the template too."""
    sink = RecordingSink()
    process = {**FAST, "cameras_per_worker": 1}
    cams = [camera(sim, tmp_path / "pw", device=d, snapshots={"enabled": False},
                   process=process) for d in ("cam-1", "cam-2")]
    drv = host(cams, sink, tmp_path)
    async with running(drv):
        await wait_for(lambda: all(g.pid for g in drv.groups), 30, "both workers")
        assert drv.template is not None and drv.template.pid is not None
        template = drv.template.pid
        assert parent_of(template) == os.getpid()
        assert [parent_of(g.pid) for g in drv.groups if g.pid] == [template, template]
        assert maps_of(template).count("cv2"), "the template did not preload OpenCV"
        await wait_for(lambda: all(sink.current.get(d) is DeviceState.ONLINE
                                   for d in ("cam-1", "cam-2")), 30, "both cameras online")
    assert not alive(template)
    assert restarted(sink, "cam-1") == restarted(sink, "cam-2") == []


async def test_a_killed_template_is_recreated_and_the_cameras_come_back(
        sim: OnvifSimulator, tmp_path: Path) -> None:
    """Killing the template takes its workers with it (their exit status died with it):
    each is reported, and restarted from a new template; the cameras work again."""
    sink = RecordingSink()
    cam = camera(sim, tmp_path / "pw", snapshots={"enabled": False}, process=FAST)
    drv = host([cam], sink, tmp_path, template=True)
    async with running(drv):
        worker = await wait_for(lambda: drv.groups[0].pid, 30, "the first worker")
        await wait_for(lambda: sim.subscriptions.pulls, what="the first pull")
        assert drv.template is not None and drv.template.pid is not None
        first = drv.template.pid
        os.kill(first, signal.SIGKILL)
        await wait_for(lambda: restarted(sink, "cam-1"), 30, "the restart")
        await wait_for(lambda: drv.groups[0].pid not in (None, worker), 30, "a new worker")
        new_worker = drv.groups[0].pid
        assert drv.template is not None and drv.template.pid not in (None, first)
        assert drv.template.starts == 2 and new_worker is not None
        assert parent_of(new_worker) == drv.template.pid
        assert not alive(worker), "the old worker outlived its template"
        pulls = sim.subscriptions.pulls
        await wait_for(lambda: sim.subscriptions.pulls > pulls, 30, "pulls again")
    (event,) = restarted(sink, "cam-1")
    assert event["reason"] == "the worker template killed by SIGKILL", event


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
async def test_a_forked_worker_killed_by_a_signal_is_reported_by_its_name(
        sim: OnvifSimulator, tmp_path: Path, sig: signal.Signals) -> None:
    sink = RecordingSink()
    cam = camera(sim, tmp_path / "pw", snapshots={"enabled": False}, process=FAST)
    drv = host([cam], sink, tmp_path, template=True)
    async with running(drv):
        worker = await wait_for(lambda: drv.groups[0].pid, 30, "the first worker")
        await wait_for(lambda: sim.subscriptions.pulls, what="the first pull")
        template = drv.template.pid if drv.template else None
        os.kill(worker, sig)
        await wait_for(lambda: restarted(sink, "cam-1"), 30, "the restart")
        await wait_for(lambda: drv.groups[0].pid not in (None, worker), 30, "a new worker")
        assert drv.template is not None and drv.template.pid == template  # the same one
    (event,) = restarted(sink, "cam-1")
    assert event["reason"] == f"killed by {sig.name}", event


async def test_a_template_that_cannot_load_falls_back_to_one_interpreter_per_worker(
        sim: OnvifSimulator, tmp_path: Path) -> None:
    sink = RecordingSink()
    cam = camera(sim, tmp_path / "pw", snapshots={"enabled": False}, process=FAST)
    broken = WorkerTemplate(worker_env(), extra=["drivers.onvif.no_such_module"])
    drv = host([cam], sink, tmp_path, template=broken)
    async with running(drv):
        worker = await wait_for(lambda: drv.groups[0].pid, 30, "a worker")
        assert drv.template is None and broken.starts == 1
        assert parent_of(worker) == os.getpid()
        await wait_for(lambda: sim.subscriptions.pulls, 30, "the first pull")
    assert restarted(sink, "cam-1") == []


@pytest.mark.parametrize("frame", [
    encode({"t": "exec", "cmd": "rm -rf /"}),
    (MAX_FRAME + 1).to_bytes(4, "big") + b"{}",
    b"\x00\x00\x00\x03{}",
    encode({"t": "start", "cameras": [{"id": "c", "config": "{\"host\": 1}"}]}),
])
def test_a_worker_handed_a_bad_start_exits_without_running_anything(frame: bytes) -> None:
    import socket

    ours, theirs = socket.socketpair()
    code = "from drivers.onvif.camera_process import main; main()"
    with ours:
        proc = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno())], cwd=ROOT,
                                pass_fds=(theirs.fileno(),), stderr=subprocess.PIPE, text=True)
        theirs.close()
        ours.sendall(frame)
        ours.shutdown(socket.SHUT_WR)  # a short frame then ends: the worker must not wait
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    assert "camera_worker_bad_start" in err and "camera_worker_started" not in err


async def test_a_forked_worker_handed_a_bad_start_exits_3_as_reported_by_the_template(
) -> None:
    """The exit code crosses from the template (which reaps) to the agent's side."""
    import socket

    template = WorkerTemplate(worker_env())
    ours, theirs = socket.socketpair()
    try:
        worker = await template.spawn(theirs)
        theirs.close()
        assert template.pid is not None and parent_of(worker.pid) == template.pid
        ours.sendall(b"\x00\x00\x00\x03{}")  # a short frame: the worker must not wait
        ours.shutdown(socket.SHUT_WR)
        assert await worker.wait() == 3 and worker.template_died == ""
    finally:
        ours.close()
        await template.close()
    assert template.pid is not None and not alive(template.pid)


async def test_the_template_has_one_thread_when_it_forks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy and OpenCV each load an OpenBLAS that starts a thread per further core at
    import; a fork copies only the forking thread, so a lock one of them held would stay
    held in every worker. The template runs without that pool whatever the agent's
    environment asks, and so does a worker started on its own."""
    import socket

    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    env = worker_env()
    assert env["OPENBLAS_NUM_THREADS"] == env["OMP_NUM_THREADS"] == "1"
    template = WorkerTemplate({**os.environ})  # not worker_env(): the template sees to it
    ours, theirs = socket.socketpair()
    try:
        worker = await template.spawn(theirs)
        theirs.close()
        assert template.pid is not None
        assert template.threads == 1  # its `ready`: counted once warm, before any fork
        assert len(os.listdir(f"/proc/{template.pid}/task")) == 1
        assert b"OPENBLAS_NUM_THREADS=1" in environ_of(worker.pid)
        ours.sendall(b"\x00\x00\x00\x03{}")  # a bad start: the worker exits 3
        ours.shutdown(socket.SHUT_WR)
        assert await worker.wait() == 3
    finally:
        ours.close()
        await template.close()


async def test_a_stalled_stream_is_video_loss_in_the_worker_not_a_restart(
        sim: OnvifSimulator, tmp_path: Path) -> None:
    sim.switches.stall_stream = True
    sink = RecordingSink()
    cam = camera(sim, tmp_path / "pw", snapshots={"enabled": False}, process=FAST,
                 video={"enabled": True, "sample_fps": 5, "open_timeout_s": 1,
                        "read_timeout_s": 1, "no_signal_after_s": 0,
                        "reconnect_initial_s": 0.2, "reconnect_max_s": 0.5})
    async with running(host([cam], sink, tmp_path)):
        await wait_for(lambda: sink.of("camera.video_loss"), 40, "video loss")
    assert data_of(sink, "camera.video_loss")[0]["state"] == "raised"
    assert restarted(sink, "cam-1") == []


def test_the_agent_side_loads_neither_opencv_nor_the_onvif_client() -> None:
    # rich and greenlet: structlog's optional extras, installed beside the tests
    # (edge_agent._lean_imports hides them); cryptography: only `edge-agent drivers` needs it
    code = ("import sys, drivers.onvif, edge_agent.agent\n"
            "print([m for m in ('cv2', 'numpy', 'zeep', 'lxml', 'aiohttp', 'onvif', 'rich', "
            "'pygments', 'greenlet', 'cryptography') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out.strip().replace("'", '"')) == []


def test_groups_and_settings(tmp_path: Path) -> None:
    sim = OnvifSimulator()
    cams = [camera(sim, tmp_path / "pw", device=f"cam-{i}") for i in range(17)]
    assert [len(g) for g in plan_groups(cams, 8)] == [8, 8, 1]
    # one worker: its own interpreter (a template would cost more than it saves)
    assert CameraHost(cams[:8], RecordingSink()).template is None
    assert CameraHost(cams[:9], RecordingSink()).template is not None
    assert CameraHost(cams[:9], RecordingSink(), template=False).template is None
    assert exit_reason(-6) == "killed by SIGABRT" and exit_reason(3) == "exited with code 3"
    with pytest.raises(ValueError, match="heartbeat_timeout_s"):
        camera(sim, tmp_path / "pw", process={"heartbeat_s": 5, "heartbeat_timeout_s": 6})
    from drivers.onvif import DRIVER

    odd = camera(sim, tmp_path / "pw", device="odd", process={"cameras_per_worker": 2})
    assert [i for i, _ in DRIVER.check_devices([*cams[:2], odd])] == [2]


def test_frames_are_parsed_defensively() -> None:
    frame = encode({"t": "hb", "rss_kib": 1})
    assert header_length(frame[:4]) == len(frame) - 4
    assert decode_body(frame[4:], FROM_WORKER) == {"t": "hb", "rss_kib": 1}
    for body in (b"\xff\xfe", b"not json", b"[1]", b'{"t": "exec"}', b'{"t": 1}'):
        with pytest.raises(ProtocolError):
            decode_body(body, FROM_WORKER)
    with pytest.raises(ProtocolError, match="announced"):
        header_length((MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(ProtocolError):
        encode({"t": "emit", "data": "x" * (MAX_FRAME + 1)})


def test_a_message_for_a_foreign_camera_or_with_bad_fields_is_refused(tmp_path: Path) -> None:
    sim = OnvifSimulator()
    sink = RecordingSink()
    cam = camera(sim, tmp_path / "pw")
    drv = host([cam], sink, tmp_path)
    group: WorkerGroup = drv.groups[0]
    for msg in ({"t": "emit", "dev": "cam-9", "type": "camera.tamper", "data": {}, "at": 1.0},
                {"t": "emit", "dev": "cam-1", "type": "camera.tamper", "data": [], "at": 1.0},
                {"t": "emit", "dev": "cam-1", "type": "camera.tamper", "data": {},
                 "at": 1.0, "sev": "fatal"},
                {"t": "state", "dev": "cam-1", "state": "exploded", "reason": ""},
                {"t": "hb", "rss_kib": "lots"}):
        with pytest.raises(ProtocolError):
            drv._handle(group, msg)
    drv._handle(group, {"t": "emit", "dev": "cam-1", "type": "camera.tamper", "at": 1.0,
                        "data": {"state": "raised", "alarm_id": "a1", "reason": "x"}})
    assert drv.open["cam-1"] == {"a1": OpenAlarm("camera.tamper", "a1", {"reason": "x"})}
    assert [e.type for e in sink.events] == ["camera.tamper"]
    assert ProcessOptions().cameras_per_worker == 8


async def test_cameras_connecting_together_load_each_wsdl_once() -> None:
    """Each camera parsing the same WSDLs at once cost ~10 MiB per camera in a worker."""
    import asyncio

    import onvif.client as lib

    from drivers.onvif.wsdl_once import share_wsdl_loads

    cache: dict[str, object] = {}
    loads: list[str] = []

    async def load(url: str) -> object:  # the library's: cached once loaded
        if url in cache:
            return cache[url]
        loads.append(url)
        await asyncio.sleep(0.05)
        cache[url] = object()
        return cache[url]

    original = lib._cached_document
    lib._cached_document = load
    try:
        assert share_wsdl_loads() and share_wsdl_loads()
        docs = await asyncio.gather(*(lib._cached_document(u) for u in ["a", "b"] * 5))
    finally:
        lib._cached_document = original
    assert sorted(loads) == ["a", "b"] and len({id(d) for d in docs}) == 2


@pytest.mark.parametrize("forked", [False, True])
async def test_workers_log_at_the_agents_level(sim: OnvifSimulator, tmp_path: Path,
                                               capfd: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch,
                                               forked: bool) -> None:
    """`log_level: warning` in the gateway YAML quiets the camera workers (and their
    template) too: they printed info lines whatever the agent's level was."""
    from edge_agent.contract import logs

    monkeypatch.delenv("EDGE_AGENT_WORKER_LOG_LEVEL", raising=False)
    logs.configure("warning")
    assert worker_env()["EDGE_AGENT_WORKER_LOG_LEVEL"] == "warning"
    sink = RecordingSink()
    cam = camera(sim, tmp_path / "pw", snapshots={"enabled": False}, process=FAST)
    async with running(host([cam], sink, tmp_path, template=forked)):
        await wait_for(lambda: sim.subscriptions.pulls, what="the first pull")
        await wait_for(lambda: ("cam-1", DeviceState.ONLINE, "") in sink.states, what="online")
    err = capfd.readouterr().err
    assert '"camera_connected"' not in err and '"camera_worker_started"' not in err, err[-2000:]
    logs.configure("info")
    assert worker_env()["EDGE_AGENT_WORKER_LOG_LEVEL"] == "info"
