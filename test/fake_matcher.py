"""A matcher with exact, known correspondences for tracker tests (no network, no images).

A "frame" handed to the tracker is a ``FakeView``: the pixels of a set of world points seen by a
camera, with each point's id. ``extract`` turns it into ``Features`` whose first descriptor
dimension carries the id; ``match_features`` matches equal ids, like a perfect matcher would.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from mambaglue_ros import geometry as G
from mambaglue_ros.types import Features, MatchResult


@dataclass
class FakeView:
    """pixels: (N, 2) float; ids: (N,) int world-point ids; size: (width, height)."""

    pixels: np.ndarray
    ids: np.ndarray
    size: tuple[int, int] = (640, 480)


class FakeMatcher:
    features = "fake"
    alpha = None
    max_keypoints = 4096
    num_layers = 1

    def extract(self, view: FakeView) -> Features:
        n = len(view.ids)
        desc = torch.zeros((n, 2), dtype=torch.float64)
        desc[:, 0] = torch.as_tensor(np.asarray(view.ids, dtype=np.float64))
        return Features(torch.as_tensor(np.asarray(view.pixels, dtype=np.float32)).reshape(-1, 2), desc,
                        torch.linspace(1, 0, n), tuple(view.size))

    def match_features(self, f0: Features, f1: Features) -> MatchResult:
        id0 = f0.descriptors[:, 0].numpy().astype(np.int64)
        id1 = f1.descriptors[:, 0].numpy().astype(np.int64)
        where1 = {int(v): j for j, v in enumerate(id1)}
        pairs = np.array([(i, where1[int(v)]) for i, v in enumerate(id0) if int(v) in where1],
                         dtype=np.int64).reshape(-1, 2)
        return MatchResult(f0.keypoints.numpy(), f1.keypoints.numpy(), pairs,
                           np.ones(len(pairs), np.float32), 1, 1)


def world_points(n: int = 400, seed: int = 0) -> np.ndarray:
    """(n, 3) points 3-8 m in front of a camera at the origin looking along +z (optical frame)."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(3.0, 8.0, n)
    return np.c_[rng.uniform(-0.8, 0.8, n) * z, rng.uniform(-0.6, 0.6, n) * z, z]


def view(points: np.ndarray, T_world_cam: np.ndarray, K: np.ndarray, D: np.ndarray | None = None,
         size: tuple[int, int] = (640, 480), ids: np.ndarray | None = None) -> FakeView:
    """Project world points into a camera (optionally distorted, OpenCV radtan); keep those in the image."""
    ids = np.arange(len(points)) if ids is None else np.asarray(ids)
    T_cam_world = G.invert(T_world_cam)
    X = points @ T_cam_world[:3, :3].T + T_cam_world[:3, 3]
    front = X[:, 2] > 0.1
    pix, _ = cv2.projectPoints(X[front].reshape(-1, 1, 3), np.zeros(3), np.zeros(3), K,
                               np.zeros(5) if D is None else D)
    pix = pix.reshape(-1, 2)
    inside = (pix[:, 0] >= 0) & (pix[:, 0] < size[0]) & (pix[:, 1] >= 0) & (pix[:, 1] < size[1])
    return FakeView(pix[inside], ids[front][inside], size)
