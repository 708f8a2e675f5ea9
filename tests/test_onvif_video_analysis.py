"""Pure video analysis: metrics, conditions and hysteresis on synthetic numpy frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from drivers.onvif.simulator.video import SyntheticScene
from drivers.onvif.video_analysis import (
    Condition,
    Hysteresis,
    classify,
    measure,
    motion_region,
    thumbnail,
)
from drivers.onvif.video_monitor import redact
from drivers.onvif.video_options import VideoHealthOptions

OPTS = VideoHealthOptions()
RNG = np.random.default_rng(1)


def textured(mean: float = 120, spread: float = 60) -> np.ndarray:
    """A sharp, detailed 640x360 BGR picture: blocks plus fine noise."""
    blocks = cv2.resize(RNG.normal(mean, spread, (36, 64)), (640, 360),
                        interpolation=cv2.INTER_NEAREST)
    fine = RNG.normal(0, spread / 3, (360, 640))
    grey = np.clip(blocks + fine, 0, 255).astype(np.uint8)
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)


def decode(jpeg: bytes) -> np.ndarray:
    picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None
    return picture


def plain(value: int) -> np.ndarray:
    return np.full((360, 640, 3), value, np.uint8)


def gradient(lo: int, hi: int) -> np.ndarray:
    col = np.linspace(lo, hi, 360, dtype=np.float32)[:, None].repeat(640, axis=1)
    return cv2.cvtColor(col.astype(np.uint8), cv2.COLOR_GRAY2BGR)


SCENE = textured()
CASES: list[tuple[str, np.ndarray, np.ndarray | None, set[Condition]]] = [
    ("live scene", SCENE, textured(), set()),
    ("first sample: nothing to compare", SCENE, None, set()),
    ("all black", plain(0), None, {Condition.BLACK}),
    ("nearly black with sensor noise",
     np.clip(RNG.normal(6, 3, (360, 640, 3)), 0, 255).astype(np.uint8), None, {Condition.BLACK}),
    ("white", plain(255), None, {Condition.OVEREXPOSED}),
    ("washed out", cv2.add(SCENE, plain(230)), None, {Condition.OVEREXPOSED}),
    ("hand over the lens", gradient(35, 50), None, {Condition.COVERED}),
    ("grey tape", plain(128), plain(128), {Condition.COVERED}),  # uniform: not "frozen"
    ("defocused", cv2.GaussianBlur(SCENE, (0, 0), 8), None, {Condition.BLURRED}),
    ("same picture twice", SCENE, SCENE.copy(), {Condition.FROZEN}),
    ("defocused and frozen", cv2.GaussianBlur(SCENE, (0, 0), 8),
     cv2.GaussianBlur(SCENE, (0, 0), 8), {Condition.BLURRED, Condition.FROZEN}),
    ("dark night scene with detail", textured(45, 30), textured(45, 30), set()),
]


@pytest.mark.parametrize(("frame", "previous", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_classify(frame: np.ndarray, previous: np.ndarray | None,
                  expected: set[Condition]) -> None:
    prev = thumbnail(previous) if previous is not None else None
    assert classify(measure(thumbnail(frame), prev, OPTS), OPTS) == expected


def test_synthetic_scene_modes_are_what_they_claim() -> None:
    scene = SyntheticScene()
    expected = {"normal": set(), "black": {Condition.BLACK},
                "overexposed": {Condition.OVEREXPOSED}, "covered": {Condition.COVERED},
                "blurred": {Condition.BLURRED}, "frozen": {Condition.FROZEN}}
    for mode, conditions in expected.items():
        scene.mode = mode  # type: ignore[assignment]
        thumbs = [thumbnail(decode(scene.jpeg())) for _ in range(2)]
        assert classify(measure(thumbs[1], thumbs[0], OPTS), OPTS) == conditions, mode


def test_thumbnail_is_small_grey_and_keeps_aspect() -> None:
    assert thumbnail(SCENE).shape == (90, 160)
    assert thumbnail(SCENE[:, :, 0]).shape == (90, 160)
    assert thumbnail(np.zeros((120, 160, 3), np.uint8)).shape == (120, 160)
    assert thumbnail(np.zeros((480, 640, 4), np.uint8)).shape == (120, 160)


@pytest.mark.parametrize(("bad", "why"), [
    (np.zeros((360, 640, 2), np.uint8), "grey or BGR"),
    (np.zeros((360, 640, 3), np.float32), "8-bit"),
    (np.zeros((1, 640, 3), np.uint8), "too small"),
])
def test_thumbnail_rejects_what_is_not_a_picture(bad: np.ndarray, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        thumbnail(bad)


def test_frame_difference_and_motion_share() -> None:
    a = thumbnail(SCENE)
    b = a.copy()
    b[:30, 110:] = 255 - b[:30, 110:]  # something moved, top right
    m = measure(b, a, OPTS)
    assert m.diff is not None and m.diff > 1
    assert m.moved is not None and 0.05 < m.moved < 0.2
    assert motion_region(b, a, OPTS.motion_pixel_delta) == "top-right"
    c = a.copy()
    c[60:, :50] = 0
    assert motion_region(c, a, OPTS.motion_pixel_delta) == "bottom-left"
    assert measure(a, None, OPTS).diff is None
    assert measure(a, thumbnail(np.zeros((480, 640), np.uint8)), OPTS).diff is None  # new size


# (raise_after, clear_after, raise_after_s, [(bad, t)], expected transitions per step)
HYSTERESIS = [
    ("raise after 3", 3, 2, 0.0, "BBBGG", [None, None, "raised", None, "cleared"]),
    ("a good sample restarts the count", 3, 1, 0.0, "BBGBBB",
     [None, None, None, None, None, "raised"]),
    ("a bad sample restarts the clear count", 1, 3, 0.0, "BGGBGGG",
     ["raised", None, None, None, None, None, "cleared"]),
    ("good while clear: nothing", 1, 1, 0.0, "GGG", [None, None, None]),
    ("raised once only", 2, 1, 0.0, "BBBBB", [None, "raised", None, None, None]),
    ("count and time: needs both", 2, 1, 2.5, "BBBBG", [None, None, None, "raised", "cleared"]),
]


@pytest.mark.parametrize(("raise_after", "clear_after", "after_s", "seq", "expected"),
                         [h[1:] for h in HYSTERESIS], ids=[h[0] for h in HYSTERESIS])
def test_hysteresis(raise_after: int, clear_after: int, after_s: float, seq: str,
                    expected: list[str | None]) -> None:
    h = Hysteresis(raise_after, clear_after, after_s)
    got = [h.observe(c == "B", float(t)) for t, c in enumerate(seq)]
    assert got == expected


def test_hysteresis_backdated_bad_run() -> None:
    h = Hysteresis(1, 1, 10.0)
    assert h.observe(True, 100.0, bad_since=95.0) is None
    assert h.observe(True, 105.0) == "raised"  # 10 s since the last good frame at 95


def test_options_defaults_and_mistakes() -> None:
    o = VideoHealthOptions()
    assert (o.sample_fps, o.health_interval_s, o.enabled, o.motion) == (1.0, 60.0, True, False)
    assert o.sample_period_s == 1.0
    with pytest.raises(ValidationError, match="extra"):
        VideoHealthOptions.model_validate({"sample_rate": 2})
    with pytest.raises(ValidationError, match="bright_level must be above dark_level"):
        VideoHealthOptions(dark_level=200, bright_level=100)
    with pytest.raises(ValidationError, match="reconnect_max_s"):
        VideoHealthOptions(reconnect_initial_s=10, reconnect_max_s=5)
    with pytest.raises(ValidationError):
        VideoHealthOptions(sample_fps=0)


@pytest.mark.parametrize(("url", "safe"), [
    ("rtsp://admin:pa55@127.0.0.1:554/Streaming/101", "rtsp://***@127.0.0.1:554/Streaming/101"),
    ("http://admin@127.0.0.1/video.mjpg?x=1", "http://***@127.0.0.1/video.mjpg?x=1"),
    ("rtsp://u:p%40ss@[::1]:8554/s", "rtsp://***@[::1]:8554/s"),
    ("rtsp://127.0.0.1:554/s", "rtsp://127.0.0.1:554/s"),
    ("http://u:p@127.0.0.1:99999/", "<unparsable url>"),
])
def test_redact(url: str, safe: str) -> None:
    assert redact(url) == safe


def test_redact_masks_the_password_wherever_the_camera_put_it() -> None:
    # XMeye-style cameras hand out stream URIs with the password in the path
    url = "rtsp://admin:pa%2F55@127.0.0.1:554/user=admin_password=pa/55_channel=1?pwd=pa%2F55"
    assert redact(url, ["pa/55"]) == \
        "rtsp://***@127.0.0.1:554/user=admin_password=***_channel=1?pwd=***"
    assert redact("rtsp://127.0.0.1/s?password=pw", ["pw"]) == "rtsp://127.0.0.1/s?password=***"
