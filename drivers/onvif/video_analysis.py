"""Pure video analysis: a frame in, metrics and conditions out; hysteresis per condition.

No I/O, no threads, no clock: the caller passes frames and times. Everything works on a
grey thumbnail (`thumbnail()`, 160x90 for 16:9) so a sample costs well under a
millisecond whatever the stream's resolution, and thresholds do not depend on it.

Conditions (`classify`), most specific first, each excluding the ones below it:

- `black`: nearly every pixel dark (lens capped, sensor dead, light off);
- `overexposed`: nearly every pixel saturated (torch or sun into the lens);
- `covered`: a uniform picture, little spatial variation (hand, tape, paint);
- then, for a picture with detail only, `blurred` (low Laplacian variance: knocked out
  of focus, smeared lens) and `frozen` (identical to the previous sample: a stuck
  encoder or pipeline). A uniform picture cannot show freezing or focus, so those two
  are not judged on black, over-exposed or covered frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import cv2
import numpy as np

from .video_options import VideoHealthOptions

__all__ = [
    "THUMB_WIDTH",
    "Condition",
    "FrameMetrics",
    "Hysteresis",
    "Transition",
    "classify",
    "measure",
    "motion_region",
    "thumbnail",
]

THUMB_WIDTH = 160
Transition = Literal["raised", "cleared"]


class Condition(StrEnum):
    BLACK = "black"
    OVEREXPOSED = "overexposed"
    COVERED = "covered"
    BLURRED = "blurred"
    FROZEN = "frozen"


def thumbnail(frame: np.ndarray, width: int = THUMB_WIDTH) -> np.ndarray:
    """A grey uint8 thumbnail `width` wide (aspect kept) of a BGR or grey frame."""
    if frame.ndim != 2 and not (frame.ndim == 3 and frame.shape[2] in (3, 4)):
        raise ValueError(f"expected a grey or BGR image, got shape {frame.shape}")
    if frame.dtype != np.uint8:
        raise ValueError(f"expected 8-bit pixels, got {frame.dtype}")
    h, w = frame.shape[:2]
    if h < 2 or w < 2:
        raise ValueError(f"image too small: {w}x{h}")
    grey = frame if frame.ndim == 2 else cv2.cvtColor(
        frame, cv2.COLOR_BGR2GRAY if frame.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
    height = max(2, round(h * width / w))
    if w <= width:
        return np.ascontiguousarray(grey)
    return cv2.resize(grey, (width, height), interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class FrameMetrics:
    mean: float            # mean luma
    std: float             # spatial standard deviation of luma
    dark: float            # share of pixels at or below dark_level
    bright: float          # share of pixels at or above bright_level
    sharpness: float       # variance of the Laplacian
    diff: float | None     # mean absolute difference from the previous sample
    moved: float | None    # share of pixels that changed by motion_pixel_delta or more


def measure(thumb: np.ndarray, previous: np.ndarray | None,
            options: VideoHealthOptions) -> FrameMetrics:
    """Metrics of a grey thumbnail, compared with the previous sample's when given."""
    mean, std = cv2.meanStdDev(thumb)
    n = thumb.size
    dark = float(np.count_nonzero(thumb <= options.dark_level)) / n
    bright = float(np.count_nonzero(thumb >= options.bright_level)) / n
    sharpness = float(cv2.Laplacian(thumb, cv2.CV_32F).var())
    diff = moved = None
    if previous is not None and previous.shape == thumb.shape:
        delta = cv2.absdiff(thumb, previous)
        diff = float(delta.mean())
        moved = float(np.count_nonzero(delta >= options.motion_pixel_delta)) / n
    return FrameMetrics(mean=float(mean[0, 0]), std=float(std[0, 0]), dark=dark,
                        bright=bright, sharpness=sharpness, diff=diff, moved=moved)


def classify(m: FrameMetrics, options: VideoHealthOptions) -> set[Condition]:
    """The conditions this sample shows (see the module docstring for the order)."""
    if m.dark >= options.black_fraction:
        return {Condition.BLACK}
    if m.bright >= options.overexposed_fraction:
        return {Condition.OVEREXPOSED}
    if m.std <= options.covered_std_max:
        return {Condition.COVERED}
    found = set()
    if m.sharpness <= options.blur_sharpness_max:
        found.add(Condition.BLURRED)
    if m.diff is not None and m.diff <= options.frozen_diff_max:
        found.add(Condition.FROZEN)
    return found


_REGIONS = (("top-left", "top", "top-right"), ("left", "centre", "right"),
            ("bottom-left", "bottom", "bottom-right"))


def motion_region(thumb: np.ndarray, previous: np.ndarray, pixel_delta: int) -> str:
    """Which ninth of the picture (3x3 grid: `top-left` ... `centre` ... `bottom-right`)
    changed most between two thumbnails."""
    moved = cv2.absdiff(thumb, previous) >= pixel_delta
    h, w = moved.shape
    best, name = -1, "centre"
    for r in range(3):
        for c in range(3):
            count = int(np.count_nonzero(moved[r * h // 3:(r + 1) * h // 3,
                                               c * w // 3:(c + 1) * w // 3]))
            if count > best:
                best, name = count, _REGIONS[r][c]
    return name


@dataclass
class Hysteresis:
    """Raise after `raise_after` bad observations in a row that also span `raise_after_s`
    seconds; clear after `clear_after` good ones in a row. `observe` says when it flips."""

    raise_after: int = 1
    clear_after: int = 1
    raise_after_s: float = 0.0
    raised: bool = False
    _bad: int = 0
    _good: int = 0
    _bad_since: float | None = None

    def observe(self, bad: bool, now: float, *,
                bad_since: float | None = None) -> Transition | None:
        """One observation at `now`. `bad_since` backdates the start of a bad run (e.g.
        the time of the last good frame when a read fails long after it)."""
        if bad:
            self._good = 0
            self._bad += 1
            if self._bad_since is None:
                self._bad_since = now if bad_since is None else min(bad_since, now)
            if (not self.raised and self._bad >= self.raise_after
                    and now - self._bad_since >= self.raise_after_s):
                self.raised = True
                return "raised"
            return None
        self._bad, self._bad_since = 0, None
        self._good += 1
        if self.raised and self._good >= self.clear_after:
            self.raised = False
            return "cleared"
        return None
