"""Persistent feature tracks for VIO / SLAM back ends (no ROS).

A back end (VINS-Mono/Fusion's estimator, an OpenVINS-style feature store) wants every feature
observed in a frame with an id that stays the same for as long as the feature is seen. The
tracker only links two images at a time (reference <-> current, left <-> right); this module
turns those links into ids:

* a keypoint of the current frame matched to a reference keypoint inherits that keypoint's id;
  every other keypoint starts a new track (new id, age 1). The tracker passes only the matches the frame's
  pose explains (``tracking.FrameResult.track_links``): an outlier would join two scene points in one
  track, and the matches of a frame without a pose are not verified;
* when the current frame becomes the tracker's reference (every frame with the "previous"
  policy, each keyframe with the "keyframe" policy, or after tracking was lost) its ids become
  the ones the next frames inherit from, so with either policy a scene point keeps its id for
  as long as it is matched; the ids of every frame the tracker may still pose against
  (``FrameResult.live_references``: also the reference before, and the last frame without a
  pose) are kept, so a frame posed against one of those inherits its ids too;
* stereo: a right keypoint matched to a left keypoint carries the left keypoint's id (camera 1).

Per observation: pixel (as published), undistorted normalised coordinates (x/z, y/z), pixel
velocity and normalised velocity (since the track's previous observation in the same camera;
zero for a new track) and age (frames the track has been observed in, this one included).
Ids are never reused within a ``TrackManager``, also across ``reset``: a back end that keeps features by id for a
while (VINS's sliding window) would otherwise join a new scene point to an old one of the same id.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NS_PER_S = 1_000_000_000


@dataclass
class TrackFrame:
    """The observations of one frame, N = left keypoints + right observations.

    stamp_ns: this frame; reference_stamp_ns: the frame the ids were inherited from (None: all new).
    ids: (N,) int64 track ids; camera: (N,) uint8, 0 = left/mono, 1 = right.
    pixels: (N, 2) float pixels in the camera's image; normalized: (N, 2) undistorted (x/z, y/z).
    velocity_px: (N, 2) px/s; velocity_normalized: (N, 2) 1/s; age: (N,) frames observed (>= 1).
    """

    stamp_ns: int
    reference_stamp_ns: int | None
    ids: np.ndarray
    camera: np.ndarray
    pixels: np.ndarray
    normalized: np.ndarray
    velocity_px: np.ndarray
    velocity_normalized: np.ndarray
    age: np.ndarray

    def __len__(self) -> int:
        return int(len(self.ids))

    def of_camera(self, cam: int) -> np.ndarray:
        """(N,) bool mask of the observations in camera ``cam``."""
        return self.camera == cam


class TrackManager:
    """Assigns persistent ids to keypoints from the tracker's per-frame matches."""

    def __init__(self) -> None:
        self.next_id = 0
        self.reset()

    def reset(self) -> None:
        """Forget every track; the next ids go on from the last one (never reused)."""
        self.reference_stamp_ns: int | None = None  # the latest reference
        self._ids_of: dict[int, np.ndarray] = {}  # keypoint ids of each frame later frames may inherit from, by stamp
        # the last observation of each track that can still be continued, per (id, camera) key = 2 id + camera,
        # sorted by key: stamp_ns, pixel (2,), normalised (2,), age. Arrays, not a dict: one frame's lookups are
        # a searchsorted instead of a Python loop over its observations (~4 ms per frame at 512 keypoints)
        self._last_key = np.zeros(0, dtype=np.int64)
        self._last_stamp = np.zeros(0, dtype=np.int64)
        self._last_px = np.zeros((0, 2))
        self._last_norm = np.zeros((0, 2))
        self._last_age = np.zeros(0, dtype=np.int64)

    def _new_ids(self, n: int) -> np.ndarray:
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        self.next_id += n
        return ids

    def update(self, stamp_ns: int, keypoints: np.ndarray, normalized: np.ndarray,
               temporal_matches: np.ndarray | None, reference_stamp_ns: int | None, is_reference: bool,
               stereo_matches: np.ndarray | None = None, right_keypoints: np.ndarray | None = None,
               right_normalized: np.ndarray | None = None,
               live_references: tuple[int, ...] | None = None) -> TrackFrame:
        """One processed frame -> its observations with track ids.

        keypoints, normalized: (N, 2) all left keypoints of this frame (pixels, undistorted
            normalised coordinates).
        temporal_matches: (M, 2) int indices (reference keypoint, current keypoint), or None.
        reference_stamp_ns: stamp of the frame they refer to; ids are inherited only from a frame whose
            ids this manager kept (after a reset the first frame starts every track).
        is_reference: this frame is now the tracker's reference (``FrameResult.is_keyframe``).
        live_references: the stamps later frames may be posed against (``FrameResult.live_references``): the
            ids of those frames are kept. None: only the latest reference's.
        stereo_matches: (S, 2) int indices (left keypoint, right keypoint) with ``right_keypoints``
            and ``right_normalized`` (R, 2): right observations share the left keypoint's id.
        """
        stamp_ns = int(stamp_ns)
        kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
        norm = np.asarray(normalized, dtype=np.float64).reshape(-1, 2)
        if len(kp) != len(norm):
            raise ValueError(f"{len(kp)} keypoints but {len(norm)} normalised points")
        # a keypoint without finite coordinates gets no id and is left out (never published)
        valid = np.isfinite(kp).all(axis=1) & np.isfinite(norm).all(axis=1)
        ids = np.full(len(kp), -1, dtype=np.int64)
        inherited = None
        if (temporal_matches is not None and reference_stamp_ns is not None
                and int(reference_stamp_ns) in self._ids_of):
            ref_ids = self._ids_of[int(reference_stamp_ns)]
            m = np.asarray(temporal_matches, dtype=np.int64).reshape(-1, 2)
            ok = (m[:, 0] < len(ref_ids)) & (m[:, 1] < len(kp))
            ids[m[ok, 1]] = ref_ids[m[ok, 0]]
            inherited = int(reference_stamp_ns)
        ids[~valid] = -1
        fresh = (ids < 0) & valid
        ids[fresh] = self._new_ids(int(fresh.sum()))

        cams = [np.zeros(int(valid.sum()), dtype=np.uint8)]
        all_ids, all_px, all_norm = [ids[valid]], [kp[valid]], [norm[valid]]
        if stereo_matches is not None and right_keypoints is not None and right_normalized is not None:
            s = np.asarray(stereo_matches, dtype=np.int64).reshape(-1, 2)
            rk = np.asarray(right_keypoints, dtype=np.float64).reshape(-1, 2)
            rn = np.asarray(right_normalized, dtype=np.float64).reshape(-1, 2)
            s = s[(ids[s[:, 0]] >= 0) & np.isfinite(rk[s[:, 1]]).all(axis=1) & np.isfinite(rn[s[:, 1]]).all(axis=1)]
            all_ids.append(ids[s[:, 0]])
            all_px.append(rk[s[:, 1]])
            all_norm.append(rn[s[:, 1]])
            cams.append(np.ones(len(s), dtype=np.uint8))
        ids_all = np.concatenate(all_ids)
        cam = np.concatenate(cams)
        px = np.concatenate(all_px)
        nrm = np.concatenate(all_norm)

        vel_px = np.zeros_like(px)
        vel_n = np.zeros_like(nrm)
        age = np.ones(len(ids_all), dtype=np.int64)
        key = 2 * ids_all + cam
        at = np.minimum(np.searchsorted(self._last_key, key), max(len(self._last_key) - 1, 0))
        seen = np.zeros(len(key), dtype=bool)
        if len(self._last_key):  # the track's previous observation in this camera, if it is older than this frame
            seen = (self._last_key[at] == key) & (self._last_stamp[at] < stamp_ns)
        prev = at[seen]
        dt = (stamp_ns - self._last_stamp[prev]) / NS_PER_S
        vel_px[seen] = (px[seen] - self._last_px[prev]) / dt[:, None]
        vel_n[seen] = (nrm[seen] - self._last_norm[prev]) / dt[:, None]
        age[seen] = self._last_age[prev] + 1
        if is_reference:
            self.reference_stamp_ns = stamp_ns
        live = {self.reference_stamp_ns} if live_references is None else {int(s) for s in live_references}
        if is_reference or stamp_ns in live:  # (-1 for keypoints without an id: their matches start new tracks)
            self._ids_of[stamp_ns] = ids.copy()
        self._ids_of = {s: v for s, v in self._ids_of.items() if s in live}
        # keep only what can still be continued: this frame's tracks (the last observation of a key if it came
        # twice) and those of the frames ids may still be inherited from
        kept_ids = np.concatenate(list(self._ids_of.values())) if self._ids_of else np.zeros(0, dtype=np.int64)
        old = np.isin(self._last_key // 2, kept_ids) & ~np.isin(self._last_key, key)
        last = len(key) - 1 - np.unique(key[::-1], return_index=True)[1]
        kept_key = np.concatenate([self._last_key[old], key[last]])
        order = np.argsort(kept_key, kind="stable")
        self._last_key = kept_key[order]
        self._last_stamp = np.concatenate([self._last_stamp[old], np.full(len(last), stamp_ns, dtype=np.int64)])[order]
        self._last_px = np.concatenate([self._last_px[old], px[last]])[order]
        self._last_norm = np.concatenate([self._last_norm[old], nrm[last]])[order]
        self._last_age = np.concatenate([self._last_age[old], age[last]])[order]
        return TrackFrame(stamp_ns, inherited, ids_all, cam, px, nrm, vel_px, vel_n, age)
