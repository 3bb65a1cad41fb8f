"""Undistortion of matched points for a calibrated camera (no ROS; the node builds it from CameraInfo).

Features are detected and matched on the image as published. Before the points go to the pose
estimator (a pinhole model) or to a back end (normalised coordinates), lens distortion is removed
from the points, not from the whole image: cheaper, and the published pixel coordinates stay
those of the image the user sees.

Two inputs, as in ``sensor_msgs/CameraInfo`` (REP-104):
* raw images (``image_raw``, the default): undistort with ``K`` and ``D`` (models ``plumb_bob`` /
  ``rational_polynomial`` via ``cv2.undistortPoints``, ``equidistant`` via ``cv2.fisheye``).
* rectified images (``image_rect``, stereo pairs): already undistorted; the pinhole is ``P[:, :3]``.

A stereo pair is matched on rectified images: raw ones are remapped first (``ImageRectifier``, what image_proc's
rectify does with K, D, R, P). A rectified camera is the camera turned by ``R`` (``x_rect = R x_cam``, same centre), so
what is measured in it (poses, normalised coordinates) is turned back into the camera's own frame, the frame its
images are stamped with (``pose_in_camera_frame``, ``PointUndistorter(..., R=)``).
"""
from __future__ import annotations

import cv2
import numpy as np

from .geometry import RelativePose, relative_pose_in_base

RADTAN_MODELS = ("plumb_bob", "rational_polynomial", "")
FISHEYE_MODELS = ("equidistant", "fisheye")


class PointUndistorter:
    """Maps pixels of the input image to undistorted pixels / normalised coordinates.

    K: (3, 3) intrinsics of the raw image. D: (n,) distortion coefficients of ``model``.
    P: (3, 4) projection of the rectified image (only used with ``rectified``; K when unset).
    rectified: the input images are rectified (distortion already removed): ``D`` is ignored.
    R: (3, 3) rectification rotation of a rectified image (camera_info R, ``x_rect = R x_cam``; only with
       ``rectified``): ``normalized()`` turns its rays back into the camera's frame. None: identity.
       ``R_rect`` keeps it (None for raw input or the identity): what else is measured in the rectified camera
       (poses: ``pose_in_camera_frame``) is turned back by it too.

    ``K_pinhole`` is the pinhole matrix that goes with ``pixels()`` (of the rectified image when rectified).
    Raises ValueError for a distortion model it cannot undo when ``D`` is not all zero.
    """

    def __init__(self, K: np.ndarray, D: np.ndarray | None = None, model: str = "plumb_bob",
                 P: np.ndarray | None = None, rectified: bool = False, R: np.ndarray | None = None) -> None:
        self.K = np.asarray(K, dtype=np.float64).reshape(3, 3)
        D = np.zeros(0) if D is None else np.asarray(D, dtype=np.float64).ravel()
        self.model = model
        self.rectified = bool(rectified)
        self.R_rect = (None if not self.rectified or is_identity_rotation(R)
                       else np.asarray(R, dtype=np.float64).reshape(3, 3))
        if self.rectified:
            P = None if P is None else np.asarray(P, dtype=np.float64).reshape(3, 4)
            self.K_pinhole = P[:, :3].copy() if P is not None and P[0, 0] > 0 else self.K.copy()
            self.D = np.zeros(0)
        else:
            self.K_pinhole = self.K.copy()
            # an equidistant lens is no pinhole even with all-zero coefficients (r = f theta), as image_geometry has it
            self.D = D if np.any(D != 0) else (np.zeros(4) if model in FISHEYE_MODELS else np.zeros(0))
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
            rays = pts @ self._K_inv[:2, :2].T + self._K_inv[:2, 2]
            if self.R_rect is None:
                return rays
            rays = np.c_[rays, np.ones(len(rays))] @ self.R_rect  # x_cam = R^T x_rect: the rays in the camera's frame
            return rays[:, :2] / rays[:, 2:3]
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


def is_identity_rotation(R: np.ndarray | None) -> bool:
    """True for None or a rotation within 1e-12 of the identity (camera_info R of a camera that needs none)."""
    return R is None or np.allclose(np.asarray(R, dtype=np.float64).reshape(3, 3), np.eye(3), atol=1e-12)


class ImageRectifier:
    """Remaps raw images of one camera to its rectified pinhole, as image_proc's rectify does (REP-104).

    K: (3, 3) raw intrinsics. D: (n,) distortion of ``model`` (plumb_bob / rational_polynomial, or equidistant).
    R: (3, 3) rectification rotation (``x_rect = R x_cam``). P: (3, 4) projection of the rectified image.
    size: (width, height) of the images (the rectified image has the raw one's size, as ``image_rect``).

    The remap tables are computed once here (a few ms); ``__call__`` is one ``cv2.remap`` (bilinear; pixels
    that see outside the raw image are 0). Raises ValueError for a model it cannot undo, or an unset P.
    """

    def __init__(self, K: np.ndarray, D: np.ndarray | None, model: str, R: np.ndarray | None, P: np.ndarray,
                 size: tuple[int, int]) -> None:
        K = np.asarray(K, dtype=np.float64).reshape(3, 3)
        D = np.zeros(0) if D is None else np.asarray(D, dtype=np.float64).ravel()
        R = np.eye(3) if R is None else np.asarray(R, dtype=np.float64).reshape(3, 3)
        P = np.asarray(P, dtype=np.float64).reshape(3, 4)
        if not P[0, 0] > 0:
            raise ValueError("camera_info P is unset (fx' = 0): no rectified projection to remap to")
        PointUndistorter(K, D, model)  # the same models, refused with the same reason
        self.size = (int(size[0]), int(size[1]))
        try:
            if model in FISHEYE_MODELS:  # by the model alone (image_geometry): all-zero coefficients are still equidistant
                D = D if np.any(D != 0) else np.zeros(4)  # all-zero coefficients of any length, as PointUndistorter
                self.maps = cv2.fisheye.initUndistortRectifyMap(K, D, R, P[:, :3], self.size, cv2.CV_16SC2)
            else:
                self.maps = cv2.initUndistortRectifyMap(K, D if np.any(D != 0) else None, R, P[:, :3], self.size,
                                                        cv2.CV_16SC2)
        except cv2.error as e:  # a camera_info OpenCV cannot rectify is bad input: the caller's ValueError path
            raise ValueError(f"OpenCV cannot build the rectification maps of this camera_info ({model}): "
                             f"{str(e).strip()}") from e

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(H, W[, C]) raw image of ``size`` -> its rectified image, same shape and dtype."""
        h, w = image.shape[:2]
        if (w, h) != self.size:
            raise ValueError(f"image is {w}x{h} but the rectification is for {self.size[0]}x{self.size[1]}")
        return cv2.remap(image, self.maps[0], self.maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def pose_in_camera_frame(pose: RelativePose, R_rect: np.ndarray | None) -> RelativePose:
    """A relative pose of the rectified camera (``T_r0_r1``) as one of the camera itself (``T_c0_c1``).

    ``R_rect`` is the camera's rectification rotation (camera_info R: ``x_rect = R x_cam``; the centres are the
    same), so ``T_c0_c1 = T_cr T_r0_r1 T_cr^-1`` with ``T_cr = [R^T | 0]``; the covariance turns with it.
    The pose itself when ``R_rect`` is the identity (or None).
    """
    if is_identity_rotation(R_rect):
        return pose
    T_cam_rect = np.eye(4)
    T_cam_rect[:3, :3] = np.asarray(R_rect, dtype=np.float64).reshape(3, 3).T
    return relative_pose_in_base(pose, T_cam_rect)


def stereo_row_offset_px(points_left: np.ndarray, points_right: np.ndarray) -> float:
    """Median |y_left - y_right| [px] of left/right matches (nan without any): ~0.5 px (detection noise) for a
    rectified pair; several pixels for raw images or a camera_info that does not belong to them."""
    left = np.asarray(points_left, dtype=np.float64).reshape(-1, 2)
    right = np.asarray(points_right, dtype=np.float64).reshape(-1, 2)
    if len(left) == 0:
        return float("nan")
    return float(np.median(np.abs(left[:, 1] - right[:, 1])))
