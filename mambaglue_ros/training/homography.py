"""Synthetic homography pairs from single photos, and ground-truth assignments from a homography.

As in LightGlue's homography pre-training (Lindenberger et al., ICCV 2023, after SuperPoint): two views of
one photo are cut out by two random homographies (perspective, scale, rotation, translation) and get
independent photometric augmentation; the homography between the views is known exactly, so every
keypoint has its ground-truth position in the other view.

Everything here is a pure function of its inputs: ``make_pair(image, seed, difficulty)`` always returns
the same views and the same H for the same (image, seed, difficulty).

Conventions: pixel coordinates (x, y) with pixel centres at integers; ``H_0to1`` maps view-0 pixels to
view-1 pixels, ``p1 ~ H_0to1 @ [x0, y0, 1]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

DEFAULT_SIZE = (640, 480)  # (width, height) of both views
MAX_ANGLE_DEG = 45.0


@dataclass
class HomographyPair:
    """Two views and the homography between them.

    image0, image1: uint8 RGB (height, width, 3); H_0to1: (3, 3) float64, view-0 pixels -> view-1 pixels.
    H0, H1: (3, 3) view pixels -> source-photo pixels (for checks); seed, difficulty: what made it.
    """

    image0: np.ndarray
    image1: np.ndarray
    H_0to1: np.ndarray
    H0: np.ndarray
    H1: np.ndarray
    seed: int
    difficulty: float


# ------------------------------------------------------------------------------------------ geometry
def warp_points(points: np.ndarray, H: np.ndarray) -> np.ndarray:
    """(N, 2) points through a homography (N, 2); points that map to infinity come back as inf."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    hom = np.concatenate([pts, np.ones((len(pts), 1))], 1) @ np.asarray(H, dtype=np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        out = hom[:, :2] / hom[:, 2:3]
    out[~np.isfinite(out).all(1) | (hom[:, 2] <= 1e-12)] = np.inf
    return out


def warp_points_torch(points: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """(..., N, 2) points through (..., 3, 3) homographies, in float64; points behind the camera -> inf."""
    pts = points.double()
    hom = torch.cat([pts, torch.ones_like(pts[..., :1])], -1) @ H.double().transpose(-1, -2)
    z = hom[..., 2:3]
    out = hom[..., :2] / z
    return torch.where((z > 1e-12) & torch.isfinite(out), out, torch.full_like(out, float("inf")))


def _view_homography(rng: np.random.Generator, img_w: int, img_h: int, out_w: int, out_h: int,
                     difficulty: float, rotate: bool, centre: np.ndarray | None,
                     max_angle_deg: float = MAX_ANGLE_DEG) -> np.ndarray:
    """Homography from view pixels to photo pixels for one random view.

    The view is a quadrilateral in the photo: the largest rectangle of the view's aspect that fits,
    scaled down by up to 50 % * difficulty (zoom), its corners moved by up to 20 % * difficulty of the
    half-size (perspective), rotated by up to ``max_angle_deg * difficulty`` (when ``rotate``), placed so
    it stays inside the photo, near ``centre`` when one is given (so that two views overlap).
    """
    aspect = out_w / out_h
    base_w = min(img_w, img_h * aspect)
    base_h = base_w / aspect
    d = float(np.clip(difficulty, 0.0, 1.0))
    scale = rng.uniform(1.0 - 0.5 * d, 1.0)
    persp = rng.uniform(-1.0, 1.0, size=(4, 2)) * 0.2 * d
    angle = np.deg2rad(rng.uniform(-1.0, 1.0) * max_angle_deg * d) if rotate else 0.0
    offset = rng.uniform(-1.0, 1.0, size=2)  # where in the feasible range the centre goes
    unit = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)  # tl, tr, br, bl
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    # Shrink until the rotated, perturbed quadrilateral fits (it always does at a small enough scale).
    for _ in range(60):
        half = 0.5 * np.array([base_w, base_h]) * scale
        quad = ((unit + persp) * half) @ rot.T  # relative to the centre
        lo = -quad.min(0)  # feasible centre range: [lo, hi] so that every corner is inside the photo
        hi = np.array([img_w - 1.0, img_h - 1.0]) - quad.max(0)
        if np.all(hi >= lo):
            break
        scale *= 0.92
    else:  # pragma: no cover - would need a degenerate photo
        raise ValueError(f"cannot place a {out_w}x{out_h} view in a {img_w}x{img_h} photo")
    if centre is None:
        c = lo + (offset + 1.0) / 2.0 * (hi - lo)
    else:  # near the other view's centre: shift by up to 25 % * difficulty of the view size
        c = np.clip(centre + offset * 0.25 * d * np.array([base_w, base_h]) * scale, lo, hi)
    src = np.array([[0, 0], [out_w - 1, 0], [out_w - 1, out_h - 1], [0, out_h - 1]], dtype=np.float32)
    dst = (quad + c).astype(np.float32)
    return cv2.getPerspectiveTransform(src, dst).astype(np.float64)


# ------------------------------------------------------------------------------------------ photometry
def photometric_augment(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Brightness, contrast, saturation, gamma, Gaussian blur (sometimes) and Gaussian noise; uint8 RGB in/out."""
    s = float(strength)
    x = image.astype(np.float32)
    gray = x.mean(-1, keepdims=True)
    x = gray + (x - gray) * rng.uniform(1 - 0.4 * s, 1 + 0.4 * s)  # saturation
    x = (x - x.mean()) * rng.uniform(1 - 0.35 * s, 1 + 0.35 * s) + x.mean()  # contrast
    x = x + rng.uniform(-40, 40) * s  # brightness
    x = 255.0 * (np.clip(x, 0, 255) / 255.0) ** rng.uniform(1 - 0.3 * s, 1 + 0.3 * s)  # gamma
    if rng.random() < 0.5 * s:
        sigma = rng.uniform(0.3, 1.5)
        x = cv2.GaussianBlur(x, (0, 0), sigmaX=sigma)
    noise_std = rng.uniform(0, 8.0) * s
    x = x + rng.normal(0.0, 1.0, size=x.shape).astype(np.float32) * noise_std
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _photo_and_rng(image: np.ndarray, seed: int, stream: int) -> tuple[np.ndarray, np.random.Generator]:
    """The photo as contiguous uint8 RGB, and the generator of one pair (``stream`` tells pair kinds apart)."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32, stream]))
    return np.ascontiguousarray(image[..., :3]), rng


def _render_views(image: np.ndarray, Hs: tuple[np.ndarray, ...], size: tuple[int, int], rng: np.random.Generator,
                  photometric: float) -> list[np.ndarray]:
    """One view per homography (view pixels -> photo pixels), each with its own photometric augmentation."""
    views = []
    for H in Hs:
        # warpPerspective with WARP_INVERSE_MAP: view(x) = photo(H x), H = view -> photo
        view = cv2.warpPerspective(image, H, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                   borderMode=cv2.BORDER_REFLECT101)
        views.append(photometric_augment(view, rng, photometric) if photometric > 0 else view)
    return views


def make_pair(image: np.ndarray, seed: int, difficulty: float = 0.8, size: tuple[int, int] = DEFAULT_SIZE,
              photometric: float = 1.0) -> HomographyPair:
    """Two views of ``image`` (uint8 RGB/gray) with their homography; a pure function of its arguments.

    difficulty in [0, 1] scales zoom, perspective, rotation (up to 45 deg at 1) and the offset between
    the views; view 0 is a mild view (half the difficulty, no rotation), view 1 the full one.
    photometric: strength of the photometric augmentation (0 = none), drawn independently per view.
    """
    image, rng = _photo_and_rng(image, seed, 0x4D47)
    out_w, out_h = int(size[0]), int(size[1])
    img_h, img_w = image.shape[:2]
    H0 = _view_homography(rng, img_w, img_h, out_w, out_h, 0.5 * difficulty, rotate=False, centre=None)
    c0 = warp_points(np.array([[(out_w - 1) / 2, (out_h - 1) / 2]]), H0)[0]
    H1 = _view_homography(rng, img_w, img_h, out_w, out_h, difficulty, rotate=True, centre=c0)
    views = _render_views(image, (H0, H1), (out_w, out_h), rng, photometric)
    H_0to1 = np.linalg.inv(H1) @ H0
    H_0to1 /= H_0to1[2, 2]
    return HomographyPair(views[0], views[1], H_0to1, H0, H1, int(seed), float(difficulty))


# Video-like motion between consecutive frames (what the node matches): small rotation, zoom, shift, tilt.
VIDEO_MAX_ANGLE_DEG = 3.0
VIDEO_MAX_ZOOM = 0.07  # scale in [1 - z, 1 + z]
VIDEO_MAX_SHIFT = 0.06  # fraction of the view size
VIDEO_MAX_TILT = 0.02  # corner displacement, fraction of the view size


def make_video_pair(image: np.ndarray, seed: int, size: tuple[int, int] = DEFAULT_SIZE,
                    photometric: float = 1.0) -> HomographyPair:
    """Two views of ``image`` related by a small, video-like motion; a pure function of its arguments.

    View 0 is a mild random view (as in ``make_pair`` at difficulty 0.8); view 1 is view 0 moved by up to
    ±3° rotation, ±7 % zoom, ±6 % shift and 2 % corner tilt, as between consecutive frames of a moving camera
    (large overlap, small motion: the pairs on which early exit should fire). Consecutive frames share their
    exposure, so the photometric change between the views is half as strong as in ``make_pair``.
    """
    image, rng = _photo_and_rng(image, seed, 0x56494430)
    out_w, out_h = int(size[0]), int(size[1])
    img_h, img_w = image.shape[:2]
    H0 = _view_homography(rng, img_w, img_h, out_w, out_h, 0.4, rotate=False, centre=None)
    wh = np.array([out_w - 1.0, out_h - 1.0])
    corners = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64) * wh
    angle = np.deg2rad(rng.uniform(-1, 1) * VIDEO_MAX_ANGLE_DEG)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    scale = 1.0 + rng.uniform(-1, 1) * VIDEO_MAX_ZOOM
    centre = wh / 2
    quad = (corners - centre) @ rot.T * scale + centre + rng.uniform(-1, 1, 2) * VIDEO_MAX_SHIFT * wh
    quad += rng.uniform(-1, 1, (4, 2)) * VIDEO_MAX_TILT * wh
    # view-1 pixels -> view-0 pixels, then view 0 -> photo
    H_1to0 = cv2.getPerspectiveTransform(corners.astype(np.float32), quad.astype(np.float32)).astype(np.float64)
    H1 = H0 @ H_1to0
    views = _render_views(image, (H0, H1), (out_w, out_h), rng, 0.5 * photometric)
    H_0to1 = np.linalg.inv(H_1to0)
    H_0to1 /= H_0to1[2, 2]
    return HomographyPair(views[0], views[1], H_0to1, H0, H1, int(seed), 0.0)


# ------------------------------------------------------------------------------------------ ground truth
def gt_matches_from_homography(kpts0: torch.Tensor, kpts1: torch.Tensor, H_0to1: torch.Tensor,
                               pos_th: float = 3.0, neg_th: float = 5.0,
                               valid0: torch.Tensor | None = None, valid1: torch.Tensor | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth assignment of two keypoint sets under a homography (LightGlue's rule).

    kpts0 (B, M, 2), kpts1 (B, N, 2) pixels; H_0to1 (B, 3, 3). The keypoints' positions in the other view
    are their warps by H and H^-1; the rule is ``gt_matches_from_projections``'s.
    """
    H = H_0to1.double()
    return gt_matches_from_projections(kpts0, kpts1, warp_points_torch(kpts0, H),
                                       warp_points_torch(kpts1, torch.linalg.inv(H)), pos_th, neg_th, valid0, valid1)


def gt_matches_from_projections(kpts0: torch.Tensor, kpts1: torch.Tensor, kp0_1: torch.Tensor, kp1_0: torch.Tensor,
                                pos_th: float = 3.0, neg_th: float = 5.0,
                                valid0: torch.Tensor | None = None, valid1: torch.Tensor | None = None
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth assignment of two keypoint sets from each keypoint's true position in the other view.

    kpts0 (B, M, 2), kpts1 (B, N, 2) pixels; kp0_1 (B, M, 2): kpts0 in view 1, kp1_0 (B, N, 2): kpts1 in view
    0 (a homography warp, or a depth projection with NaN / inf where the point is hidden or has no
    position). Distance of (i, j) = the larger of the two reprojection errors ||kp0_1_i - k1_j|| and
    ||k0_i - kp1_0_j|| (so it is symmetric in the views). (i, j) is a match when they are mutual nearest
    neighbours under that distance and it is < pos_th; a point whose nearest candidate is farther than
    neg_th (in both directions, by the max) is unmatched. Everything between is ambiguous and ignored by
    the loss. valid0/1 (B, M)/(B, N) mark real points in padded batches (padding is labelled ignored).

    Returns gt_matches0 (B, M) and gt_matches1 (B, N), long: index of the partner, -1 = unmatched
    (dustbin), -2 = ignored.
    """
    b, m = kpts0.shape[:2]
    n = kpts1.shape[1]
    if m == 0 or n == 0:
        return (torch.full((b, m), -1, dtype=torch.long, device=kpts0.device),
                torch.full((b, n), -1, dtype=torch.long, device=kpts0.device))
    dist0 = (kp0_1.double()[:, :, None] - kpts1.double()[:, None]).norm(dim=-1)
    dist1 = (kpts0.double()[:, :, None] - kp1_0.double()[:, None]).norm(dim=-1)
    dist = torch.maximum(dist0, dist1)
    dist = torch.where(torch.isnan(dist), torch.full_like(dist, float("inf")), dist)
    if valid0 is not None:
        dist = dist.masked_fill(~valid0[:, :, None], float("inf"))
    if valid1 is not None:
        dist = dist.masked_fill(~valid1[:, None, :], float("inf"))
    min0, arg0 = dist.min(-1)  # (B, M)
    min1, arg1 = dist.min(-2)  # (B, N)
    idx0 = torch.arange(m, device=kpts0.device)[None].expand(b, m)
    idx1 = torch.arange(n, device=kpts0.device)[None].expand(b, n)
    mutual0 = arg1.gather(1, arg0) == idx0
    mutual1 = arg0.gather(1, arg1) == idx1
    pos0 = mutual0 & (min0 < pos_th)
    pos1 = mutual1 & (min1 < pos_th)
    m0 = torch.where(pos0, arg0, torch.where(min0 > neg_th, -1, -2))
    m1 = torch.where(pos1, arg1, torch.where(min1 > neg_th, -1, -2))
    if valid0 is not None:
        m0 = m0.masked_fill(~valid0, -2)
    if valid1 is not None:
        m1 = m1.masked_fill(~valid1, -2)
    return m0.long(), m1.long()


def gt_assignment(gt_matches0: torch.Tensor, n: int) -> torch.Tensor:
    """(B, M) partner indices -> (B, M, N) bool positive-pair matrix."""
    b, m = gt_matches0.shape
    out = torch.zeros((b, m, n), dtype=torch.bool, device=gt_matches0.device)
    pos = gt_matches0 >= 0
    bi, mi = torch.where(pos)
    out[bi, mi, gt_matches0[bi, mi]] = True
    return out
