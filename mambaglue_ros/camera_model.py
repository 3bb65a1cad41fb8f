"""Undistortion of matched points for a calibrated camera (no ROS; the node builds it from CameraInfo).

Features are detected and matched on the image as published. Before the points go to the pose
estimator (a pinhole model) or to a back end (normalised coordinates), lens distortion is removed
from the points, not from the whole image: cheaper, and the published pixel coordinates stay
those of the image the user sees.

Two inputs, as in ``sensor_msgs/CameraInfo`` (REP-104):
* raw images (``image_raw``, the default): undistort with ``K`` and ``D`` (models ``plumb_bob`` /
  ``rational_polynomial`` via ``cv2.undistortPoints``, ``equidistant`` via ``cv2.fisheye``).
* rectified images (``image_rect``, stereo pairs): already undistorted; the pinhole is ``P[:, :3]``.
"""
from __future__ import annotations

import cv2
import numpy as np

RADTAN_MODELS = ("plumb_bob", "rational_polynomial", "")
FISHEYE_MODELS = ("equidistant", "fisheye")


class PointUndistorter:
    """Maps pixels of the input image to undistorted pixels / normalised coordinates.

    K: (3, 3) intrinsics of the raw image. D: (n,) distortion coefficients of ``model``.
    P: (3, 4) projection of the rectified image (only used with ``rectified``; K when unset).
    rectified: the input images are rectified (distortion already removed): ``D`` is ignored.

    ``K_pinhole`` is the pinhole matrix that goes with ``pixels()``.
    Raises ValueError for a distortion model it cannot undo when ``D`` is not all zero.
    """

    def __init__(self, K: np.ndarray, D: np.ndarray | None = None, model: str = "plumb_bob",
                 P: np.ndarray | None = None, rectified: bool = False) -> None:
        self.K = np.asarray(K, dtype=np.float64).reshape(3, 3)
        D = np.zeros(0) if D is None else np.asarray(D, dtype=np.float64).ravel()
        self.model = model
        self.rectified = bool(rectified)
        if self.rectified:
            P = None if P is None else np.asarray(P, dtype=np.float64).reshape(3, 4)
            self.K_pinhole = P[:, :3].copy() if P is not None and P[0, 0] > 0 else self.K.copy()
            self.D = np.zeros(0)
        else:
            self.K_pinhole = self.K.copy()
            self.D = D if np.any(D != 0) else np.zeros(0)
        if len(self.D):
            if model in FISHEYE_MODELS:
                if len(self.D) != 4:
                    raise ValueError(f"the {model} model needs 4 distortion coefficients, got {len(self.D)}")
            elif model in RADTAN_MODELS:
                if len(self.D) not in (4, 5, 8, 12, 14):
                    raise ValueError(f"{model}: OpenCV takes 4, 5, 8, 12 or 14 distortion coefficients, "
                                     f"got {len(self.D)}")
            else:
                raise ValueError(f"unsupported distortion model '{model}' (supported: plumb_bob, "
                                 "rational_polynomial, equidistant); publish rectified images and set "
                                 "rectified_input")
        self._K_inv = np.linalg.inv(self.K_pinhole)

    @property
    def distorted(self) -> bool:
        """True when points are actually undistorted (non-zero D on raw input)."""
        return len(self.D) > 0

    def normalized(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 2) pixels of the input image -> (N, 2) undistorted normalised coordinates (x/z, y/z)."""
        pts = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
        if len(pts) == 0:
            return np.zeros((0, 2))
        if not self.distorted:
            return pts @ self._K_inv[:2, :2].T + self._K_inv[:2, 2]
        src = pts.reshape(-1, 1, 2)
        if self.model in FISHEYE_MODELS:
            out = cv2.fisheye.undistortPoints(src, self.K, self.D)
        else:
            # iterative solver: the default 5 iterations leave pixel-level errors at the image corners
            criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 1e-10)
            out = cv2.undistortPointsIter(src, self.K, self.D, None, None, criteria)
        return out.reshape(-1, 2)

    def pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 2) pixels of the input image -> (N, 2) pixels of the ideal pinhole ``K_pinhole``."""
        pts = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
        if not self.distorted:
            return pts.copy()
        n = self.normalized(pts)
        return n @ self.K_pinhole[:2, :2].T + self.K_pinhole[:2, 2]
