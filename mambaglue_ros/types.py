"""Plain data types shared by the core, the node and the tools."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch


def check_alpha(value: float | None) -> float | None:
    """An early-exit threshold as the matchers take it: None (exit off) or a float in (0, 1]."""
    if value is not None and not 0.0 < float(value) <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {value}")
    return None if value is None else float(value)


def check_max_keypoints(value: int) -> int:
    """A keypoint budget as the matchers take it: an int >= 1 (a whole float such as 512.0 is taken)."""
    try:
        whole = not isinstance(value, bool) and int(value) == value
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole or int(value) < 1:
        raise ValueError(f"max_keypoints must be an integer >= 1, got {value!r}")
    return int(value)


def check_resize_max(value: int | None) -> int | None:
    """A longer-side cap as the front ends take it: None or 0 (off, returned as None) or a positive size [px]."""
    if not value:
        return None
    if int(value) != value or value < 0:
        raise ValueError(f"resize_max must be 0 (off) or a positive size in pixels, got {value}")
    return int(value)


SCALE_STEP_PX = 32  # image_scale's longer side is a multiple of this: few shapes (CUDA graphs, padded kernels)


def check_image_scale(value: float) -> float:
    """``value`` as a float in (0, 1], else ValueError."""
    scale = float(value)
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"image_scale must be in (0, 1], got {value}")
    return scale


def target_side(longest: int, resize_max: int | None, image_scale: float) -> int:
    """The longer side [px] the front end sees for an input whose longer side is ``longest``: at most
    ``resize_max`` (None/0 = no cap), then times ``image_scale`` rounded *up* to a multiple of ``SCALE_STEP_PX``
    (so never below the scale asked for, e.g. the controller's ``min_image_scale``; never more than the input)."""
    side = min(longest, resize_max) if resize_max else longest
    if image_scale < 1.0:
        side = min(side, SCALE_STEP_PX * math.ceil(side * image_scale / SCALE_STEP_PX - 1e-9))
    return int(side)


def target_size(width: int, height: int, resize_max: int | None, image_scale: float,
                min_side: int = 1) -> tuple[int, int] | None:
    """(width, height) the front end sees for a ``width`` x ``height`` input: the longer side ``target_side``, the
    other in proportion (at least ``min_side``); None where that is the input's own size (no resampling)."""
    longest = max(width, height)
    side = target_side(longest, resize_max, image_scale)
    if side >= longest:
        return None
    scale = longest / side
    return max(min_side, round(width / scale)), max(min_side, round(height / scale))


@dataclass
class Features:
    """Local features of one image, as every front end returns them.

    keypoints:   (N, 2) float32 tensor, pixel (x, y) in the *original* image; integer coordinates are pixel
                 centres ((0, 0) is the centre of the top-left pixel, as OpenCV and camera_info K have it;
                 COLMAP's convention is these + 0.5).
    descriptors: (N, D) float32 tensor, L2-normalised.
    scores:      (N,) float32 tensor, detection scores, sorted descending (the scan order).
    image_size:  (width, height) of the original image in pixels.
    scale:       linear size of the image the front end saw, relative to image_size (1 = full resolution;
                 below 1 after ``resize_max`` or the rate controller's ``image_scale``).
    front_end:   the front end that made them ("aliked", "xfeat", ...; ``FeatureExtractor`` sets it), or None
                 (features from elsewhere). A matcher refuses another front end's set: ALIKED's and DISK's
                 descriptors are both 128-d, so their width alone does not tell them apart.
    """

    keypoints: torch.Tensor
    descriptors: torch.Tensor
    scores: torch.Tensor
    image_size: tuple[int, int]
    scale: float = 1.0
    front_end: str | None = None

    def __post_init__(self) -> None:
        # checked here, where a wrong set is made, rather than as a tensor-shape error deep inside the network
        for name in ("keypoints", "descriptors", "scores"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                if not isinstance(value, np.ndarray):
                    raise TypeError(f"Features.{name} must be a torch tensor (or numpy array), got {type(value).__name__}")
                setattr(self, name, torch.as_tensor(value, dtype=torch.float32))
        n = self.keypoints.shape[0] if self.keypoints.dim() == 2 else -1
        if self.keypoints.dim() != 2 or self.keypoints.shape[1] != 2:
            raise ValueError(f"Features.keypoints must be (N, 2), got {tuple(self.keypoints.shape)}")
        if self.descriptors.dim() != 2 or self.descriptors.shape[0] != n:
            raise ValueError(f"Features.descriptors must be (N, D) with N = {n} keypoints, "
                             f"got {tuple(self.descriptors.shape)}")
        if tuple(self.scores.shape) != (n,):
            raise ValueError(f"Features.scores must be (N,) with N = {n} keypoints, got {tuple(self.scores.shape)}")
        try:  # a (2,) tensor or array too (cvg/LightGlue keeps it as one): plain numbers from here on
            size = tuple(float(v) for v in (self.image_size.tolist() if hasattr(self.image_size, "tolist")
                                           else self.image_size))
        except (TypeError, ValueError):
            size = ()
        if len(size) != 2 or not all(v >= 0 and math.isfinite(v) for v in size):  # (0: an empty image's)
            raise ValueError(f"Features.image_size must be (width, height), two numbers >= 0, got "
                             f"{self.image_size!r}")
        self.image_size = tuple(int(v) if v == int(v) else v for v in size)

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    def to(self, device: torch.device | str) -> "Features":
        return Features(self.keypoints.to(device), self.descriptors.to(device),
                        self.scores.to(device), self.image_size, self.scale, self.front_end)

    def require_front_end(self, front_end: str, matcher: str, extract: str) -> None:
        """ValueError when another front end made these features (None, features from elsewhere, passes).

        ``matcher`` names who asks ("this matcher"), ``extract`` what makes the right set ("Matcher.extract").
        """
        if self.front_end is not None and self.front_end != front_end:
            raise ValueError(f"these Features come from the {self.front_end!r} front end, but {matcher} takes "
                             f"{front_end!r} features: extract them with {extract}")


@dataclass
class MatchResult:
    """Correspondences between image 0 and image 1 (numpy, on the host).

    keypoints0: (N0, 2) float32, all keypoints of image 0 (pixels, original image).
    keypoints1: (N1, 2) float32, all keypoints of image 1.
    matches:    (M, 2) int64, index pairs into keypoints0 / keypoints1.
    scores:     (M,) float32 match confidence in [0, 1].
    stop_layer: layers run before exit (== num_layers when no early exit happened).
    num_layers: depth of the network.
    timings_ms: wall times, e.g. {"extract": ..., "match": ..., "total": ...}.
    """

    keypoints0: np.ndarray
    keypoints1: np.ndarray
    matches: np.ndarray
    scores: np.ndarray
    stop_layer: int
    num_layers: int
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def points0(self) -> np.ndarray:
        """(M, 2) matched pixel coordinates in image 0."""
        return self.keypoints0[self.matches[:, 0]]

    @property
    def points1(self) -> np.ndarray:
        """(M, 2) matched pixel coordinates in image 1."""
        return self.keypoints1[self.matches[:, 1]]

    def __len__(self) -> int:
        return int(self.matches.shape[0])
