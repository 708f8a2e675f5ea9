"""`VideoHealthOptions`: how a camera's video is sampled and judged (the `video:` block).

The defaults suit a 640x360 substream at 15-25 fps watched at 1 sampled frame/s; every
threshold applies to the grey 160x90 thumbnail the analysis works on (luma 0-255), so
they do not depend on the stream's resolution. See drivers/onvif/README.md ("Video
health") for what each condition means and how to tune it for one camera.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from edge_agent.sdk.config import Strict

__all__ = ["VideoHealthOptions"]


class VideoHealthOptions(Strict):
    """Video-health sampling, thresholds and hysteresis for one camera."""

    enabled: bool = Field(default=True, description="watch the video at all")
    sample_fps: float = Field(
        default=1.0, gt=0, le=10,
        description="frames analysed per second; the frames between are demuxed and "
        "dropped (MJPEG) or decoded without colour conversion (H.264)")
    health_interval_s: float = Field(
        default=60.0, ge=1, le=86400, description="period of `camera.health` events")

    # Conditions, judged on each sampled frame (grey 160x90 thumbnail, luma 0-255).
    dark_level: int = Field(default=24, ge=0, le=255,
                            description="a pixel at or below this luma counts as dark")
    black_fraction: float = Field(default=0.98, gt=0, le=1,
                                  description="black image: at least this share of pixels dark")
    bright_level: int = Field(default=240, ge=0, le=255,
                              description="a pixel at or above this luma counts as saturated")
    overexposed_fraction: float = Field(
        default=0.9, gt=0, le=1,
        description="over-exposed image: at least this share of pixels saturated")
    covered_std_max: float = Field(
        default=6.0, ge=0, le=128,
        description="covered lens: spatial standard deviation of luma at or below this "
        "(a uniform picture: a hand, tape, paint)")
    blur_sharpness_max: float = Field(
        default=40.0, ge=0,
        description="blurred: variance of the Laplacian at or below this (a sharp street "
        "scene scores in the hundreds; tune per camera for plain scenes)")
    frozen_diff_max: float = Field(
        default=0.1, ge=0, le=255,
        description="frozen: mean absolute difference from the previous sample at or "
        "below this (a live picture has sensor noise and a clock)")
    frozen_after_s: float = Field(
        default=10.0, ge=0, le=3600,
        description="frozen must also last this long (a still scene is briefly identical)")

    # Hysteresis, in sampled frames (and failed reads for no signal).
    raise_after: int = Field(default=3, ge=1, le=1000,
                             description="raise after this many bad samples in a row")
    clear_after: int = Field(default=3, ge=1, le=1000,
                             description="clear after this many good samples in a row")
    no_signal_after_s: float = Field(
        default=10.0, ge=0, le=3600,
        description="video loss when no frame could be read for this long")

    # Optional motion by frame difference (for cameras whose own events are unreliable).
    motion: bool = Field(default=False, description="emit camera.motion from frame difference")
    motion_pixel_delta: int = Field(
        default=25, ge=1, le=255, description="a pixel moved when its luma changed by this much")
    motion_area: float = Field(default=0.01, gt=0, le=1,
                               description="motion when at least this share of pixels moved")
    motion_clear_after: int = Field(default=5, ge=1, le=1000,
                                    description="motion cleared after this many still samples")

    # Capture.
    open_timeout_s: float = Field(default=5.0, gt=0, le=120,
                                  description="give up opening the stream after this long")
    read_timeout_s: float = Field(
        default=5.0, gt=0, le=120,
        description="a read that waits this long means the stream stopped")
    reconnect_initial_s: float = Field(default=1.0, gt=0, le=600,
                                       description="first pause before reopening a stream")
    reconnect_max_s: float = Field(default=30.0, gt=0, le=3600,
                                   description="longest pause between reopen attempts")

    @model_validator(mode="after")
    def _consistent(self) -> VideoHealthOptions:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be at least reconnect_initial_s")
        if self.bright_level <= self.dark_level:
            raise ValueError("bright_level must be above dark_level")
        return self

    @property
    def sample_period_s(self) -> float:
        return 1.0 / self.sample_fps
