"""Synthetic stereo camera sequences with exact ground truth (no data files, no ROS).

A textured box room (8 m x 6 m x 3 m) with a few boxes inside is ray cast per pixel in numpy.
Every surface carries a mosaic of scikit-image's bundled photos (the ones shipped inside the
wheel, so nothing is downloaded) modulated by a fine "detail" texture, so that features are
plentiful at any distance and no image region is textureless.

Conventions
-----------
* World frame: z up, x along the room's long side (ROS REP 103 style); metres.
* Camera frame: the optical frame (x right, y down, z forward), pinhole ``K``, no distortion.
  Pixel centres are at integer coordinates (OpenCV convention).
* Poses are 4x4 homogeneous ``T_a_b`` that map points from frame b to frame a
  (``p_a = T_a_b @ p_b``); ``T_world_cam`` is therefore the camera-to-world pose.
* Depth maps hold the z coordinate in the camera frame (REP 118 depth image), float32 metres.
* Timestamps are int64 nanoseconds.

Main entry points: :func:`default_K`, :class:`StereoRig`, :class:`SyntheticScene`,
:func:`make_trajectory`, :func:`make_sequence`, :func:`warp_photo_pair` and :func:`raw_camera_view` (what a raw,
distorted and unrectified camera sees of a rectified view: image_raw input with its camera_info).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import cv2
import numpy as np

__all__ = [
    "DEFAULT_START_NS",
    "PHOTO_NAMES",
    "Plane",
    "StereoRig",
    "SyntheticFrame",
    "SyntheticScene",
    "SyntheticSequence",
    "camera_pose",
    "default_K",
    "load_photo",
    "raw_camera_view",
    "make_sequence",
    "make_trajectory",
    "relative_pose",
    "warp_photo_pair",
]

# A fixed, non-zero epoch for the first frame: ROS treats a zero stamp as "latest" in tf2
# lookups and some tools as "unset", so synthetic data must never start at t = 0.
DEFAULT_START_NS = 1_700_000_000_000_000_000

ROOM_SIZE_M = (8.0, 6.0, 3.0)  # x, y, z extents; the room spans [-4,4] x [-3,3] x [0,3]
TEXEL_M = 0.006                # size of one finest-level texel on every surface
CAM_HEIGHT_M = 1.3             # nominal camera height above the floor

# Body (x forward, y left, z up) <- optical (x right, y down, z forward) rotation: its columns
# are the optical axes expressed in the body frame.
_R_BODY_OPT = np.array([[0.0, 0.0, 1.0],
                        [-1.0, 0.0, 0.0],
                        [0.0, -1.0, 0.0]])


# --------------------------------------------------------------------------------------------
# Photos (scikit-image's bundled images only)
# --------------------------------------------------------------------------------------------

# Only images that ship inside the scikit-image wheel: the others go through pooch and would
# try to download. Grey images get a tint so that surfaces differ in colour too.
_COLOR_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
                 "hubble_deep_field", "retina")
_GRAY_PHOTOS = {  # name -> RGB tint multiplier
    "camera": (1.0, 0.92, 0.80),
    "coins": (0.85, 0.95, 1.0),
    "moon": (0.95, 0.95, 0.90),
    "brick": (1.0, 0.70, 0.55),
    "gravel": (0.90, 0.85, 0.75),
    "grass": (0.70, 1.0, 0.65),
    "page": (1.0, 1.0, 0.90),
    "cell": (0.80, 0.90, 1.0),
}
PHOTO_NAMES: tuple[str, ...] = _COLOR_PHOTOS + tuple(_GRAY_PHOTOS)


@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """One of scikit-image's bundled photos as uint8 RGB (H, W, 3), contrast-normalised.

    Grey images are tinted; every photo gets CLAHE on its lightness so that large flat areas
    (sky, dark backgrounds) still carry some texture. The result is cached and read-only.
    """
    if name not in PHOTO_NAMES:
        raise ValueError(f"unknown photo {name!r}; choose one of {PHOTO_NAMES}")
    import skimage.data  # lazy: only needed when a scene is built

    img = np.asarray(getattr(skimage.data, name)())
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        tint = np.asarray(_GRAY_PHOTOS[name], dtype=np.float32)
        img = np.clip(img[..., None].astype(np.float32) * tint, 0, 255).astype(np.uint8)
    img = np.ascontiguousarray(img[..., :3])
    if name == "retina":  # drop the black surround of the fundus image
        h, w = img.shape[:2]
        img = img[h // 5: h - h // 5, w // 5: w - w // 5]
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
    clahe = cv2.createCLAHE(clipLimit=2.5, tileGridSize=(6, 6))
    lab[..., 0] = clahe.apply(lab[..., 0])
    out = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=None)
def _detail_texture() -> np.ndarray:
    """Zero-mean, unit-std high-pass of gravel + grass, (512, 512) float32, seamless-ish tile.

    Multiplied into every surface so that even a magnified, smooth photo region shows texture
    at the scale of a few texels (features stay plentiful close to a wall).
    """
    import skimage.data

    g = skimage.data.gravel().astype(np.float32) + 0.7 * skimage.data.grass().astype(np.float32)
    # Blur with wrap-around (cv2 filters do not support BORDER_WRAP) so the tile stays seamless.
    pad = 32
    blur = cv2.GaussianBlur(np.pad(g, pad, mode="wrap"), (0, 0), 6.0)[pad:-pad, pad:-pad]
    hp = g - blur
    hp /= float(hp.std()) + 1e-6
    hp = np.clip(hp, -3.0, 3.0)
    hp.setflags(write=False)
    return hp


def _crop_resize(photo: np.ndarray, out_w: int, out_h: int, rng: np.random.Generator) -> np.ndarray:
    """Random aspect-matched crop (>= 60 % of the short side), random flip, resized to out_w x out_h."""
    h, w = photo.shape[:2]
    aspect = out_w / out_h
    # Largest crop with the target aspect, then shrink it randomly.
    cw, ch = (w, int(round(w / aspect))) if w / h < aspect else (int(round(h * aspect)), h)
    scale = rng.uniform(0.6, 1.0)
    cw, ch = max(8, int(cw * scale)), max(8, int(ch * scale))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    crop = photo[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    interp = cv2.INTER_AREA if cw > out_w else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(crop), (out_w, out_h), interpolation=interp)


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------

def default_K(width: int = 640, height: int = 480, hfov_deg: float = 70.0) -> np.ndarray:
    """Pinhole intrinsics (3, 3) float64 with square pixels and the principal point centred.

    fx = fy = (width / 2) / tan(hfov / 2); (cx, cy) = ((width - 1) / 2, (height - 1) / 2), the
    exact image centre when pixel centres sit at integer coordinates.
    """
    f = 0.5 * width / np.tan(np.deg2rad(hfov_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0],
                     [0.0, f, (height - 1) / 2.0],
                     [0.0, 0.0, 1.0]])


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def camera_pose(position: np.ndarray, yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """T_world_cam (4, 4) of an optical-frame camera on a body at `position` (world, metres).

    yaw about world z (0 = looking along +x, counter-clockwise positive), pitch about the body y
    axis (positive = looking down, REP 103), roll about the viewing direction; radians.
    """
    T = np.eye(4)
    T[:3, :3] = _rot_z(yaw) @ _rot_y(pitch) @ _rot_x(roll) @ _R_BODY_OPT
    T[:3, 3] = position
    return T


def relative_pose(T_world_a: np.ndarray, T_world_b: np.ndarray) -> np.ndarray:
    """T_b_a (4, 4): maps points from camera a's frame to camera b's frame.

    With x_b = R x_a + t this is the (R, t) that essential-matrix methods recover from
    image a -> image b correspondences (t up to scale).
    """
    return np.linalg.inv(T_world_b) @ T_world_a


@dataclass(frozen=True)
class StereoRig:
    """Rectified stereo pair: identical K, the right camera `baseline_m` along the left's +x.

    K: (3, 3) intrinsics of both cameras; width, height: image size in pixels.
    """

    K: np.ndarray
    width: int
    height: int
    baseline_m: float = 0.11

    @property
    def T_left_right(self) -> np.ndarray:
        """(4, 4) pose of the right camera in the left camera's optical frame (p_left = T @ p_right)."""
        T = np.eye(4)
        T[0, 3] = self.baseline_m
        return T

    @property
    def T_right_left(self) -> np.ndarray:
        """(4, 4) inverse of :attr:`T_left_right` (p_right = T @ p_left)."""
        T = np.eye(4)
        T[0, 3] = -self.baseline_m
        return T

    @property
    def P_left(self) -> np.ndarray:
        """(3, 4) ROS CameraInfo projection matrix of the left camera: [K | 0]."""
        return np.hstack([self.K, np.zeros((3, 1))])

    @property
    def P_right(self) -> np.ndarray:
        """(3, 4) ROS CameraInfo projection matrix of the right camera: Tx = -fx * baseline."""
        P = self.P_left.copy()
        P[0, 3] = -self.K[0, 0] * self.baseline_m
        return P

    def T_world_right(self, T_world_left: np.ndarray) -> np.ndarray:
        """(4, 4) world pose of the right camera given the left one."""
        return T_world_left @ self.T_left_right


# --------------------------------------------------------------------------------------------
# Scene
# --------------------------------------------------------------------------------------------

@dataclass
class Plane:
    """A textured rectangle: points origin + a * u + b * v, a in [0, size_u], b in [0, size_v].

    origin: (3,) world metres; u, v: (3,) orthonormal in-plane axes (texture x = u, texture
    y = v); normal: (3,) unit, pointing to the side that is visible (culling uses it);
    levels: mip pyramid of uint8 RGB textures, level 0 covering the rectangle at ~TEXEL_M.
    """

    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    size_u: float
    size_v: float
    normal: np.ndarray
    levels: list[np.ndarray]

    @property
    def corners(self) -> np.ndarray:
        """(4, 3) world corners in order (0,0), (su,0), (su,sv), (0,sv)."""
        o, u, v = self.origin, self.u * self.size_u, self.v * self.size_v
        return np.stack([o, o + u, o + u + v, o + v])


def _mip_pyramid(tex: np.ndarray, min_size: int = 8) -> list[np.ndarray]:
    """Box-filtered pyramid [tex, tex/2, tex/4, ...] down to `min_size` texels on the short side."""
    levels = [tex]
    while min(levels[-1].shape[:2]) // 2 >= min_size:
        h, w = levels[-1].shape[:2]
        levels.append(cv2.resize(levels[-1], ((w + 1) // 2, (h + 1) // 2),
                                 interpolation=cv2.INTER_AREA))
    return levels


class SyntheticScene:
    """Textured box room, ray cast per pixel (vectorised numpy + cv2.remap).

    The 8 x 6 x 3 m room (x in [-4, 4], y in [-3, 3], z in [0, 3]) holds three boxes in its
    corners and cabinets / shelves along the walls. Every surface is an axis-aligned
    :class:`Plane` with a mip-mapped texture; there is no lighting, so a surface point has
    the same colour from every viewpoint (what makes the ground truth exact). The layout
    (box jitter, wall furniture) and the photo on every panel are drawn from `seed`: the
    same seed always gives the same scene and images.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        rng = np.random.default_rng(self.seed)
        self._photo_order = list(rng.permutation(len(PHOTO_NAMES)))
        self._next_photo = 0
        self.planes: list[Plane] = []
        self._build_room(rng)
        self._build_boxes(rng)
        self._build_wall_relief(rng)
        self._ray_cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    # -- construction -----------------------------------------------------------------------

    def _take_photo(self) -> np.ndarray:
        name = PHOTO_NAMES[self._photo_order[self._next_photo % len(PHOTO_NAMES)]]
        self._next_photo += 1
        return load_photo(name)

    def _make_texture(self, size_u: float, size_v: float, rng: np.random.Generator,
                      panel_m: float, brightness: float) -> np.ndarray:
        """Mosaic of photo panels (about panel_m wide) times the detail texture, uint8 RGB."""
        tw = max(8, int(round(size_u / TEXEL_M)))
        th = max(8, int(round(size_v / TEXEL_M)))
        nu = max(1, int(round(size_u / panel_m)))
        nv = max(1, int(round(size_v / panel_m)))
        tex = np.empty((th, tw, 3), np.float32)
        xs = np.linspace(0, tw, nu + 1).round().astype(int)
        ys = np.linspace(0, th, nv + 1).round().astype(int)
        for j in range(nv):
            for i in range(nu):
                pw, ph = xs[i + 1] - xs[i], ys[j + 1] - ys[j]
                tex[ys[j]:ys[j + 1], xs[i]:xs[i + 1]] = _crop_resize(self._take_photo(), pw, ph, rng)
        # Fine detail: multiplicative (keeps the photo's look) plus a small additive part so
        # that dark photo regions are not flat either. Random offset: panels do not line up.
        detail = _detail_texture()
        oy, ox = rng.integers(0, detail.shape[0]), rng.integers(0, detail.shape[1])
        d = np.roll(detail, (-oy, -ox), axis=(0, 1))
        reps = (-(-th // d.shape[0]), -(-tw // d.shape[1]))
        d = np.tile(d, reps)[:th, :tw, None]
        tex = tex * (brightness * (1.0 + 0.18 * d)) + 14.0 * d
        return np.clip(tex, 0, 255).astype(np.uint8)

    def _add_rect(self, origin, u, v, size_u: float, size_v: float, visible_from,
                  rng: np.random.Generator, panel_m: float = 2.7, brightness: float = 1.0) -> None:
        """Add a rectangle whose visible side faces the point `visible_from` (world)."""
        origin, u, v = (np.asarray(a, dtype=np.float64) for a in (origin, u, v))
        n = np.cross(u, v)
        centre = origin + 0.5 * size_u * u + 0.5 * size_v * v
        if np.dot(np.asarray(visible_from) - centre, n) < 0:
            n = -n
        tex = self._make_texture(size_u, size_v, rng, panel_m, brightness)
        self.planes.append(Plane(origin, u, v, float(size_u), float(size_v), n, _mip_pyramid(tex)))

    def _build_room(self, rng: np.random.Generator) -> None:
        sx, sy, sz = ROOM_SIZE_M
        hx, hy = sx / 2, sy / 2
        inside = (0.0, 0.0, sz / 2)
        ex, ey, ez = np.eye(3)
        # Walls: texture x runs along the wall, texture y downwards so photos stand upright.
        top = sz
        self._add_rect((-hx, hy, top), ex, -ez, sx, sz, inside, rng, brightness=1.0)    # +y wall
        self._add_rect((hx, -hy, top), -ex, -ez, sx, sz, inside, rng, brightness=0.92)  # -y wall
        self._add_rect((hx, hy, top), -ey, -ez, sy, sz, inside, rng, brightness=0.85)   # +x wall
        self._add_rect((-hx, -hy, top), ey, -ez, sy, sz, inside, rng, brightness=0.95)  # -x wall
        self._add_rect((-hx, -hy, 0.0), ex, ey, sx, sy, inside, rng, panel_m=2.0, brightness=0.8)  # floor
        self._add_rect((-hx, hy, sz), ex, -ey, sx, sy, inside, rng, panel_m=3.0, brightness=1.05)  # ceiling

    def _add_box(self, lo, hi, rng: np.random.Generator, brightness: float,
                 skip: tuple[str, ...] = ("-z",)) -> None:
        """Axis-aligned box from corner lo to corner hi (world metres).

        skip: faces never seen, which are left out ("-z" for a box on the floor, the face
        against a wall for wall-mounted ones): "-x", "+x", "-y", "+y", "-z", "+z".
        """
        (x0, y0, z0), (x1, y1, z1) = lo, hi
        c = ((x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2)
        ex, ey, ez = np.eye(3)
        dx, dy, dz = x1 - x0, y1 - y0, z1 - z0
        # name: (origin, u, v, size_u, size_v, outward normal, shade). Side faces have their
        # texture y pointing down so photos stand upright.
        faces = {
            "-y": ((x0, y0, z1), ex, -ez, dx, dz, -ey, 1.0),
            "+y": ((x1, y1, z1), -ex, -ez, dx, dz, ey, 0.9),
            "+x": ((x1, y0, z1), ey, -ez, dy, dz, ex, 0.95),
            "-x": ((x0, y1, z1), -ey, -ez, dy, dz, -ex, 0.85),
            "+z": ((x0, y0, z1), ex, ey, dx, dy, ez, 1.1),
            "-z": ((x0, y1, z0), ex, -ey, dx, dy, -ez, 0.7),
        }
        for name, (o, u, v, su, sv, n, shade) in faces.items():
            if name in skip:
                continue
            # A point far outside the box along the face normal decides the visible side.
            self._add_rect(o, u, v, su, sv, np.asarray(c) + 10.0 * n, rng, 1.0, brightness * shade)

    def _build_boxes(self, rng: np.random.Generator) -> None:
        # Boxes sit in the corners, outside every trajectory's clearance zone (see
        # make_trajectory), and give parallax against the walls behind them.
        j = lambda: rng.uniform(-0.1, 0.1)  # noqa: E731 - small layout jitter per seed
        ox, oy = j(), j()
        self._add_box((3.0 + ox, 2.2 + oy, 0.0), (3.7 + ox, 2.85 + oy, 1.0), rng, 1.0)
        ox, oy = j(), j()
        self._add_box((-3.7 + ox, -2.85 + oy, 0.0), (-2.9 + ox, -2.2 + oy, 0.8), rng, 0.95)
        ox, oy = j(), j()
        self._add_box((3.2 + ox, -2.75 + oy, 0.0), (3.7 + ox, -2.25 + oy, 2.2), rng, 1.0)  # pillar

    def _build_wall_relief(self, rng: np.random.Generator) -> None:
        """Cabinets and shelves against the walls, 0.12-0.3 m deep.

        Without them most views are dominated by one flat wall, a near-degenerate
        configuration for two-view geometry (a plane seen over a small baseline); the relief
        gives depth variation in every view while staying clear of all trajectories.
        """
        sx, sy, sz = ROOM_SIZE_M
        hx, hy = sx / 2, sy / 2
        # (wall position along its normal axis, axis index of the wall normal, sign of the
        #  normal pointing into the room, free span along the wall)
        walls = [(hy, 1, -1.0, (-2.6, 2.7)), (-hy, 1, 1.0, (-2.6, 2.7)),
                 (hx, 0, -1.0, (-1.9, 1.9)), (-hx, 0, 1.0, (-1.9, 1.9))]
        for pos, axis, inward, (lo_s, hi_s) in walls:
            s = lo_s + rng.uniform(0.0, 0.5)
            while True:
                width = rng.uniform(0.4, 1.1)
                if s + width > hi_s:
                    break
                depth = rng.uniform(0.12, 0.3)
                if rng.random() < 0.5:  # floor-standing cabinet
                    z0, z1 = 0.0, rng.uniform(0.6, 2.2)
                else:                   # hanging shelf
                    z0 = rng.uniform(0.8, 1.6)
                    z1 = z0 + rng.uniform(0.3, 0.7)
                face_in = pos + inward * depth
                n0, n1 = sorted((pos, face_in))
                if axis == 1:
                    lo, hi = (s, n0, z0), (s + width, n1, z1)
                    back = "+y" if pos > 0 else "-y"
                else:
                    lo, hi = (n0, s, z0), (n1, s + width, z1)
                    back = "+x" if pos > 0 else "-x"
                skip = (back, "-z") if z0 == 0.0 else (back,)
                self._add_box(lo, hi, rng, rng.uniform(0.85, 1.1), skip)
                s += width + rng.uniform(0.2, 0.7)

    # -- rendering --------------------------------------------------------------------------

    def _rays(self, K: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalised image coordinates: xs (W,) = (u - cx) / fx and ys (H,) = (v - cy) / fy.

        The ray of pixel (u, v) is d = (xs[u], ys[v], 1) in the camera frame: with z = 1 the
        ray parameter of a hit is directly its depth.
        """
        key = (K.tobytes(), int(width), int(height))
        if key not in self._ray_cache:
            xs = ((np.arange(width) - K[0, 2]) / K[0, 0]).astype(np.float32)
            ys = ((np.arange(height) - K[1, 2]) / K[1, 1]).astype(np.float32)
            self._ray_cache[key] = (xs, ys)
        return self._ray_cache[key]

    @staticmethod
    def _screen_bbox(corners_cam: np.ndarray, K: np.ndarray, width: int, height: int,
                     near: float) -> tuple[int, int, int, int] | None:
        """Pixel bbox (x0, y0, x1, y1), end-exclusive, of a convex polygon (camera frame).

        The polygon is clipped against z >= near first (Sutherland-Hodgman), so planes that
        pass behind the camera get a correct, bounded box. None when nothing is in view.
        """
        pts = []
        n = len(corners_cam)
        for i in range(n):
            p, q = corners_cam[i], corners_cam[(i + 1) % n]
            if p[2] >= near:
                pts.append(p)
            if (p[2] >= near) != (q[2] >= near):
                s = (near - p[2]) / (q[2] - p[2])
                pts.append(p + s * (q - p))
        if not pts:
            return None
        P = np.asarray(pts)
        u = K[0, 0] * P[:, 0] / P[:, 2] + K[0, 2]
        v = K[1, 1] * P[:, 1] / P[:, 2] + K[1, 2]
        x0 = max(0, int(np.floor(u.min())) - 1)
        x1 = min(width, int(np.ceil(u.max())) + 2)
        y0 = max(0, int(np.floor(v.min())) - 1)
        y1 = min(height, int(np.ceil(v.max())) + 2)
        if x0 >= x1 or y0 >= y1:
            return None
        return x0, y0, x1, y1

    def render(self, T_world_cam: np.ndarray, K: np.ndarray, width: int,
               height: int) -> tuple[np.ndarray, np.ndarray]:
        """Ray cast one view.

        T_world_cam: (4, 4) camera-to-world pose of an optical-frame camera; K: (3, 3).
        Returns rgb (height, width, 3) uint8 and depth (height, width) float32: z in the camera
        frame in metres (inf where a ray hits nothing, which cannot happen inside the room).
        """
        K = np.asarray(K, dtype=np.float64)
        T = np.asarray(T_world_cam, dtype=np.float64)
        R, c = T[:3, :3], T[:3, 3]
        xs, ys = self._rays(K, width, height)
        near = 1e-3
        eps = 1e-4  # metres of overlap at plane borders so no ray slips between two planes

        depth = np.full((height, width), np.inf, np.float32)
        pid = np.full((height, width), -1, np.int16)
        tex_a = np.zeros((height, width), np.float32)
        tex_b = np.zeros((height, width), np.float32)

        for k, pl in enumerate(self.planes):
            if np.dot(c - pl.origin, pl.normal) <= 0:  # back face (camera on the hidden side)
                continue
            corners_cam = (pl.corners - c) @ R  # (4, 3) = R^T (X - c)
            box = self._screen_bbox(corners_cam, K, width, height, near)
            if box is None:
                continue
            x0, y0, x1, y1 = box
            X = xs[None, x0:x1]
            Y = ys[y0:y1, None]
            # Everything in camera coordinates: n_c . d, with d = (X, Y, 1).
            n_c, u_c, v_c = (R.T @ pl.normal), (R.T @ pl.u), (R.T @ pl.v)
            denom = n_c[0] * X + n_c[1] * Y + np.float32(n_c[2])
            co = c - pl.origin
            # Rays parallel to the plane give t = +-inf and a, b = nan: they fail every test
            # below, which is all that is needed.
            with np.errstate(divide="ignore", invalid="ignore"):
                t = np.float32(np.dot(pl.normal, -co)) / denom
                a = np.float32(co @ pl.u) + t * (u_c[0] * X + u_c[1] * Y + np.float32(u_c[2]))
                b = np.float32(co @ pl.v) + t * (v_c[0] * X + v_c[1] * Y + np.float32(v_c[2]))
            zb = depth[y0:y1, x0:x1]
            hit = ((t > near) & (t < zb) & (a >= -eps) & (a <= pl.size_u + eps)
                   & (b >= -eps) & (b <= pl.size_v + eps))
            np.copyto(zb, t, where=hit)
            np.copyto(pid[y0:y1, x0:x1], np.int16(k), where=hit)
            np.copyto(tex_a[y0:y1, x0:x1], a, where=hit)
            np.copyto(tex_b[y0:y1, x0:x1], b, where=hit)

        rgb = np.zeros((height * width, 3), np.float32)
        f = float(np.sqrt(K[0, 0] * K[1, 1]))
        # Group pixels by plane with one sort instead of one full-image comparison per plane.
        pid_flat = pid.ravel()
        order = np.argsort(pid_flat, kind="stable")
        bounds = np.searchsorted(pid_flat[order], np.arange(-1, len(self.planes) + 1))
        for k in range(len(self.planes)):
            sel = order[bounds[k + 1]:bounds[k + 2]]
            if len(sel) == 0:
                continue
            pl = self.planes[k]
            rows, cols = np.divmod(sel, width)
            z = depth.ravel()[sel]
            a = tex_a.ravel()[sel]
            b = tex_b.ravel()[sel]
            # Mip level from the pixel footprint on the surface: z / f metres across the ray,
            # stretched by 1 / cos(incidence) along the slant (capped: floors at grazing
            # angles would otherwise blur to nothing).
            n_c = R.T @ pl.normal
            dx, dy = xs[cols], ys[rows]
            cos_inc = np.abs(n_c[0] * dx + n_c[1] * dy + n_c[2]) / np.sqrt(dx * dx + dy * dy + 1.0)
            footprint = z / (f * np.maximum(cos_inc, 0.3))
            level = np.log2(np.maximum(footprint / TEXEL_M, 1e-6))
            rgb[sel] = self._sample_trilinear(pl, a, b, level)
        img = np.clip(rgb + 0.5, 0, 255).astype(np.uint8).reshape(height, width, 3)
        return img, depth

    @staticmethod
    def _sample_trilinear(pl: Plane, a: np.ndarray, b: np.ndarray, level: np.ndarray) -> np.ndarray:
        """Trilinear (bilinear within, linear across mip levels) sampling; returns (N, 3) float32.

        a, b: (N,) surface coordinates in metres; level: (N,) fractional mip level.
        """
        nlev = len(pl.levels)
        level = np.clip(level, 0.0, max(nlev - 1 - 1e-4, 0.0)).astype(np.float32)
        l0 = np.floor(level).astype(np.int32)
        frac = (level - l0)[:, None]
        out = np.empty((len(a), 3), np.float32)

        def sample(lv: int, idx: np.ndarray) -> np.ndarray:
            tex = pl.levels[lv]
            h, w = tex.shape[:2]
            # Texel i covers [i, i+1) * (size / w): its centre is at coordinate i.
            n = len(idx)
            # cv2.remap wants maps with < 32767 rows/cols: lay the N samples out as rows of 1024.
            cols = 1024
            rows = -(-n // cols)
            mx = np.zeros(rows * cols, np.float32)
            my = np.zeros(rows * cols, np.float32)
            mx[:n] = a[idx] * (w / pl.size_u) - 0.5
            my[:n] = b[idx] * (h / pl.size_v) - 0.5
            s = cv2.remap(tex, mx.reshape(rows, cols), my.reshape(rows, cols), cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)
            return s.reshape(-1, 3)[:n].astype(np.float32)

        for lv in np.unique(l0):
            idx = np.flatnonzero(l0 == lv)
            s0 = sample(int(lv), idx)
            if lv + 1 < nlev:
                s1 = sample(int(lv) + 1, idx)
                out[idx] = s0 + frac[idx] * (s1 - s0)
            else:
                out[idx] = s0
        return out


# --------------------------------------------------------------------------------------------
# Trajectories
# --------------------------------------------------------------------------------------------

class _Path:
    """Closed planar path made of straight lines and circular arcs, evaluated by arc length.

    Segments: ("line", start (2,), heading rad, length m) or
    ("arc", centre (2,), radius m, start angle rad, signed sweep rad; + = counter-clockwise).
    Headings are continuous across segments, so the camera yaw is smooth; the yaw rate on an
    arc is speed / radius.
    """

    def __init__(self, segments: list[tuple]) -> None:
        self.segments = segments
        lengths = [seg[3] if seg[0] == "line" else seg[2] * abs(seg[4]) for seg in segments]
        self.starts = np.concatenate([[0.0], np.cumsum(lengths)])
        self.length = float(self.starts[-1])

    def at(self, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Position (N, 2) metres and heading (N,) radians at arc lengths d (N,) (wrapped)."""
        d = np.asarray(d, dtype=np.float64) % self.length
        pos = np.empty(d.shape + (2,))
        heading = np.empty(d.shape)
        k = np.clip(np.searchsorted(self.starts, d, side="right") - 1, 0, len(self.segments) - 1)
        for i, seg in enumerate(self.segments):
            m = k == i
            s = d[m] - self.starts[i]
            if seg[0] == "line":
                _, p0, th, _ = seg
                pos[m] = np.asarray(p0) + s[:, None] * np.array([np.cos(th), np.sin(th)])
                heading[m] = th
            else:
                _, c, r, phi0, sweep = seg
                sign = np.sign(sweep)
                phi = phi0 + sign * s / r
                pos[m] = np.asarray(c) + r * np.stack([np.cos(phi), np.sin(phi)], -1)
                heading[m] = phi + sign * np.pi / 2
        return pos, heading


def _path(kind: str) -> tuple[_Path, float]:
    """The closed path of a trajectory kind and its look offset (radians).

    The look offset is added to the path heading to get the camera yaw: 0 looks along the
    motion (forward), -pi/2 looks to the right, i.e. outwards on a counter-clockwise circle.
    All paths stay within x in [-2.4, 2.4], y in [-1.2, 1.2] (the boxes sit in the room's
    corners beyond that) and turn with radii >= 1.1 m, so at 0.5 m/s the yaw rate is
    <= 26 deg/s. The z-depth of everything in view stays within ~1.3-6.2 m (the minimum is
    reached at image edges on walls seen obliquely; 'forward' stays >= 1.5 m).
    """
    if kind == "orbit":
        # Circle of 1.1 m (counter-clockwise) looking outward at the walls, 45 deg ahead of
        # sideways: purely sideways motion with yaw is the worst case for two-view pose (the
        # rotation / translation ambiguity lets RANSAC trade ~1.3 deg of yaw for a wrong
        # translation at 5 cm baselines); half forward keeps it well conditioned.
        return _Path([("arc", (0.0, 0.0), 1.1, 0.0, 2 * np.pi)]), -np.pi / 4
    if kind == "forward":
        # Stadium: straights of 2 m along x at y = -+1.2, joined by half circles of 1.2 m.
        hs, r = 1.0, 1.2
        return _Path([("line", (-hs, -r), 0.0, 2 * hs),
                      ("arc", (hs, 0.0), r, -np.pi / 2, np.pi),
                      ("line", (hs, r), np.pi, 2 * hs),
                      ("arc", (-hs, 0.0), r, np.pi / 2, np.pi)]), 0.0
    if kind == "figure8":
        # Two 1.1 m circles centred at (+-1.3, 0) joined by their internal tangents, which
        # cross at the origin: a figure eight of 4.8 m x 2.2 m.
        dc, r = 1.3, 1.1
        alpha = np.arcsin(r / dc)          # tangent direction through the origin
        ll = np.sqrt(dc * dc - r * r)      # origin -> tangent point
        phi1 = np.arctan2(ll * np.sin(alpha), ll * np.cos(alpha) - dc)  # tangent point angle
        t4 = (-ll * np.cos(alpha), -ll * np.sin(alpha))
        t2 = (ll * np.cos(alpha), -ll * np.sin(alpha))
        return _Path([("line", t4, alpha, 2 * ll),
                      ("arc", (dc, 0.0), r, phi1, -2 * phi1),      # clockwise round the right
                      ("line", t2, np.pi - alpha, 2 * ll),
                      ("arc", (-dc, 0.0), r, np.pi - phi1, 2 * phi1)]), 0.0  # ccw, left
    raise ValueError(f"unknown trajectory kind {kind!r}; use 'orbit', 'forward' or 'figure8'")


def make_trajectory(kind: str = "orbit", n_frames: int = 100, rate_hz: float = 10.0,
                    seed: int = 0, speed_mps: float = 0.5,
                    start_ns: int = DEFAULT_START_NS,
                    look_deg: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Smooth camera path inside the room at constant ground speed.

    kind: 'orbit' (circle, looking outward 45 deg ahead of sideways), 'forward' (stadium loop,
    looking ahead) or 'figure8' (two circles joined by crossing straights, looking ahead).
    look_deg overrides the camera yaw relative to the direction of travel (0 = ahead,
    -90 = right, which is outward on the counter-clockwise orbit). The seed picks the
    start point on the loop and the phases of a gentle height bob (+-8 cm), pitch (+-4 deg)
    and roll (+-2 deg) wobble. The yaw rate is speed_mps / 1.1 m at most (26 deg/s at the
    default 0.5 m/s).
    Returns T_world_cam (n_frames, 4, 4) float64 left-camera poses (optical frame) and
    stamps_ns (n_frames,) int64, spaced 1e9 / rate_hz from `start_ns`.
    """
    path, look_offset = _path(kind)
    if look_deg is not None:
        look_offset = np.deg2rad(look_deg)
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames) / float(rate_hz)
    pos, heading = path.at(rng.uniform(0, path.length) + speed_mps * t)

    ph = rng.uniform(0, 2 * np.pi, size=3)
    height = CAM_HEIGHT_M + 0.08 * np.sin(2 * np.pi * t / 7.0 + ph[0])
    pitch = np.deg2rad(4.0) * np.sin(2 * np.pi * t / 9.0 + ph[1])
    roll = np.deg2rad(2.0) * np.sin(2 * np.pi * t / 11.0 + ph[2])

    poses = np.empty((n_frames, 4, 4))
    for i in range(n_frames):
        poses[i] = camera_pose(np.array([pos[i, 0], pos[i, 1], height[i]]),
                               heading[i] + look_offset, pitch[i], roll[i])
    stamps = start_ns + np.round(np.arange(n_frames) * 1e9 / rate_hz).astype(np.int64)
    return poses, stamps


# --------------------------------------------------------------------------------------------
# Sequences
# --------------------------------------------------------------------------------------------

@dataclass
class SyntheticFrame:
    """One rendered (stereo) frame with ground truth.

    stamp_ns: int64 nanoseconds; left / right: (H, W, 3) uint8 RGB (right is None for mono);
    T_world_left: (4, 4) camera-to-world pose of the left optical frame; K: (3, 3) shared by
    both cameras; depth: (H, W) float32 z-depth of the left image in metres; index: frame number.
    """

    stamp_ns: int
    left: np.ndarray
    right: np.ndarray | None
    T_world_left: np.ndarray
    K: np.ndarray
    depth: np.ndarray | None = None
    index: int = 0


class SyntheticSequence:
    """Lazily rendered sequence: iterating renders one frame at a time (nothing is kept).

    Ground truth is available without rendering: `poses_world_left` (N, 4, 4),
    `stamps_ns` (N,), `rig` and :meth:`relative_pose`.
    """

    def __init__(self, scene: SyntheticScene, rig: StereoRig, poses_world_left: np.ndarray,
                 stamps_ns: np.ndarray, stereo: bool = True, noise_std: float = 0.0,
                 seed: int = 0) -> None:
        self.scene = scene
        self.rig = rig
        self.poses_world_left = poses_world_left
        self.stamps_ns = stamps_ns
        self.stereo = stereo
        self.noise_std = float(noise_std)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.stamps_ns)

    def _noisy(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.noise_std <= 0:
            return img
        n = rng.normal(0.0, self.noise_std, img.shape)
        return np.clip(img + n + 0.5, 0, 255).astype(np.uint8)

    def frame(self, i: int) -> SyntheticFrame:
        """Render frame i (deterministic: the sensor noise is seeded per frame)."""
        T_wl = self.poses_world_left[i]
        K, w, h = self.rig.K, self.rig.width, self.rig.height
        rng = np.random.default_rng((self.seed, i))
        left, depth = self.scene.render(T_wl, K, w, h)
        right = None
        if self.stereo:
            right, _ = self.scene.render(self.rig.T_world_right(T_wl), K, w, h)
            right = self._noisy(right, rng)
        return SyntheticFrame(int(self.stamps_ns[i]), self._noisy(left, rng), right,
                              T_wl.copy(), K.copy(), depth, i)

    def __iter__(self) -> Iterator[SyntheticFrame]:
        for i in range(len(self)):
            yield self.frame(i)

    def relative_pose(self, i: int, j: int) -> np.ndarray:
        """T_cj_ci (4, 4): left camera i -> left camera j (x_j = R x_i + t)."""
        return relative_pose(self.poses_world_left[i], self.poses_world_left[j])


def make_sequence(n_frames: int = 100, rate_hz: float = 10.0, width: int = 640,
                  height: int = 480, stereo: bool = True, trajectory: str = "orbit",
                  seed: int = 0, baseline_m: float = 0.11, hfov_deg: float = 70.0,
                  speed_mps: float = 0.5, noise_std: float = 0.0,
                  start_ns: int = DEFAULT_START_NS, look_deg: float | None = None,
                  scene: SyntheticScene | None = None) -> SyntheticSequence:
    """A lazily rendered synthetic (stereo) sequence in the textured room.

    Iterate the result for :class:`SyntheticFrame` objects; `.rig` is the :class:`StereoRig`.
    noise_std: optional Gaussian sensor noise (grey levels) added to the uint8 images.
    `scene` lets callers reuse an already built :class:`SyntheticScene` (building one takes
    a fraction of a second); otherwise one is built from `seed`.
    """
    K = default_K(width, height, hfov_deg)
    rig = StereoRig(K, width, height, baseline_m)
    poses, stamps = make_trajectory(trajectory, n_frames, rate_hz, seed, speed_mps, start_ns,
                                    look_deg)
    return SyntheticSequence(scene if scene is not None else SyntheticScene(seed), rig,
                             poses, stamps, stereo, noise_std, seed)


# --------------------------------------------------------------------------------------------
# Homography pairs
# --------------------------------------------------------------------------------------------

def warp_photo_pair(name: str = "astronaut", H: np.ndarray | None = None,
                    size: tuple[int, int] = (640, 480),
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A photo and its warp by a homography, for matching-only checks.

    name: one of PHOTO_NAMES; size: (width, height) of both images. H: (3, 3) mapping img0
    pixels to img1 pixels (x1 ~ H x0); when None a random, moderate one is drawn from `seed`
    (corners moved by up to 12 % of the image size, +-15 deg rotation, 0.85-1.15 scale).
    Returns img0, img1 (uint8 RGB (height, width, 3); img1 is black where img0 has no
    pre-image) and H (float64).
    """
    w, h = size
    rng = np.random.default_rng(seed)
    img0 = _crop_resize(load_photo(name), w, h, np.random.default_rng(seed + 1))
    if H is None:
        src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
        ang = np.deg2rad(rng.uniform(-15, 15))
        scale = rng.uniform(0.85, 1.15)
        centre = np.array([(w - 1) / 2, (h - 1) / 2])
        Rm = scale * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        dst = (src - centre) @ Rm.T + centre
        dst += rng.uniform(-0.12, 0.12, size=(4, 2)) * np.array([w, h])
        H = cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32))
    H = np.asarray(H, dtype=np.float64)
    img1 = cv2.warpPerspective(img0, H, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return img0, img1, H


# --------------------------------------------------------------------------------------------
# Raw (distorted, unrectified) views
# --------------------------------------------------------------------------------------------

def raw_camera_view(rect_image: np.ndarray, K_rect: np.ndarray, K_raw: np.ndarray, D_raw: np.ndarray,
                    R: np.ndarray, model: str = "plumb_bob") -> np.ndarray:
    """The image a raw camera sees of a rectified view: the inverse of image_proc's rectify.

    rect_image: (H, W[, C]) image of the rectified pinhole ``K_rect`` (3, 3). The raw camera has intrinsics
    ``K_raw`` (3, 3), distortion ``D_raw`` of ``model`` (``plumb_bob``, or ``equidistant``: a fisheye lens, 4
    coefficients) and is turned from the rectified camera by ``R`` (camera_info R: ``x_rect = R x_raw``, same
    centre). Each raw pixel samples the rectified image where its ray lands (bilinear), so a camera_info
    (K_raw, D_raw, model, R, P = [K_rect | Tx]) describes the result.
    Raises ValueError when the raw camera sees outside the rectified view (choose a narrower K_raw).
    """
    h, w = rect_image.shape[:2]
    grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)), -1).reshape(-1, 1, 2)
    K_raw, D_raw, R, K_rect = (np.asarray(a, np.float64) for a in (K_raw, D_raw, R, K_rect))
    if model == "equidistant":
        src = cv2.fisheye.undistortPoints(grid, K_raw, D_raw, R=R, P=K_rect)
    else:
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 1e-10)
        src = cv2.undistortPointsIter(grid, K_raw, D_raw, R, K_rect, criteria)
    src = src.reshape(h, w, 2).astype(np.float32)
    if src[..., 0].min() < 0 or src[..., 0].max() > w - 1 or src[..., 1].min() < 0 or src[..., 1].max() > h - 1:
        raise ValueError("the raw camera sees outside the rectified view: choose a narrower K_raw")
    return cv2.remap(rect_image, src[..., 0], src[..., 1], cv2.INTER_LINEAR)
