"""The ONVIF driver against a camera that answers badly (the audit's hostile camera), over
HTTP on 127.0.0.1 with the real onvif-zeep-async client: pulls answered at once or with
the wrong body, huge replies, HTML error pages."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import structlog

from drivers.onvif.client import CameraClient
from drivers.onvif.errors import AuthError, BadReply, NotSupported
from drivers.onvif.events import EventChannel
from drivers.onvif.notifications import parse_messages
from drivers.onvif.options import EventOptions
from drivers.onvif.reply_guard import MAX_REPLY_BYTES
from drivers.onvif.simulator import MOTION_TOPIC, OnvifSimulator
from drivers.onvif.topics import Notification
from edge_agent.sdk.api import DeviceState
from edge_agent.sdk.testing import RecordingSink, running
from tests.onvif_sim import camera, data_of, in_process, wait_for

pytestmark = pytest.mark.timeout(60)


def _client(sim: OnvifSimulator, password: str = "sim-password") -> CameraClient:
    return CameraClient("cam-1", "127.0.0.1", sim.port, "admin", password, timeout_s=5)


async def test_a_camera_that_ignores_the_pull_timeout_is_paced_and_named(
        sim: OnvifSimulator) -> None:
    sim.switches.eager_pulls = True  # every PullMessages answers empty, at once
    client = _client(sim)
    await client.connect()
    got: list[Notification] = []

    async def on_messages(messages: list[Notification]) -> None:
        got.extend(messages)

    channel = EventChannel(client, EventOptions(pull_timeout_s=10), on_messages,
                           lambda: None, lambda _reason: None)
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(channel.run())
        await wait_for(lambda: channel.pulls >= 1, what="the first pull")
        await asyncio.sleep(2.5)
        sim.motion(True)  # still delivered, on the next paced pull
        await wait_for(lambda: got, what="motion")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await client.close()
    # unpaced, the old loop pulled hundreds of times a second
    assert channel.pulls <= 6, channel.pulls
    early = [e for e in logs if e["event"] == "pull_answered_early"]
    assert len(early) == 1 and early[0]["device"] == "cam-1", early
    assert early[0]["asked_timeout_s"] == 10 and channel.early_pulls >= 2


@pytest.mark.parametrize("body", [
    "<tds:PullMessagesResponse/>",
    "<tds:GetDeviceInformationResponse><tds:Manufacturer>x</tds:Manufacturer>"
    "</tds:GetDeviceInformationResponse>",
])
async def test_a_pull_reply_that_is_no_pull_messages_response_is_a_bad_reply(
        sim: OnvifSimulator, tmp_path: Path, body: str) -> None:
    sim.switches.pull_body = body
    client = _client(sim)
    await client.connect()
    await client.create_pullpoint(60)
    with pytest.raises(BadReply) as err:
        await client.pull(1, 10)
    await client.close()
    assert err.value.operation == "PullMessages" and "PullMessagesResponse" in err.value.detail
    sink = RecordingSink()
    async with running(in_process([camera(sim, tmp_path / "pw")], sink, tmp_path)):
        await wait_for(lambda: sink.poll_errors, what="the pull error")
    device, reason = sink.poll_errors[0]
    assert device == "cam-1" and reason.startswith("PullMessages:"), reason
    assert "PullMessagesResponse" in reason


async def test_a_huge_soap_reply_is_refused_before_it_is_read_whole(
        sim: OnvifSimulator) -> None:
    sim.switches.padded["GetDeviceInformation"] = 8 * MAX_REPLY_BYTES
    client = _client(sim)
    await client.connect()
    with pytest.raises(BadReply) as err:
        await client.device_info()
    sim.switches.padded["GetDeviceInformation"] = MAX_REPLY_BYTES // 2  # under the cap
    assert (await client.device_info()).model == "sim-camera"
    await client.close()
    assert err.value.operation == "GetDeviceInformation"
    assert f"more than {MAX_REPLY_BYTES} bytes" in err.value.detail, err.value.detail


@pytest.mark.parametrize("doctype", [True, False])
@pytest.mark.parametrize("status", [502, 503])
async def test_an_html_error_page_is_reported_by_its_http_status(
        sim: OnvifSimulator, tmp_path: Path, status: int, doctype: bool) -> None:
    sim.switches.html_status, sim.switches.html_doctype = status, doctype
    client = _client(sim)
    with pytest.raises(BadReply) as err:
        await client.connect()
    await client.close()
    assert err.value.detail.startswith(f"HTTP {status}: the camera is busy"), err.value.detail
    sink = RecordingSink()
    async with running(in_process([camera(sim, tmp_path / "pw")], sink, tmp_path)):
        await wait_for(lambda: sink.of("device.offline"), what="down")
        sim.switches.html_status = 0
        await wait_for(lambda: sink.current["cam-1"] is DeviceState.ONLINE, what="online")
    assert f"HTTP {status}" in data_of(sink, "device.offline")[0]["reason"]


async def test_an_html_401_page_is_an_auth_error(sim: OnvifSimulator) -> None:
    sim.switches.html_status, sim.switches.html_doctype = 401, True
    client = _client(sim)
    with pytest.raises(AuthError) as err:
        await client.connect()
    await client.close()
    assert "HTTP 401" in err.value.detail and "username and password" in err.value.hint


async def test_a_clock_reply_without_utc_time_names_get_system_date_and_time(
        sim: OnvifSimulator) -> None:
    sim.switches.no_utc_time = True
    client = _client(sim)
    with pytest.raises(BadReply) as err:
        await client.connect()
    await client.close()
    assert err.value.operation == "GetSystemDateAndTime", err.value
    assert "UTCDateTime" in err.value.detail and "adjust_time: false" in err.value.hint


async def test_a_digest_challenge_not_understood_is_no_unreachable_camera(
        sim: OnvifSimulator) -> None:
    sim.switches.digest_algorithm = "FOO"
    client = _client(sim)
    await client.connect()
    with pytest.raises(BadReply) as err:
        await client.snapshot("main", 10**6, 5)
    await client.close()
    assert err.value.operation == "GetSnapshot" and "unreachable" not in err.value.detail
    assert "Digest challenge was not understood" in err.value.detail, err.value.detail
    assert "FOO" in err.value.detail and err.value.hint


async def test_a_camera_listing_no_media_service_is_not_supported_with_a_hint(
        sim: OnvifSimulator) -> None:
    sim.switches.no_media = True
    client = _client(sim)
    await client.connect()
    with pytest.raises(NotSupported) as err:
        await client.profiles()
    await client.close()
    assert err.value.operation == "GetProfiles" and "ONVIFError" not in err.value.detail
    assert "media" in err.value.detail and err.value.hint, err.value


async def test_control_and_bidi_characters_from_the_camera_do_not_reach_event_data(
        sim: OnvifSimulator) -> None:
    sim.fire(MOTION_TOPIC, {"IsMotion": "true"},
             {"VideoSourceConfigurationToken": "vs\rc0",
              "Rule": "R\nule\t\u202eevil\u2028x\x85y"})
    client = _client(sim)
    await client.connect()
    await client.create_pullpoint(60)
    messages = parse_messages(await client.pull(1, 10))
    await client.unsubscribe()
    await client.close()
    assert len(messages) == 1, messages
    texts = [*messages[0].source.values(), *messages[0].source.keys(), messages[0].topic]
    assert all(text.isprintable() for text in texts), texts
    assert messages[0].source["VideoSourceConfigurationToken"] == "vs c0"


async def test_several_challenges_in_one_header_are_understood(sim: OnvifSimulator) -> None:
    sim.switches.basic_snapshots = True
    sim.switches.snapshot_challenge = 'Negotiate, Basic realm="onvif-sim"'
    client = _client(sim)
    await client.connect()
    jpeg = await client.snapshot("main", 10**6, 5)
    sim.switches.snapshot_challenge = "Negotiate"
    with pytest.raises(AuthError) as err:
        await client.snapshot("main", 10**6, 5)
    await client.close()
    assert jpeg and jpeg[:2] == b"\xff\xd8"
    assert "asks for negotiate" in err.value.detail and "refused" not in err.value.detail
