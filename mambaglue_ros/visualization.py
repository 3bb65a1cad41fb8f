"""Drawing helpers shared by the CLI (``mambaglue match --viz``) and the node's ``~/debug_image``.

A module of its own so that lower layers (the ROS node) never import the CLI.
"""
from __future__ import annotations

import numpy as np


OUTLIER_RGB = (255, 0, 255)  # magenta: no score colour (red .. green) is near it


def draw_matches(image0: np.ndarray, image1: np.ndarray, points0: np.ndarray, points1: np.ndarray,
                 scores: np.ndarray, max_lines: int = 2000, inliers: np.ndarray | None = None) -> np.ndarray:
    """Side-by-side RGB canvas with match lines coloured by score (red = low, green = high); with ``inliers``
    ((N,) bool, e.g. the matches the relative pose explains) the others in magenta, drawn first."""
    import cv2

    def rgb(img: np.ndarray) -> np.ndarray:
        return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]

    a, b = rgb(image0), rgb(image1)
    h = max(a.shape[0], b.shape[0])
    canvas = np.zeros((h, a.shape[1] + b.shape[1], 3), np.uint8)
    canvas[: a.shape[0], : a.shape[1]] = a
    canvas[: b.shape[0], a.shape[1]:] = b
    order = np.argsort(scores)[-max_lines:]  # draw the best last so they stay visible
    verified = None if inliers is None else np.asarray(inliers, dtype=bool).reshape(-1)
    if verified is not None and len(verified) == len(scores):
        order = np.concatenate([order[~verified[order]], order[verified[order]]])
    else:
        verified = None
    for i in order:
        s = float(np.clip(scores[i], 0, 1))
        color = (int(255 * (1 - s)), int(255 * s), 40) if verified is None or verified[i] else OUTLIER_RGB
        p0 = tuple(int(round(v)) for v in points0[i])
        p1 = (int(round(points1[i][0])) + a.shape[1], int(round(points1[i][1])))
        cv2.line(canvas, p0, p1, color, 1, cv2.LINE_AA)
        cv2.circle(canvas, p0, 2, color, -1, cv2.LINE_AA)
        cv2.circle(canvas, p1, 2, color, -1, cv2.LINE_AA)
    return canvas
