"""SuperPoint keypoint detector and descriptor (DeTone, Malisiewicz, Rabinovich, CVPRW 2018).

Our own implementation of the published inference network, with the exact parameter layout of
MagicLeap's ``superpoint_v1.pth`` (also the file LightGlue and glue-factory load), so that the
published weights drop in with ``load_state_dict(strict=True)``:

    conv1a conv1b | pool | conv2a conv2b | pool | conv3a conv3b | pool | conv4a conv4b  (encoder)
    convPa (128->256, 3x3) -> convPb (256->65, 1x1)                                    (detector)
    convDa (128->256, 3x3) -> convDb (256->256, 1x1)                                   (descriptor)

Every layer is a plain ``nn.Conv2d`` with bias (no batch norm): 12 convs, 24 tensors.

Post-processing follows LightGlue's front end: softmax over the 65 channels, drop the dustbin,
pixel-shuffle the 64 cell bins to a full-resolution heatmap, max-pool NMS, threshold, border
removal, top-k, then descriptors bilinearly sampled from the 1/8 map at the keypoints.

Checkpoints are loaded only with ``torch.load(..., weights_only=True)``: a file that would run
code while unpickling is refused, never executed.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Union

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # the node's shared types; imported lazily at run time (see extract_features)
    from mambaglue_ros.types import Features

__all__ = [
    "SuperPoint",
    "SuperPointCheckpointError",
    "SuperPointCheckpointNotFoundError",
    "simple_nms",
    "sample_descriptors",
    "load_superpoint_state_dict",
    "expected_state_dict_shapes",
    "CELL_SIZE",
]

PathLike = Union[str, "os.PathLike[str]"]

#: The encoder downsamples by 2**3: one detector / descriptor cell covers 8x8 pixels.
CELL_SIZE = 8

# ITU-R BT.601 luma weights, the RGB->gray conversion SuperPoint / LightGlue use.
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# Wrapper keys and name prefixes seen around SuperPoint weights in the wild: training
# checkpoints ({"model": sd} / {"state_dict": sd}), DataParallel ("module."), and pipelines that
# store the front end under a sub-module name ("superpoint." / "extractor.").
_WRAPPER_KEYS = ("model", "state_dict")
_ALL_KEYS_PREFIXES = ("module.",)
_SUBMODULE_PREFIXES = ("superpoint.", "extractor.")


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
class SuperPointCheckpointError(ValueError):
    """A SuperPoint checkpoint could not be read or does not have the SuperPoint layout."""


class SuperPointCheckpointNotFoundError(SuperPointCheckpointError, FileNotFoundError):
    """The checkpoint file does not exist (also a ``FileNotFoundError``)."""


# --------------------------------------------------------------------------------------------
# Functional building blocks
# --------------------------------------------------------------------------------------------
def simple_nms(scores: torch.Tensor, nms_radius: int) -> torch.Tensor:
    """Non-maximum suppression of a score map with max-pooling.

    A pixel survives if it is the maximum of its (2r+1)x(2r+1) window. Two extra rounds then
    recover maxima that were only beaten by a pixel which is itself suppressed, i.e. peaks that
    lie just outside the window of a stronger peak but inside the window of a suppressed one.
    Equal-valued neighbours (plateaus) are all kept, as in the published implementation.

    Args:
        scores: (B, H, W) non-negative score map.
        nms_radius: suppression radius r in pixels (>= 0; 0 returns ``scores`` unchanged).

    Returns:
        (B, H, W) map, equal to ``scores`` at the kept maxima and 0 elsewhere.
    """
    if nms_radius < 0:
        raise ValueError(f"nms_radius must be >= 0, got {nms_radius}")
    if scores.dim() != 3:
        raise ValueError(f"scores must be (B, H, W), got shape {tuple(scores.shape)}")
    if nms_radius == 0:
        return scores

    def window_max(x: torch.Tensor) -> torch.Tensor:
        # stride 1 + padding r keeps the size; -inf padding is implicit in max_pool2d.
        return F.max_pool2d(x, kernel_size=2 * nms_radius + 1, stride=1, padding=nms_radius)

    zeros = torch.zeros_like(scores)
    is_max = scores == window_max(scores)
    for _ in range(2):
        # Everything within r of a current maximum is suppressed...
        suppressed = window_max(is_max.float()) > 0
        remaining = torch.where(suppressed, zeros, scores)
        # ...and among the rest, new local maxima are added.
        new_max = remaining == window_max(remaining)
        is_max = is_max | (new_max & ~suppressed)
    return torch.where(is_max, scores, zeros)


def sample_descriptors(
    keypoints: torch.Tensor,
    descriptors: torch.Tensor,
    s: int = CELL_SIZE,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Interpolate a dense descriptor map at keypoint locations and L2-normalise.

    Uses LightGlue's published SuperPoint convention, which the LightGlue / MambaGlue weights
    were trained against: pixel coordinates are shifted by ``s/2 - 0.5`` (so the centre of the
    first cell, pixel 3.5 for s=8, maps to descriptor 0) and divided by ``size*s - s/2 - 0.5``,
    then sampled with ``grid_sample(align_corners=True)``. Changing the convention shifts the
    descriptors by a fraction of a cell and would no longer match what the matcher expects.

    Args:
        keypoints: (B, N, 2) pixel (x, y) coordinates in the full-resolution image.
        descriptors: (B, C, h, w) dense descriptor map at 1/s resolution.
        s: downsampling factor between the image and the descriptor map.
        mode: ``grid_sample`` interpolation mode ("bilinear" is the published one).

    Returns:
        (B, N, C) L2-normalised descriptors.
    """
    if keypoints.dim() != 3 or keypoints.shape[-1] != 2:
        raise ValueError(f"keypoints must be (B, N, 2), got {tuple(keypoints.shape)}")
    b, c, h, w = descriptors.shape
    if keypoints.shape[1] == 0:
        return descriptors.new_zeros((b, 0, c))
    kpts = keypoints.to(descriptors.dtype) - (s / 2 - 0.5)
    kpts = kpts / kpts.new_tensor([w * s - s / 2 - 0.5, h * s - s / 2 - 0.5])
    grid = (kpts * 2 - 1).view(b, 1, -1, 2)  # to grid_sample's [-1, 1]
    sampled = F.grid_sample(descriptors, grid, mode=mode, align_corners=True)  # (B, C, 1, N)
    sampled = F.normalize(sampled.reshape(b, c, -1), p=2, dim=1)
    return sampled.transpose(1, 2)


# --------------------------------------------------------------------------------------------
# Checkpoint loading
# --------------------------------------------------------------------------------------------
_CONV_SPECS: tuple[tuple[str, int, int, int], ...] = (
    # (name, in_channels, out_channels, kernel) -- out of convDb is descriptor_dim (256).
    ("conv1a", 1, 64, 3), ("conv1b", 64, 64, 3),
    ("conv2a", 64, 64, 3), ("conv2b", 64, 64, 3),
    ("conv3a", 64, 128, 3), ("conv3b", 128, 128, 3),
    ("conv4a", 128, 128, 3), ("conv4b", 128, 128, 3),
    ("convPa", 128, 256, 3), ("convPb", 256, 65, 1),
    ("convDa", 128, 256, 3), ("convDb", 256, -1, 1),
)


def expected_state_dict_shapes(descriptor_dim: int = 256) -> dict[str, tuple[int, ...]]:
    """The published SuperPoint parameter layout: key -> shape (24 entries, encoder first).

    Args:
        descriptor_dim: output channels of ``convDb`` (256 for the published weights).
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for name, cin, cout, k in _CONV_SPECS:
        cout = descriptor_dim if cout == -1 else cout
        shapes[f"{name}.weight"] = (cout, cin, k, k)
        shapes[f"{name}.bias"] = (cout,)
    return shapes


def _few(keys: Any, n: int = 5) -> str:
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f", ... ({len(keys)} total)" if len(keys) > n else "")


def _unwrap_state_dict(obj: Any, path: str) -> dict[str, torch.Tensor]:
    """Peel training wrappers and name prefixes off a loaded object, see ``_WRAPPER_KEYS``."""
    # Wrappers may nest, e.g. {"model": {"state_dict": sd}}; a handful of levels is plenty.
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise SuperPointCheckpointError(
            f"SuperPoint checkpoint {path!r}: expected a state dict (a mapping of parameter "
            f"names to tensors), found {type(obj).__name__}."
        )
    sd: dict[str, Any] = {str(k): v for k, v in obj.items()}

    # Strip prefixes until nothing changes, so stacked ones ("module.extractor.") also go.
    changed = True
    while changed:
        changed = False
        for prefix in _ALL_KEYS_PREFIXES:
            if any(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}
                changed = True
        for prefix in _SUBMODULE_PREFIXES:
            if any(k.startswith(prefix) for k in sd):
                # A whole-pipeline checkpoint also holds the matcher etc.: keep the sub-module.
                sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
                changed = True
    return sd


def load_superpoint_state_dict(path: PathLike, descriptor_dim: int = 256) -> dict[str, torch.Tensor]:
    """Read a SuperPoint checkpoint safely and return it in the published flat layout.

    Accepts MagicLeap's ``superpoint_v1.pth`` (flat ``conv1a.weight`` ... ``convDb.bias``),
    the same wrapped as ``{"model": sd}`` / ``{"state_dict": sd}``, and keys prefixed with
    ``module.`` / ``superpoint.`` / ``extractor.`` (stripped; with the latter two only that
    sub-module's keys are kept). The file is read with ``torch.load(weights_only=True)``, so
    pickled code is refused rather than executed.

    Args:
        path: checkpoint file.
        descriptor_dim: expected ``convDb`` output channels.

    Returns:
        Mapping of the 24 published keys to tensors, shapes as ``expected_state_dict_shapes``.

    Raises:
        SuperPointCheckpointNotFoundError: the file does not exist.
        SuperPointCheckpointError: unreadable / truncated / unsafe file, or wrong layout; the
            message names the file and lists expected vs found keys.
    """
    path_str = os.fspath(path)
    if not os.path.isfile(path_str):
        raise SuperPointCheckpointNotFoundError(
            f"SuperPoint checkpoint {path_str!r} not found (no such file)."
        )
    try:
        obj = torch.load(path_str, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only=True raises this for any global outside torch's allow-list, i.e. a file
        # that would construct arbitrary objects / call functions while loading.
        # Quote torch's line naming the offending global, not its "retry with
        # weights_only=False" preamble: that is exactly what must not be done with this file.
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "GLOBAL" in ln or "global" in ln), "")
        raise SuperPointCheckpointError(
            f"SuperPoint checkpoint {path_str!r} was refused: it is not a plain tensor state "
            f"dict, and loading it would run pickled code or build arbitrary objects. "
            f"Only weights saved as tensors are accepted. {detail}".rstrip()
        ) from exc
    except Exception as exc:  # noqa: BLE001 - zip/pickle/EOF errors vary with torch version
        raise SuperPointCheckpointError(
            f"SuperPoint checkpoint {path_str!r} could not be read (corrupt or truncated?): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc

    sd = _unwrap_state_dict(obj, path_str)
    expected = expected_state_dict_shapes(descriptor_dim)
    missing = set(expected) - set(sd)
    unexpected = set(sd) - set(expected)
    if missing or unexpected:
        raise SuperPointCheckpointError(
            f"SuperPoint checkpoint {path_str!r} does not have the SuperPoint layout "
            f"(wrong model?). Expected keys like {_few(expected, 4)}; "
            f"missing: {_few(missing) if missing else 'none'}; "
            f"unexpected: {_few(unexpected) if unexpected else 'none'}."
        )
    for key, shape in expected.items():
        value = sd[key]
        if not isinstance(value, torch.Tensor):
            raise SuperPointCheckpointError(
                f"SuperPoint checkpoint {path_str!r}: {key!r} is a {type(value).__name__}, "
                f"not a tensor."
            )
        if tuple(value.shape) != shape:
            raise SuperPointCheckpointError(
                f"SuperPoint checkpoint {path_str!r}: {key!r} has shape {tuple(value.shape)}, "
                f"expected {shape} (descriptor_dim={descriptor_dim})."
            )
    # Return in the canonical order so the result equals a freshly built model's state_dict.
    return {key: sd[key] for key in expected}


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
class SuperPoint(nn.Module):
    """SuperPoint detector + descriptor with LightGlue-style configuration.

    Configuration (``default_conf``, override with keyword arguments):
        descriptor_dim: 256 -- channels of ``convDb`` / the descriptors.
        nms_radius: 4 -- NMS radius in pixels.
        max_num_keypoints: None -- keep the k best per image; None (or -1) keeps all.
        detection_threshold: 0.0005 -- minimum heatmap score.
        remove_borders: 4 -- drop keypoints closer than this to the image border (pixels).

    The weights are randomly initialised; load published weights with ``load_checkpoint``.
    """

    default_conf: ClassVar[dict[str, Any]] = {
        "descriptor_dim": 256,
        "nms_radius": 4,
        "max_num_keypoints": None,
        "detection_threshold": 0.0005,
        "remove_borders": 4,
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__()
        unknown = set(conf) - set(self.default_conf)
        if unknown:
            raise ValueError(f"Unknown SuperPoint config keys {sorted(unknown)}; "
                             f"valid keys: {sorted(self.default_conf)}")
        self.conf: dict[str, Any] = {**self.default_conf, **conf}
        mk = self.conf["max_num_keypoints"]
        if mk == -1:  # older LightGlue / SuperGlue spelling of "all"
            self.conf["max_num_keypoints"] = mk = None
        if mk is not None and (not isinstance(mk, int) or mk <= 0):
            raise ValueError(f"max_num_keypoints must be a positive int or None, got {mk!r}")
        if int(self.conf["nms_radius"]) < 0 or int(self.conf["remove_borders"]) < 0:
            raise ValueError("nms_radius and remove_borders must be >= 0")

        # Attribute names are the published parameter names: do not rename (checkpoints).
        # ReLU / max-pool are applied functionally so they add no entries to the state dict.
        d = int(self.conf["descriptor_dim"])
        for name, cin, cout, k in _CONV_SPECS:
            cout = d if cout == -1 else cout
            setattr(self, name, nn.Conv2d(cin, cout, kernel_size=k, stride=1, padding=k // 2))

    # Declared for type checkers; created in __init__ via setattr.
    conv1a: nn.Conv2d
    conv1b: nn.Conv2d
    conv2a: nn.Conv2d
    conv2b: nn.Conv2d
    conv3a: nn.Conv2d
    conv3b: nn.Conv2d
    conv4a: nn.Conv2d
    conv4b: nn.Conv2d
    convPa: nn.Conv2d
    convPb: nn.Conv2d
    convDa: nn.Conv2d
    convDb: nn.Conv2d

    # ---------------------------------------------------------------- checkpoints
    def load_checkpoint(self, path: PathLike) -> "SuperPoint":
        """Load published-layout weights from ``path`` (strict) and return ``self``.

        Raises:
            SuperPointCheckpointNotFoundError / SuperPointCheckpointError: see
            ``load_superpoint_state_dict``.
        """
        sd = load_superpoint_state_dict(path, descriptor_dim=int(self.conf["descriptor_dim"]))
        try:
            self.load_state_dict(sd, strict=True)
        except RuntimeError as exc:  # defensive: the loader already checked keys and shapes
            raise SuperPointCheckpointError(
                f"SuperPoint checkpoint {os.fspath(path)!r} does not fit the model: {exc}"
            ) from exc
        return self

    @classmethod
    def from_checkpoint(cls, path: PathLike, **conf: Any) -> "SuperPoint":
        """Build a model with ``conf`` overrides, load ``path`` and put it in eval mode."""
        return cls(**conf).load_checkpoint(path).eval()

    # ---------------------------------------------------------------- network
    @staticmethod
    def _to_gray(image: torch.Tensor) -> torch.Tensor:
        """Normalise the input to a (B, 1, H, W) float tensor; see ``forward``."""
        if image.dim() == 2:
            image = image[None, None]
        elif image.dim() == 3:
            image = image[None]
        if image.dim() != 4 or image.shape[1] not in (1, 3):
            raise ValueError(
                f"SuperPoint expects an image of shape (B, 1, H, W) or (B, 3, H, W), "
                f"got {tuple(image.shape)}"
            )
        if not torch.is_floating_point(image):
            # 8-bit images (e.g. straight from a ROS message) -> [0, 1], the training range.
            image = image.float() / 255.0
        if image.shape[1] == 3:
            w = image.new_tensor(_LUMA_WEIGHTS).view(1, 3, 1, 1)
            image = (image * w).sum(dim=1, keepdim=True)
        if image.shape[-2] < CELL_SIZE or image.shape[-1] < CELL_SIZE:
            raise ValueError(f"Image too small for SuperPoint: {tuple(image.shape[-2:])}")
        return image

    def dense(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the network without post-processing.

        Args:
            image: (B, 1, H, W) or (B, 3, H, W) image, see ``forward``.

        Returns:
            heatmap: (B, H', W') keypoint probability per pixel, H' = 8*floor(H/8) (the
                encoder floors odd sizes; pixels beyond H', W' are never detected).
            descriptors: (B, D, H'/8, W'/8) L2-normalised dense descriptors.
        """
        x = self._to_gray(image)
        x = F.relu(self.conv1a(x))
        x = F.relu(self.conv1b(x))
        x = F.max_pool2d(x, kernel_size=2, stride=2)
        x = F.relu(self.conv2a(x))
        x = F.relu(self.conv2b(x))
        x = F.max_pool2d(x, kernel_size=2, stride=2)
        x = F.relu(self.conv3a(x))
        x = F.relu(self.conv3b(x))
        x = F.max_pool2d(x, kernel_size=2, stride=2)
        x = F.relu(self.conv4a(x))
        x = F.relu(self.conv4b(x))

        # Detector: 64 bins = the 8x8 pixels of a cell, plus a "no keypoint" dustbin that only
        # competes in the softmax and is then dropped.
        logits = self.convPb(F.relu(self.convPa(x)))
        prob = F.softmax(logits, dim=1)[:, :-1]
        b, _, hc, wc = prob.shape
        # Channel c of cell (i, j) is pixel (8i + c // 8, 8j + c % 8): same as pixel_shuffle.
        heatmap = F.pixel_shuffle(prob, CELL_SIZE).reshape(b, hc * CELL_SIZE, wc * CELL_SIZE)

        desc = self.convDb(F.relu(self.convDa(x)))
        desc = F.normalize(desc, p=2, dim=1)
        return heatmap, desc

    def forward(self, image: torch.Tensor | Mapping[str, torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        """Detect and describe keypoints.

        Args:
            image: (B, 1, H, W) grayscale or (B, 3, H, W) RGB float image in [0, 1] (uint8 is
                scaled by 1/255; (H, W) and (C, H, W) get batch / channel dims added). A
                LightGlue-style ``{"image": tensor}`` dict is accepted too.

        Returns:
            Dict of per-image lists (the keypoint count differs between images):
                "keypoints":   B x (N_i, 2) float pixel (x, y), integer-valued pixel centres;
                "scores":      B x (N_i,) heatmap score, sorted descending;
                "descriptors": B x (N_i, D) L2-normalised descriptors.
        """
        if isinstance(image, Mapping):
            image = image["image"]
        heatmap, dense_desc = self.dense(image)
        keypoints, scores = self._detect(heatmap)
        descriptors = [
            sample_descriptors(k[None], d[None], CELL_SIZE)[0]
            for k, d in zip(keypoints, dense_desc)
        ]
        return {"keypoints": keypoints, "scores": scores, "descriptors": descriptors}

    def _detect(self, heatmap: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Heatmap (B, H, W) -> per-image keypoints (N, 2) as (x, y) and scores (N,), sorted."""
        scores = simple_nms(heatmap, int(self.conf["nms_radius"]))
        border = int(self.conf["remove_borders"])
        if border > 0:
            # Set to -1 (below any threshold) rather than slicing, so indices stay pixel coords.
            scores = scores.clone()
            scores[:, :border] = -1
            scores[:, :, :border] = -1
            scores[:, -border:] = -1
            scores[:, :, -border:] = -1
        idx = torch.nonzero(scores > self.conf["detection_threshold"])  # (M, 3): b, y, x
        k = self.conf["max_num_keypoints"]
        kpts_out: list[torch.Tensor] = []
        scores_out: list[torch.Tensor] = []
        for i in range(heatmap.shape[0]):
            sel = idx[idx[:, 0] == i]
            s = scores[i, sel[:, 1], sel[:, 2]]
            if k is not None and k < s.shape[0]:
                s, order = torch.topk(s, k, sorted=True)
            else:
                # Stable, so equal scores keep raster order: deterministic output.
                s, order = torch.sort(s, descending=True, stable=True)
            kpts_out.append(sel[order][:, [2, 1]].to(heatmap.dtype))  # (y, x) -> (x, y)
            scores_out.append(s)
        return kpts_out, scores_out

    @torch.no_grad()
    def extract_features(self, image: torch.Tensor) -> list["Features"]:
        """``forward`` without gradients, packed as ``mambaglue_ros.types.Features``.

        ``image_size`` is the (width, height) of the input tensor; no resizing happens here.
        """
        from mambaglue_ros.types import Features  # local: keep this module standalone

        if isinstance(image, torch.Tensor) and image.dim() >= 2:
            height, width = int(image.shape[-2]), int(image.shape[-1])
        else:
            raise ValueError("extract_features expects an image tensor")
        out = self.forward(image)
        return [
            Features(keypoints=k, descriptors=d, scores=s, image_size=(width, height), front_end="superpoint")
            for k, s, d in zip(out["keypoints"], out["scores"], out["descriptors"])
        ]
