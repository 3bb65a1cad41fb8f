"""Feature cache of synthetic training pairs, and batches for training.

A cache is a folder with one ``pair_NNNNNN.npz`` per pair (keypoints, descriptors (float16), scores,
image sizes, H_0to1 (NaN for rendered pairs, which store each keypoint's depth projection into the other
view as proj0_1 / proj1_0 instead), source image, seed) and ``cache.json`` with the parameters that made it. Building it
runs the front end once per view; training epochs then only read the files. A cache is reused only when its
parameters match (otherwise it is an error, so a changed config never mixes silently with old pairs), and
a partly built cache is completed where it stopped.

Pair k of a cache uses photo ``k % len(photos)`` (photos sorted by name) and seed
``pair_seed(seed, k)``; a share ``video_fraction`` of the pairs (a fixed choice per pair) are video-like
small motions (``make_video_pair``), a share ``render_fraction`` are rendered-room pairs with parallax and
occlusions (``render_pairs.make_render_pair``), the others ``make_pair`` homographies. All are pure
functions of (photo, seed, parameters), so a cache is reproducible from its ``cache.json``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
import torch

from .homography import DEFAULT_SIZE, gt_matches_from_projections, make_pair, make_video_pair, warp_points_torch
from .render_pairs import make_render_pair, project_with_depth

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (images in its subfolders are not used: a warning says
    how many, and a folder with only subfolders of images is an error that says so)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    nested = [p for p in folder.rglob("*") if p.parent != folder and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if nested and not files:
        raise FileNotFoundError(f"no images directly in {folder}, {len(nested)} in its subfolders: the training "
                                "and evaluation folders are read flat; point at a folder of images (or link them into one)")
    if nested:
        log.warning("%s: %d images in subfolders are not used (only the %d directly in the folder)", folder,
                    len(nested), len(files))
    if not files:
        raise FileNotFoundError(f"no images in {folder}")
    return files


def split_photos(photos: Sequence[Path], holdout_every: int) -> tuple[list[Path], list[Path]]:
    """(train, held out): every ``holdout_every``-th photo (by sorted name) is held out; 0 = none."""
    if holdout_every <= 0:
        return list(photos), []
    held = [p for i, p in enumerate(photos) if i % holdout_every == holdout_every - 1]
    return [p for p in photos if p not in held], held


# 8-bit peak below which an image is "nearly black": 16-bit files are read as value >> 8, so 10- or 12-bit data
# stored in 16 bits (common for machine-vision cameras) peaks at 3 or 15
NEARLY_BLACK_PEAK = 16


def warn_if_nearly_black(image: np.ndarray, path: str | Path) -> None:
    """A logged warning for an 8-bit image whose brightest pixel is below ``NEARLY_BLACK_PEAK``."""
    peak = int(image.max()) if image.size else 0
    if peak < NEARLY_BLACK_PEAK:
        log.warning("%s is nearly black (brightest pixel %d of 255): 16-bit files are read as value >> 8, so 10- or "
                    "12-bit data stored in 16 bits comes out dark; convert it to 8 bits first (value >> 2 or >> 4)",
                    path, peak)


def read_rgb(path: str | Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot decode image {path}")
    warn_if_nearly_black(bgr, path)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def pair_seed(seed: int, index: int) -> int:
    """The seed of pair ``index`` in a set made with ``seed`` (well mixed, non-negative, < 2**63)."""
    digest = hashlib.sha256(f"{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class CacheSpec:
    """What a cache holds; two caches with the same spec hold the same pairs."""

    features: str
    max_keypoints: int
    photos: list[str]  # absolute paths
    num_pairs: int
    seed: int
    difficulty: float = 0.8
    size: tuple[int, int] = DEFAULT_SIZE
    photometric: float = 1.0
    video_fraction: float = 0.0  # share of video-like small-motion pairs (``make_video_pair``)
    render_fraction: float = 0.0  # share of rendered-room pairs with parallax and depth (``make_render_pair``)
    scene_offset: int = 0  # the rendered pairs' rooms (``make_render_pair``): validation's are others than training's

    def __post_init__(self) -> None:
        shares = {"video_fraction": self.video_fraction, "render_fraction": self.render_fraction}
        if not all(0.0 <= v <= 1.0 for v in shares.values()) or sum(shares.values()) > 1.0:
            raise ValueError(f"pair shares must lie in [0, 1] and sum to at most 1, got {shares}")

    def to_json(self) -> dict[str, Any]:
        out = {"features": self.features, "max_keypoints": int(self.max_keypoints), "photos": list(self.photos),
               "num_pairs": int(self.num_pairs), "seed": int(self.seed), "difficulty": float(self.difficulty),
               "size": [int(self.size[0]), int(self.size[1])], "photometric": float(self.photometric)}
        if self.video_fraction:  # absent when 0, so caches made before the option keep their keys
            out["video_fraction"] = float(self.video_fraction)
        if self.render_fraction:
            out["render_fraction"] = float(self.render_fraction)
        if self.scene_offset:  # (absent when 0: the caches of earlier runs keep their keys)
            out["scene_offset"] = int(self.scene_offset)
        return out

    def pair_kind(self, index: int) -> str:
        """'video', 'render' or 'homography' for pair ``index``: a fixed, well-mixed choice per (seed, index)
        (one uniform draw: the video share first, so adding rendered pairs keeps every video pair)."""
        u = pair_seed(self.seed + 0x51DE0, index) % 10_000
        if u < self.video_fraction * 10_000:
            return "video"
        if u < (self.video_fraction + self.render_fraction) * 10_000:
            return "render"
        return "homography"

    def is_video_pair(self, index: int) -> bool:
        """Whether pair ``index`` is a video-like pair."""
        return self.pair_kind(index) == "video"

    def make(self, photo: np.ndarray | None, index: int):
        """Pair ``index`` of this set from its photo (a pure function of the spec and the index); rendered
        pairs use the renderer's own textures (photo unused)."""
        kind = self.pair_kind(index)
        if kind == "render":
            return make_render_pair(pair_seed(self.seed, index), tuple(self.size), self.scene_offset)
        if kind == "video":
            return make_video_pair(photo, pair_seed(self.seed, index), tuple(self.size), self.photometric)
        return make_pair(photo, pair_seed(self.seed, index), self.difficulty, tuple(self.size), self.photometric)

    def key(self) -> str:
        blob = json.dumps({k: v for k, v in self.to_json().items() if k != "num_pairs"}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


def build_cache(spec: CacheSpec, folder: str | Path, extractor: Any = None, progress: bool = True) -> Path:
    """Create (or complete) the cache for ``spec`` in ``folder``; returns the folder.

    extractor: a ``FeatureExtractor`` (built from the spec when None). An existing cache with other
    parameters is an error; one with fewer pairs is extended (pair files are independent).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta_path = folder / "cache.json"
    want = spec.to_json()
    if meta_path.is_file():
        have = json.loads(meta_path.read_text())
        diff = sorted(k for k in want if k != "num_pairs" and have.get(k) != want[k])
        if diff:
            raise ValueError(f"feature cache {folder} was built with other parameters ({', '.join(diff)}); "
                             f"use another cache_dir or delete it")
    missing = [k for k in range(spec.num_pairs) if not (folder / f"pair_{k:06d}.npz").is_file()]
    if missing:
        if extractor is None:
            from ..features import FeatureExtractor

            extractor = FeatureExtractor(spec.features, max_keypoints=spec.max_keypoints)
        photos: dict[int, np.ndarray] = {}
        iterator: Any = missing
        if progress:
            from tqdm import tqdm

            iterator = tqdm(missing, desc=f"cache {folder.name}", unit="pair", dynamic_ncols=True)
        t0 = time.perf_counter()
        for k in iterator:
            pi = k % len(spec.photos)
            rendered = spec.pair_kind(k) == "render"
            if pi not in photos and not rendered:
                if len(photos) > 64:
                    photos.clear()
                photos[pi] = read_rgb(spec.photos[pi])
            pair = spec.make(None if rendered else photos[pi], k)
            f0, f1 = extractor.extract(pair.image0), extractor.extract(pair.image1)
            arrays = {"seed": np.int64(pair.seed), "photo": np.int64(-1 if rendered else pi)}
            for side, f in ((0, f0), (1, f1)):
                arrays[f"keypoints{side}"] = f.keypoints.cpu().numpy().astype(np.float32)
                arrays[f"descriptors{side}"] = f.descriptors.cpu().numpy().astype(np.float16)
                arrays[f"scores{side}"] = f.scores.cpu().numpy().astype(np.float32)
                arrays[f"image_size{side}"] = np.array(f.image_size, dtype=np.int64)
            if rendered:  # no homography: each keypoint's exact position in the other view (NaN: hidden there)
                arrays["H_0to1"] = np.full((3, 3), np.nan)
                arrays["proj0_1"] = project_with_depth(arrays["keypoints0"], pair.depth0, pair.depth1, pair.K,
                                                       pair.T_1_0).astype(np.float32)
                arrays["proj1_0"] = project_with_depth(arrays["keypoints1"], pair.depth1, pair.depth0, pair.K,
                                                       np.linalg.inv(pair.T_1_0)).astype(np.float32)
            else:
                arrays["H_0to1"] = pair.H_0to1
            tmp = folder / f".pair_{k:06d}.{os.getpid()}.tmp.npz"  # two runs may fill one cache side by side
            np.savez(tmp, **arrays)
            tmp.replace(folder / f"pair_{k:06d}.npz")
        log.info("cached %d pairs in %.0f s", len(missing), time.perf_counter() - t0)
    have_pairs = max(spec.num_pairs, json.loads(meta_path.read_text())["num_pairs"] if meta_path.is_file() else 0)
    tmp_meta = meta_path.with_name(f".cache.{os.getpid()}.tmp.json")  # a run starting now never reads half a file
    tmp_meta.write_text(json.dumps({**want, "num_pairs": have_pairs}, indent=1))
    tmp_meta.replace(meta_path)
    return folder


def cache_folder(root: str | Path, spec: CacheSpec, name: str) -> Path:
    """``root/<features>_k<max_keypoints>/<name>_<key>``: one folder per distinct spec."""
    return Path(root) / f"{spec.features}_k{spec.max_keypoints}" / f"{name}_{spec.key()}"


class PairCache:
    """Read access to the first ``num_pairs`` pairs of a cache folder."""

    def __init__(self, folder: str | Path, num_pairs: int | None = None) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / "cache.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no feature cache in {self.folder} (cache.json missing)")
        self.meta = json.loads(meta_path.read_text())
        n = self.meta["num_pairs"] if num_pairs is None else min(int(num_pairs), self.meta["num_pairs"])
        self.files = [self.folder / f"pair_{k:06d}.npz" for k in range(n)]
        absent = [f for f in self.files if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"feature cache {self.folder} is incomplete: {absent[0].name} missing")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        with np.load(self.files[k]) as z:
            return {key: torch.from_numpy(np.array(z[key])) for key in z.files}


def collate(pairs: Sequence[dict[str, torch.Tensor]], pos_th: float = 3.0, neg_th: float = 5.0
            ) -> dict[str, torch.Tensor]:
    """Pad a list of cached pairs into one batch with masks and ground truth.

    Padding goes at the end of each set (the Mamba scan is causal over the score order, so real points
    see no padding), at the image centre, with ``mask`` False and ground truth -2 (ignored).
    """
    data: dict[str, torch.Tensor] = {}
    b = len(pairs)
    for side in (0, 1):
        lengths = [int(p[f"keypoints{side}"].shape[0]) for p in pairs]
        length = max(max(lengths), 1)
        dim = int(pairs[0][f"descriptors{side}"].shape[-1])
        kpts = torch.zeros((b, length, 2))
        desc = torch.zeros((b, length, dim))
        mask = torch.zeros((b, length), dtype=torch.bool)
        sizes = torch.stack([p[f"image_size{side}"].float() for p in pairs])
        for i, p in enumerate(pairs):
            n = lengths[i]
            kpts[i, :n] = p[f"keypoints{side}"].float()
            desc[i, :n] = p[f"descriptors{side}"].float()
            kpts[i, n:] = sizes[i] / 2
            mask[i, :n] = True
        data[f"keypoints{side}"], data[f"descriptors{side}"] = kpts, desc
        data[f"image_size{side}"], data[f"mask{side}"] = sizes, mask
    data["H_0to1"] = torch.stack([p["H_0to1"].double() for p in pairs])  # NaN for rendered pairs
    # Every keypoint's true position in the other view: the homography warp, or the stored depth projection.
    for side, other, key in ((0, 1, "proj0_1"), (1, 0, "proj1_0")):
        proj = torch.full(data[f"keypoints{side}"].shape, float("inf"), dtype=torch.float64)
        for i, p in enumerate(pairs):
            n = int(p[f"keypoints{side}"].shape[0])
            if key in p:
                proj[i, :n] = p[key].double()
            else:
                H = data["H_0to1"][i] if side == 0 else torch.linalg.inv(data["H_0to1"][i])
                proj[i, :n] = warp_points_torch(data[f"keypoints{side}"][i, :n], H)
        data[key] = proj
    m0, m1 = gt_matches_from_projections(data["keypoints0"], data["keypoints1"], data["proj0_1"], data["proj1_0"],
                                         pos_th, neg_th, data["mask0"], data["mask1"])
    data["gt_matches0"], data["gt_matches1"] = m0, m1
    return data


def net_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys the network reads; masks only when some set is padded (unpadded runs the fast path)."""
    keys = ("keypoints0", "keypoints1", "descriptors0", "descriptors1", "image_size0", "image_size1")
    data = {k: batch[k] for k in keys}
    if not (bool(batch["mask0"].all()) and bool(batch["mask1"].all())):
        data["mask0"], data["mask1"] = batch["mask0"], batch["mask1"]
    return data


def epoch_order(num: int, seed: int, epoch: int) -> list[int]:
    """The shuffled pair order of one epoch (a function of (seed, epoch) only, so resume is exact)."""
    return np.random.default_rng([int(seed), int(epoch), 0x5EED]).permutation(num).tolist()


def iterate_batches(cache: PairCache, batch_size: int, seed: int, epoch: int, start: int = 0
                    ) -> Iterator[tuple[int, list[int]]]:
    """(position after the batch, pair indices) for the batches of one epoch from position ``start``."""
    order = epoch_order(len(cache), seed, epoch)
    for pos in range(start, len(order), batch_size):
        idx = order[pos: pos + batch_size]
        yield pos + len(idx), idx
