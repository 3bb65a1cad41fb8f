"""Tracking state for back ends: OK / LOST / INITIALIZING / RESET, with the reason (no ROS).

A back end must tell "tracking lost" from "no new frame": the node publishes one status per
processed frame (and one when a reset happens between frames). States:

* INITIALIZING: no reference frame yet (start, after a reset, or only frames too poor to start
  from, such as black ones); no pose is expected.
* OK: this frame has a pose.
* LOST: there was a pose before, this frame has none (too few matches, occlusion, ...). Tracking
  continues from the next usable frame; ``frames_since_last_pose`` counts the frames without one.
* RESET: the odometry was reset (reset service, set_pose, a stamp that jumped back, a new
  calibration, the lifecycle node configured again). Published once at the reset; the next frame is
  INITIALIZING or OK.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class TrackingState(enum.IntEnum):
    INITIALIZING = 0
    OK = 1
    LOST = 2
    RESET = 3


@dataclass(frozen=True)
class StatusReport:
    """state; reason: text ("ok" when OK); stamp_ns: frame (or reset) it is about;
    frames_since_last_pose: frames processed since the last one with a pose (0 when OK);
    last_pose_stamp_ns: stamp of the last frame with a pose (None: none since the last reset);
    resets: resets so far; odometry_reset: (RESET) the odometry starts again from a new pose, rather than going on
    from its last one."""

    state: TrackingState
    reason: str
    stamp_ns: int
    frames_since_last_pose: int
    last_pose_stamp_ns: int | None
    resets: int
    odometry_reset: bool = False


class TrackingStateMachine:
    """Feed it every processed frame (``frame``) and every reset (``reset``)."""

    def __init__(self) -> None:
        self.resets = 0
        self._clear()

    def _clear(self) -> None:
        self.has_tracked = False  # a pose since the last reset
        self.frames_since_last_pose = 0
        self.last_pose_stamp_ns: int | None = None
        self.state = TrackingState.INITIALIZING

    def reset(self, stamp_ns: int, reason: str, odometry_reset: bool = True) -> StatusReport:
        """Tracking restarted at ``stamp_ns`` (why: ``reason``); ``odometry_reset``: the odometry also starts again
        from a new pose (False: it goes on from its last one)."""
        self.resets += 1
        self._clear()
        return StatusReport(TrackingState.RESET, reason, int(stamp_ns), 0, None, self.resets, bool(odometry_reset))

    def frame(self, stamp_ns: int, has_pose: bool, reason: str) -> StatusReport:
        """A processed frame: with a pose or not (then ``reason`` says why)."""
        if has_pose:
            self.has_tracked = True
            self.frames_since_last_pose = 0
            self.last_pose_stamp_ns = int(stamp_ns)
            self.state = TrackingState.OK
            reason = reason or "ok"
        else:
            self.frames_since_last_pose += 1
            self.state = TrackingState.LOST if self.has_tracked else TrackingState.INITIALIZING
        return StatusReport(self.state, reason, int(stamp_ns), self.frames_since_last_pose,
                            self.last_pose_stamp_ns, self.resets)


class KeyframeIds:
    """Keyframe ids for the frames the tracker may pose against (its references), as back ends key on them: ids
    count up from 1 and never repeat within the life of the object (across resets too); 0 = none yet.

    ``matched(reference_stamp, posed)``: the id of the frame a result was matched against. A reference known here
    keeps its id; a posed match against a frame that was never a keyframe (the last frame without a pose, which the
    tracker falls back to) gives that frame a new id, as it has just become a reference. ``new(stamp)``: a frame
    becomes the next reference. ``keep(stamps)``: forget every frame the tracker can no longer pose against.
    """

    def __init__(self) -> None:
        self.last = 0  # the newest id given
        self._ids: dict[int, int] = {}

    def matched(self, reference_stamp_ns: int | None, posed: bool) -> int:
        if reference_stamp_ns is None or not posed or reference_stamp_ns in self._ids:
            return self._ids.get(reference_stamp_ns, self.last)
        return self.new(reference_stamp_ns)

    def new(self, stamp_ns: int) -> int:
        self.last += 1
        self._ids[stamp_ns] = self.last
        return self.last

    def keep(self, stamps: set[int]) -> None:
        self._ids = {s: k for s, k in self._ids.items() if s in stamps}

    def clear(self) -> None:
        """A reset: no frame is a reference any more (the count goes on)."""
        self._ids.clear()
