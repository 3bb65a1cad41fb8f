"""Training pairs from the synthetic renderer's camera paths: real parallax, occlusions, exact depth.

A homography relates two views of a plane; the node matches frames of a camera moving through a 3-D
scene, where near and far points move differently and surfaces hide each other. The renderer
(``synthetic.SyntheticScene``) has exact depth and poses, so every keypoint has an exact position in the
other view, or none when it is hidden there: ``project_with_depth``. The cache stores those projections
(``proj0_1``, ``proj1_0``), and ``homography.gt_matches_from_projections`` applies LightGlue's
ground-truth rule to them exactly as it does to homography warps.

``make_render_pair(seed)`` is a pure function of the seed: the scene (one of ``NUM_SCENES`` room
layouts; ``scene_offset=NUM_SCENES`` draws from as many other rooms, the validation pairs' held-out rooms),
the path ('orbit' | 'forward' | 'figure8'), the start and a gap of 1 to ``MAX_GAP`` frames at 10 Hz and
0.5 m/s (5 to 40 cm of motion, up to ~25 deg of turn).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

NUM_SCENES = 8
MAX_GAP = 8
TRAJECTORIES = ("orbit", "forward", "figure8")
# A projected point is hidden in the other view when that view's depth there is nearer than its own depth
# by more than this (relative, plus an absolute margin for grazing surfaces and depth quantisation).
OCCLUSION_REL = 0.03
OCCLUSION_ABS_M = 0.02


@dataclass
class RenderPair:
    """Two rendered views of the room with their depth and relative pose.

    image0, image1: uint8 RGB (H, W, 3); depth0, depth1: (H, W) float32 z-depth in metres;
    K: (3, 3) intrinsics of both; T_1_0: (4, 4) maps view-0 camera coordinates into view 1's; seed.
    """

    image0: np.ndarray
    image1: np.ndarray
    depth0: np.ndarray
    depth1: np.ndarray
    K: np.ndarray
    T_1_0: np.ndarray
    seed: int


@lru_cache(maxsize=2 * NUM_SCENES)  # (training and validation rooms)
def _scene(index: int):
    from ..synthetic import SyntheticScene

    return SyntheticScene(seed=1000 + index)


def make_render_pair(seed: int, size: tuple[int, int] = (640, 480), scene_offset: int = 0) -> RenderPair:
    """Two frames of one camera path through a rendered room, ``gap`` frames apart (see module docstring).
    The room is one of rooms ``scene_offset`` .. ``scene_offset + NUM_SCENES - 1`` (0: the training rooms)."""
    from ..synthetic import default_K, make_trajectory, relative_pose

    rng = np.random.default_rng(int(seed))
    scene = _scene(int(scene_offset) + int(rng.integers(NUM_SCENES)))
    kind = TRAJECTORIES[int(rng.integers(len(TRAJECTORIES)))]
    gap = int(rng.integers(1, MAX_GAP + 1))
    poses, _ = make_trajectory(kind, n_frames=gap + 1, rate_hz=10.0, seed=int(rng.integers(2**31)), speed_mps=0.5)
    if rng.random() < 0.5:  # either direction in time: the matcher sees both
        poses = poses[::-1]
    w, h = int(size[0]), int(size[1])
    K = default_K(w, h)
    image0, depth0 = scene.render(poses[0], K, w, h)
    image1, depth1 = scene.render(poses[-1], K, w, h)
    T_1_0 = relative_pose(poses[0], poses[-1])  # maps view-0 camera points into view 1
    return RenderPair(image0, image1, depth0, depth1, K, T_1_0, int(seed))


def project_with_depth(points: np.ndarray, depth_src: np.ndarray, depth_dst: np.ndarray, K: np.ndarray,
                       T_dst_src: np.ndarray) -> np.ndarray:
    """(N, 2) pixels of the source view -> (N, 2) pixels in the destination view; NaN where the point is
    hidden there (its depth behind the destination's depth map), behind the camera, or has no depth.

    Depth is read at the nearest pixel (interpolating across a depth edge would invent a surface);
    points that land outside the destination image keep their projection (they simply have no partner).
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    h, w = depth_src.shape
    out = np.full_like(pts, np.nan)
    if len(pts) == 0:
        return out
    xi = np.clip(np.rint(pts[:, 0]).astype(int), 0, w - 1)
    yi = np.clip(np.rint(pts[:, 1]).astype(int), 0, h - 1)
    z = depth_src[yi, xi].astype(np.float64)
    rays = np.concatenate([pts, np.ones((len(pts), 1))], 1) @ np.linalg.inv(K).T
    X = rays * z[:, None] @ T_dst_src[:3, :3].T + T_dst_src[:3, 3]
    ok = np.isfinite(z) & (z > 0) & (X[:, 2] > 1e-6)
    uv = np.full_like(pts, np.nan)
    uv[ok] = (X[ok] @ K.T)[:, :2] / X[ok, 2:3]
    inside = ok & (uv[:, 0] > -0.5) & (uv[:, 0] < w - 0.5) & (uv[:, 1] > -0.5) & (uv[:, 1] < h - 0.5)
    xd = np.rint(uv[inside, 0]).astype(int)
    yd = np.rint(uv[inside, 1]).astype(int)
    seen = depth_dst[yd, xd].astype(np.float64)
    hidden = np.zeros(len(pts), dtype=bool)
    hidden[inside] = seen < X[inside, 2] * (1.0 - OCCLUSION_REL) - OCCLUSION_ABS_M
    keep = ok & ~hidden
    out[keep] = uv[keep]
    return out
