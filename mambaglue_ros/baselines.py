"""Classical baseline with the same interface as ``mambaglue_ros.matcher.Matcher``: ORB + brute force.

ORB's binary descriptors are stored in ``Features.descriptors`` as float32 (N, 256): one entry
per bit, +1/16 for a set bit and -1/16 for a clear one. That keeps the ``Features`` contract
(float, L2-normalised) and Hamming distances are exact: ``hamming = 128 * (1 - d0 . d1)``.
``match_features`` packs the signs back into the 32 ORB bytes for OpenCV's Hamming matcher.
"""
from __future__ import annotations

import time

import cv2
import numpy as np
import torch

from .types import Features, MatchResult, check_alpha, check_image_scale, check_max_keypoints, target_size

ORB_BITS = 256
# Hamming distance of two unrelated 256-bit descriptors is ~128 on average: the score scale.
UNRELATED_HAMMING = 128.0


def to_gray_uint8(image: np.ndarray) -> np.ndarray:
    """HxW or HxWx{1,3,4} image (uint8, or float in [0, 1]) -> HxW uint8 gray. RGB channel order."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = np.asarray(img, dtype=np.float64)
        if img.size and np.nanmax(img) <= 1.0:
            img = img * 255.0
        img = np.clip(np.nan_to_num(img), 0, 255).astype(np.uint8)
    if img.ndim == 3:
        if img.shape[2] == 1:
            img = img[:, :, 0]
        elif img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        elif img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_RGBA2GRAY)
        else:
            raise ValueError(f"unsupported channel count {img.shape[2]}")
    elif img.ndim != 2:
        raise ValueError(f"expected an HxW or HxWxC image, got shape {img.shape}")
    return np.ascontiguousarray(img)


def _unpack(desc: np.ndarray) -> np.ndarray:
    """(N, 32) uint8 ORB descriptors -> (N, 256) float32 in {-1/16, +1/16}."""
    bits = np.unpackbits(desc, axis=1).astype(np.float32)
    return (2.0 * bits - 1.0) / np.sqrt(ORB_BITS)


def _pack(desc: torch.Tensor) -> np.ndarray:
    """Inverse of ``_unpack``: (N, 256) float -> (N, 32) uint8."""
    return np.packbits(desc.detach().cpu().numpy() > 0, axis=1)


class OrbMatcher:
    """ORB detector/descriptor + mutual nearest neighbour (BFMatcher, Hamming, crossCheck).

    Args:
        max_keypoints: ORB ``nfeatures``.
        max_hamming: matches with a larger Hamming distance [bits of 256] are dropped.
        scale_factor, n_levels, fast_threshold: ORB pyramid / detector settings.

    ``match`` results have ``stop_layer = num_layers = 0`` (no network) and scores
    ``clip(1 - hamming / 128, 0, 1)``: 1 for identical descriptors, 0 at the distance expected
    between unrelated ones.
    """

    features = "orb"
    num_layers = 0
    device = "cpu"
    weights_source = "none (ORB)"

    def __init__(self, max_keypoints: int = 1024, max_hamming: int = 64, scale_factor: float = 1.2,
                 n_levels: int = 8, fast_threshold: int = 20) -> None:
        self.max_hamming = int(max_hamming)
        self.scale_factor = float(scale_factor)
        self.n_levels = int(n_levels)
        self.fast_threshold = int(fast_threshold)
        self._alpha: float | None = None
        self._max_keypoints = 0
        self.max_keypoints = max_keypoints
        self._image_scale = 1.0
        self._bf = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)

    # ------------------------------------------------------------------ settings (as Matcher)
    @property
    def alpha(self) -> float | None:
        """Early-exit threshold: accepted for interface compatibility, ORB ignores it."""
        return self._alpha

    @alpha.setter
    def alpha(self, value: float | None) -> None:
        self._alpha = check_alpha(value)

    @property
    def max_keypoints(self) -> int:
        return self._max_keypoints

    @max_keypoints.setter
    def max_keypoints(self, value: int) -> None:
        self._max_keypoints = check_max_keypoints(value)
        self._orb = cv2.ORB_create(nfeatures=self._max_keypoints, scaleFactor=self.scale_factor,
                                   nlevels=self.n_levels, fastThreshold=self.fast_threshold)

    @property
    def image_scale(self) -> float:
        """ORB detects on the image downscaled by this (the rate controller's resolution knob, in (0, 1]);
        keypoints stay in the input image's pixels."""
        return self._image_scale

    @image_scale.setter
    def image_scale(self, value: float) -> None:
        self._image_scale = check_image_scale(value)

    # ------------------------------------------------------------------ inference
    def extract(self, image: np.ndarray) -> Features:
        """HxW gray or HxWx3 RGB image -> Features (keypoints sorted by ORB response)."""
        gray = to_gray_uint8(image)
        h, w = gray.shape[:2]
        kps, desc = (), None
        size = target_size(w, h, None, self._image_scale) if h > 0 and w > 0 else None
        if size is not None:
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        if h > 0 and w > 0:
            kps, desc = self._orb.detectAndCompute(gray, None)
        if desc is None or len(kps) == 0:
            return Features(torch.zeros((0, 2)), torch.zeros((0, ORB_BITS)), torch.zeros(0), (w, h),
                            gray.shape[1] / w if w > 0 else 1.0, "orb")
        xy = np.array([k.pt for k in kps], dtype=np.float32)
        if gray.shape[:2] != (h, w):  # back to input pixels (pixel centres)
            xy = (xy + 0.5) * np.array([w / gray.shape[1], h / gray.shape[0]], dtype=np.float32) - 0.5
        response = np.array([k.response for k in kps], dtype=np.float32)
        order = np.argsort(-response, kind="stable")
        return Features(torch.from_numpy(xy[order]), torch.from_numpy(_unpack(desc[order])),
                        torch.from_numpy(response[order]), (w, h), gray.shape[1] / w, "orb")

    def match_features(self, feats0: Features, feats1: Features) -> MatchResult:
        """Mutual nearest neighbours under Hamming distance, at most ``max_hamming`` apart."""
        for f in (feats0, feats1):  # a learned front end's floats, packed as bits, would match at random
            f.require_front_end("orb", "OrbMatcher", "OrbMatcher.extract")
        t0 = time.perf_counter()
        kp0 = feats0.keypoints.detach().cpu().numpy().astype(np.float32).reshape(-1, 2)
        kp1 = feats1.keypoints.detach().cpu().numpy().astype(np.float32).reshape(-1, 2)
        matches = np.zeros((0, 2), dtype=np.int64)
        scores = np.zeros(0, dtype=np.float32)
        if len(kp0) > 0 and len(kp1) > 0:
            d0, d1 = _pack(feats0.descriptors), _pack(feats1.descriptors)
            found = self._bf.match(d0, d1)
            if found:
                pairs = np.array([(m.queryIdx, m.trainIdx) for m in found], dtype=np.int64)
                dist = np.array([m.distance for m in found], dtype=np.float32)
                keep = dist <= self.max_hamming
                order = np.argsort(pairs[keep, 0], kind="stable")
                matches = pairs[keep][order]
                scores = np.clip(1.0 - dist[keep][order] / UNRELATED_HAMMING, 0.0, 1.0).astype(np.float32)
        result = MatchResult(kp0, kp1, matches, scores, stop_layer=0, num_layers=0)
        result.timings_ms["match"] = (time.perf_counter() - t0) * 1e3
        return result

    def match(self, image0: np.ndarray, image1: np.ndarray) -> MatchResult:
        """Extract both images and match them. Timings in ``result.timings_ms`` (extract, match, total)."""
        t0 = time.perf_counter()
        f0, f1 = self.extract(image0), self.extract(image1)
        t1 = time.perf_counter()
        result = self.match_features(f0, f1)
        result.timings_ms["extract"] = (t1 - t0) * 1e3
        result.timings_ms["total"] = (time.perf_counter() - t0) * 1e3
        return result
