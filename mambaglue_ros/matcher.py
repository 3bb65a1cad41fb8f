"""Matcher = front end + MambaGlue network + weights: the public entry point of the core.

    >>> from mambaglue_ros import Matcher
    >>> m = Matcher(features="xfeat")             # trained weights if shipped, else LightGlue warm start
    >>> result = m.match(image0, image1)          # numpy RGB/gray images
    >>> result.points0, result.points1, result.scores, result.stop_layer
"""
from __future__ import annotations

import logging
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from . import weights as W
from .features import MATCHER_CONF, FeatureExtractor
from .models.gemm_shapes import bf16_autocast
from .models.mambaglue import MambaGlue, lightglue_state_dict_to_mambaglue
from .types import Features, MatchResult, check_alpha, check_image_scale, check_max_keypoints, check_resize_max

if TYPE_CHECKING:
    from .cuda_graph import GraphedMatcher

log = logging.getLogger(__name__)

# LightGlue-family weights per front end (the warm start and the `lightglue` baseline).
LIGHTGLUE_WEIGHTS = {"aliked": "aliked_lightglue", "disk": "disk_lightglue", "xfeat": "xfeat_lightglue"}
# Images whose first self block a Matcher keeps per camera (``Matcher.prepare``): the current and previous frame, a
# keyframe, a right image, and the frames in flight in the node's pipeline.
PREPARED_KEPT = 8
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16), where bf16 autocast is faster
    than fp32; without them bf16 is emulated and slower. torch's own probes where it has them (private API,
    so guarded), else the kernel's CPU flags."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(callable(p) for p in probes):
        try:
            return any(bool(p()) for p in probes)
        except Exception:  # noqa: BLE001 - a probe that fails says nothing; ask the kernel
            pass
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# Matcher width (descriptor_dim) from which bf16 pays on a CPU with native bf16, measured on a video sequence
# (benchmarks/precision_sequence.py, KITTI, docs/results.md "bf16 on a video sequence"): the d = 256 networks
# (ALIKED) take 0.71-0.73x the fp32 time at 512 and 1024 keypoints; XFeat's d = 96 network 1.11x at 512 and
# 0.90x at 1024, too little for bf16's rounding.
BF16_MIN_WIDTH = 256


def resolve_precision(precision: str, device: torch.device, descriptor_dim: int = BF16_MIN_WIDTH) -> str:
    """'auto' -> 'fp16' on CUDA; on a CPU with native bf16 (``cpu_has_native_bf16``) 'bf16' for a matcher at least
    ``BF16_MIN_WIDTH`` wide (``descriptor_dim``), where it was measured to pay; else 'fp32'. Other values are
    returned as they are."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    wide = descriptor_dim >= BF16_MIN_WIDTH
    return "bf16" if device.type == "cpu" and wide and cpu_has_native_bf16() else "fp32"


# Front ends that extract in bf16 under precision 'auto' on a CPU with native bf16: XFeat, whose backbone then
# takes ~0.65x the fp32 time with its keypoint head kept in float32 (``features.xfeat_model_class``: the same
# keypoint pixels); its accuracy cost is in docs/results.md ("bf16 on a video sequence"). ALIKED, DISK and
# SuperPoint extract in fp32 (not measured in bf16).
BF16_FRONT_ENDS = ("xfeat",)


def resolve_extractor_precision(requested: str, matcher_precision: str, device: torch.device, features: str) -> str:
    """The front end's arithmetic for a Matcher asked for ``requested`` whose network runs in ``matcher_precision``:
    fp16 with an fp16 network (CUDA); for 'auto' on a CPU with native bf16, bf16 for ``BF16_FRONT_ENDS``; else
    fp32 (an explicit 'bf16' keeps the front end in fp32, as before 'auto' chose one)."""
    if matcher_precision == "fp16":
        return "fp16"
    if requested == "auto" and device.type == "cpu" and features in BF16_FRONT_ENDS and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return device


# MambaGlue options a checkpoint fixes: its shapes, and what defines the trained network besides them
SHAPE_OPTIONS = ("input_dim", "descriptor_dim", "n_layers", "num_heads", "d_state")
ARCHITECTURE_OPTIONS = ("mixer", "regressor", "scan_order", "bidirectional", "mamba_message", "mamba_expand")
CHECKPOINT_OPTIONS = SHAPE_OPTIONS + ARCHITECTURE_OPTIONS


def build_network(features: str, weights: str | None = None, sha256: str | None = None,
                  **overrides: Any) -> tuple[MambaGlue, str]:
    """The MambaGlue network for a front end, with weights. Returns (network, description of the weights).

    weights: None = our shipped checkpoint for the front end if there is one, else the LightGlue warm start;
             'lightglue' = the LightGlue-family weights of the front end (warm start, with LightGlue's linear
             confidence regressor unless ``regressor`` is given; with mixer='attention' this *is* LightGlue);
             'random' = no weights (tests); otherwise a path/URL to our checkpoint.
    overrides: MambaGlue options (alpha, early_exit, pruning, mixer, ...). Shape options come from the
             checkpoint or the front end and cannot be overridden.
    """
    if features not in MATCHER_CONF:
        raise ValueError(f"unknown feature front end {features!r}; choose from {tuple(MATCHER_CONF)}")
    if weights is None:
        packaged = W.packaged_checkpoint(features)
        weights = str(packaged) if packaged else "lightglue"
        if not packaged:
            log.warning("no trained MambaGlue weights ship for %r: using the LightGlue warm start "
                        "(the Mamba branch contributes nothing until trained)", features)
    if weights == "lightglue":
        # LightGlue's weights come with LightGlue's linear confidence regressor: a deep one would start untrained and
        # decide the exit and pruning at random (training asks for the deep one explicitly, and trains it)
        if "regressor" not in overrides:
            overrides["regressor"] = "linear"
        elif overrides["regressor"] == "deep" and any(overrides.get(k, MambaGlue.default_conf[k])
                                                      for k in ("early_exit", "pruning")):
            log.warning("regressor='deep' with the LightGlue warm start is untrained: the early exit and pruning "
                        "follow its random initialisation (alpha=None, pruning=False to run every layer)")
    if weights in ("lightglue", "random"):
        conf = {**MATCHER_CONF[features], **overrides}
        net = MambaGlue(**conf)
        if weights == "random":
            return net.eval(), "random"
        if features not in LIGHTGLUE_WEIGHTS:
            raise W.WeightsError(f"no LightGlue weights ship for {features!r}; pass a MambaGlue checkpoint path")
        path = W.wheel_file(LIGHTGLUE_WEIGHTS[features])
        sd = W.load_file(path)
        try:
            net.load_state_dict(lightglue_state_dict_to_mambaglue(sd, net), strict=True)
        except (ValueError, RuntimeError) as e:
            raise W.WeightsError(f"{path}: {e}") from None
        return net.eval(), f"lightglue:{path.name}"
    path = W.resolve(weights, sha256=sha256)
    ckpt = W.load_checkpoint(path, features=features)
    conf = {**MambaGlue.default_conf, **ckpt["config"]}
    # what the trained weights were trained as: another scan order or message would run them as another network
    bad = {k: (conf.get(k), overrides[k]) for k in sorted(overrides)
           if k in CHECKPOINT_OPTIONS and overrides[k] != conf.get(k)}
    if bad:
        raise ValueError(f"checkpoint {path} was trained with other network options (checkpoint, asked): {bad}; "
                         "they are fixed by the weights: leave them out")
    conf.update({k: v for k, v in overrides.items() if k not in CHECKPOINT_OPTIONS})
    net = MambaGlue(**{k: v for k, v in conf.items() if k in MambaGlue.default_conf})
    state = {k: v.float() for k, v in ckpt["state_dict"].items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise W.WeightsError(f"{path} does not fit the network: {str(e)[:400]}") from None
    return net.eval(), f"checkpoint:{path.name}"


class Matcher:
    """Front end + MambaGlue matcher.

    Args:
        features: 'xfeat' | 'aliked' | 'disk' | 'superpoint'.
        weights: see ``build_network`` (None = shipped trained weights, else the LightGlue warm start).
        device: 'auto' (CUDA when available) | 'cpu' | 'cuda'.
        max_keypoints: keypoint budget per image.
        detection_threshold: front-end detection threshold (None = its default mode).
        resize_max: downscale images so the longer side is at most this (None or 0 = native size).
        alpha: early-exit threshold (fraction of confident points); None disables early exit.
        pruning: point pruning of confident unmatchable points (LightGlue's adaptive width).
        extractor_weights: path to the front end's weights (required for SuperPoint).
        precision: matcher arithmetic: 'fp32'; 'bf16' (autocast; on CPUs with AVX512-BF16 or AMX it is
            faster with ALIKED, ~0.7x, and at best 0.9x with XFeat, see README; on the CPU its matrix products
            are padded to a few shapes, ``_autocast``); 'fp16' (CUDA only, half weights; on a CPU it falls back to fp32 with a
            warning); 'auto' = fp16 on CUDA, bf16 for the d = 256 networks (ALIKED, DISK, SuperPoint) on a CPU
            with native bf16, else fp32 (``resolve_precision``; the node's default). The front end runs in fp16
            with an fp16 network, in bf16 for XFeat under 'auto' on a CPU with native bf16
            (``resolve_extractor_precision``), else in fp32.
        fp16: shorthand for ``precision='fp16'`` (older API).
        sha256: the SHA-256 of ``weights`` given as a URL (required there; the download is checked against it).
        **network_options: further MambaGlue options (beta, filter_threshold, mixer, regressor, ...;
            ``MambaGlue.default_conf``); an unknown one is a ValueError.
    """

    def __init__(self, features: str = "aliked", weights: str | None = None, device: str | torch.device = "auto",
                 max_keypoints: int = 1024, detection_threshold: float | None = None, resize_max: int | None = None,
                 alpha: float | None = 0.95, pruning: bool = True, extractor_weights: str | None = None,
                 fp16: bool = False, precision: str = "fp32", sha256: str | None = None,
                 **network_options: Any) -> None:
        # the setters' checks, before any weights load: a bad value fails at once, as ``m.alpha = 2`` does
        alpha = check_alpha(alpha)
        max_keypoints = check_max_keypoints(max_keypoints)
        unknown = sorted(set(network_options) - set(MambaGlue.default_conf))
        if unknown:  # a checkpoint's network would otherwise drop them without a word
            raise ValueError(f"unknown MambaGlue option(s) {unknown}; the options: {sorted(MambaGlue.default_conf)}")
        resize_max = check_resize_max(resize_max)
        self.features = features
        self.device = resolve_device(device)
        requested = "fp16" if fp16 else precision
        if requested not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
        precision = resolve_precision(requested, self.device, MATCHER_CONF.get(features, {}).get("descriptor_dim", 0))
        if precision == "fp16" and self.device.type != "cuda":
            warnings.warn("fp16 needs CUDA: running fp32 on the CPU (bf16 is the CPU's reduced precision)",
                          stacklevel=2)
            precision = "fp32"
        self.precision = precision
        fp16 = precision == "fp16"
        self.extractor = FeatureExtractor(features, max_keypoints=max_keypoints,
                                          detection_threshold=detection_threshold, resize_max=resize_max,
                                          device=self.device, weights=extractor_weights,
                                          precision=resolve_extractor_precision(requested, precision, self.device,
                                                                                features))
        options = dict(network_options)
        options["early_exit"] = alpha is not None
        if alpha is not None:
            options["alpha"] = float(alpha)
        options["pruning"] = bool(pruning)
        if self.device.type == "cuda":
            options.setdefault("pruning_min_points", 1024)  # gathers cost more than they save on small sets
        # (the LightGlue warm start, asked for or DISK's fallback, takes LightGlue's linear regressor: build_network)
        self.net, self.weights_source = build_network(features, weights, sha256=sha256, **options)
        self.net = self.net.to(self.device)
        self.fp16 = bool(fp16) and self.device.type == "cuda"
        if self.fp16:
            self.net = self.net.half()
        self._graph: "GraphedMatcher | None" = None  # use_cuda_graph: match_features replays it
        # id(Features) -> (weakref to it, network signature, MambaGlue.prepare output): see ``prepare``
        self._prepared: OrderedDict[int, tuple[Any, tuple, dict[str, torch.Tensor]]] = OrderedDict()
        self._prepared_lock = threading.Lock()
        self.prepared_kept = PREPARED_KEPT  # images kept; a matcher shared by N cameras keeps N times as many
        # bf16 on the CPU: matrix products padded to a few shapes (``_autocast``); False only to measure without
        self.bucket_gemm_shapes = True

    # ------------------------------------------------------------------ settings the node changes live
    @property
    def alpha(self) -> float | None:
        return self.net.conf["alpha"] if self.net.conf["early_exit"] else None

    @alpha.setter
    def alpha(self, value: float | None) -> None:
        value = check_alpha(value)
        self.net.conf["early_exit"] = value is not None
        if value is not None:
            self.net.conf["alpha"] = float(value)

    @property
    def max_keypoints(self) -> int:
        return self.extractor.max_keypoints

    @max_keypoints.setter
    def max_keypoints(self, value: int) -> None:
        self.extractor.set_max_keypoints(check_max_keypoints(value))

    @property
    def image_scale(self) -> float:
        """Front-end resolution relative to the input image, in (0, 1] (the rate controller's resolution knob;
        ``FeatureExtractor.image_scale``). Keypoints stay in the input image's pixels."""
        return self.extractor.image_scale

    @image_scale.setter
    def image_scale(self, value: float) -> None:
        self.extractor.image_scale = check_image_scale(value)

    @property
    def num_layers(self) -> int:
        return int(self.net.conf["n_layers"])

    # ------------------------------------------------------------------ inference
    def extract(self, image: np.ndarray | torch.Tensor) -> Features:
        """One image -> Features (on the matcher's device)."""
        return self.extractor.extract(image)

    def _autocast(self) -> AbstractContextManager[None]:
        """The network's arithmetic: bf16 autocast for 'bf16'; on the CPU with its matrix products padded to a
        few sizes (``gemm_shapes.bf16_autocast``: oneDNN keeps a compiled kernel per bf16 product shape for good,
        and the token counts change every frame and layer, so the process would grow without bound)."""
        return bf16_autocast(self.device.type, self.precision == "bf16", self.bucket_gemm_shapes)

    @torch.inference_mode()
    def match_features(self, feats0: Features, feats1: Features) -> MatchResult:
        """Match two already extracted feature sets (the node reuses the previous frame's). With
        ``use_cuda_graph`` on, pairs that fit the captured size replay the graph (every layer, no exit)."""
        self._check_features([(feats0, feats1)])
        graph = self._graph
        if graph is not None and max(len(feats0), len(feats1)) <= graph.pad_to:
            return graph.match_features(feats0, feats1)
        t0 = time.perf_counter()
        data = self._batch([(feats0, feats1)])
        with self._autocast():
            for side, feats in (("0", feats0), ("1", feats1)):
                data[f"prepared{side}"] = self._prepared_state(feats, data, side)
            out = self.net(data)
        result = self._unbatch(out, [(feats0, feats1)])[0]
        result.timings_ms["match"] = (time.perf_counter() - t0) * 1e3
        return result

    @torch.inference_mode()
    def prepare(self, feats: Features) -> None:
        """Run the part of the matcher that depends on this image alone (input projection, positional encoding,
        the first layer's self block: ``MambaGlue.prepare``) and keep it for the next ``match_features`` calls
        with this very ``feats`` object, which then give the same result to the bit.

        ``match_features`` keeps what it computes the same way, so a frame matched twice (temporal tracking:
        with the previous frame, then with the next; stereo: left with right, then with the previous left) runs
        its first self block once. The node's pipeline calls this in its extraction stage, so the matcher's
        thread starts at the first cross block. At most ``prepared_kept`` images are kept (least recently used
        first out); a change of the network's weights or precision, or a replaced field of ``feats``, makes them stale
        (recomputed)."""
        self._check_features([(feats, feats)])
        if len(feats) and self._graph is None:
            data = self._batch([(feats, feats)])
            with self._autocast():
                self._prepared_state(feats, data, "0")

    def forget_prepared(self) -> None:
        """Drop every kept first self block (``prepare``). Timing code calls it before each timed pair, so that a
        pair costs what a pair of new images costs, however often its features were matched before."""
        with self._prepared_lock:
            self._prepared.clear()

    def _prepared_state(self, feats: Features, data: dict[str, torch.Tensor], side: str
                        ) -> dict[str, torch.Tensor] | None:
        """The kept ``prepare`` output of ``feats`` (side ``side`` of ``data``), or computed from ``data`` now
        and kept. None for an image without keypoints (the network returns before it would be used)."""
        if len(feats) == 0:
            return None
        # the network's weights (MambaGlue.prepare_token) and precision, and the feature tensors themselves (a
        # Features object whose fields are replaced is another image)
        signature = (self.net.prepare_token(), self.precision, id(feats.keypoints), id(feats.descriptors),
                     tuple(feats.image_size))
        with self._prepared_lock:
            kept = self._prepared.get(id(feats))
            if kept is not None and kept[0]() is feats and kept[1] == signature:
                self._prepared.move_to_end(id(feats))
                return kept[2]
        state = self.net.prepare(data[f"keypoints{side}"], data[f"descriptors{side}"], data[f"image_size{side}"])
        with self._prepared_lock:
            self._prepared[id(feats)] = (weakref.ref(feats), signature, state)
            self._prepared.move_to_end(id(feats))
            while len(self._prepared) > self.prepared_kept:
                self._prepared.popitem(last=False)
        return state

    def match(self, image0: np.ndarray | torch.Tensor, image1: np.ndarray | torch.Tensor) -> MatchResult:
        """Extract both images and match them. Timings in ``result.timings_ms`` (extract, match, total)."""
        t0 = time.perf_counter()
        f0, f1 = self.extract(image0), self.extract(image1)
        t1 = time.perf_counter()
        result = self.match_features(f0, f1)
        result.timings_ms["extract"] = (t1 - t0) * 1e3
        result.timings_ms["total"] = (time.perf_counter() - t0) * 1e3
        return result

    @torch.inference_mode()
    def match_batch(self, pairs: Sequence[tuple[Features, Features]], pad_to: int | None = None) -> list[MatchResult]:
        """Several feature pairs in one padded forward pass (exit when all pairs are done; padded sets are not
        pruned, a single unpadded pair is, as in ``match_features``).

        On a GPU this is the throughput path (several cameras, one forward pass); on a CPU ``match_features``
        per pair is as fast or faster (``benchmarks/multi_camera.py``). ``pad_to``: pad every set to at least
        this many keypoints, so that calls have the same shapes (what a compiled / CUDA-graph network needs,
        see ``compile``); padding is masked and changes no match.
        """
        pairs = list(pairs)  # (a generator would be used up by the check)
        if not pairs:
            return []
        self._check_features(pairs)
        t0 = time.perf_counter()
        with self._autocast():
            out = self.net(self._batch(pairs, pad_to))
        results = self._unbatch(out, pairs)
        elapsed = (time.perf_counter() - t0) * 1e3
        for r in results:
            r.timings_ms["match"] = elapsed / len(pairs)
        return results

    def compile(self, mode: str | None = None, backend: str = "inductor") -> "Matcher":
        """``torch.compile`` the network (in place; returns self). Mode: 'reduce-overhead' on CUDA (CUDA graphs:
        one launch per graph instead of hundreds of small kernels, the batch-1 cost on a GPU), else 'default'.

        Shapes are static (``dynamic=False``): a new keypoint count compiles again, so feed it fixed padded
        sizes with ``match_batch(pairs, pad_to=...)``. The early-exit test is a host decision, so the network
        runs as a few graphs between the exit checks. The first call of each shape pays the compilation.
        """
        if mode is None:
            mode = "reduce-overhead" if self.device.type == "cuda" else "default"
        self.net = torch.compile(self.net, mode=mode if backend == "inductor" else None, backend=backend,
                                 dynamic=False)
        return self

    def cuda_graph(self, batch: int = 1, pad_to: int | None = None) -> "GraphedMatcher":
        """The network captured as one CUDA graph for ``batch`` pairs of at most ``pad_to`` (default:
        ``max_keypoints``) keypoints per side: one replay per call instead of hundreds of kernel launches, the
        batch-1 path on a GPU. It runs every layer (an exit is a host decision, which a graph cannot hold);
        see ``cuda_graph.GraphedMatcher``."""
        from .cuda_graph import GraphedMatcher

        return GraphedMatcher(self, batch=batch, pad_to=pad_to)

    @property
    def cuda_graph_active(self) -> bool:
        """Whether ``match_features`` replays a captured CUDA graph (``use_cuda_graph``)."""
        return self._graph is not None

    def use_cuda_graph(self, enabled: bool = True, pad_to: int | None = None) -> bool:
        """From now on ``match_features`` replays one captured CUDA graph (batch 1, sets padded to ``pad_to``,
        default ``max_keypoints``; larger sets run eager) instead of launching the network's kernels one by one.
        The graph runs every layer: ``alpha`` no longer applies to those pairs. Captured here, once: call it
        before other threads use the GPU. A capture that fails is logged and leaves the eager path; returns
        whether the graph is in use. With XFeat the extraction runs as a graph too, one per image size, captured
        at its first image (``FeatureExtractor.use_cuda_graph``). Unmeasured in the node so far (docs/results.md,
        GPU)."""
        if not enabled:
            self._graph = None
            if self.extractor.cuda_graph_active:
                self.extractor.use_cuda_graph(False)
            return False
        if self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA matcher, this one runs on {self.device}")
        try:
            self._graph = self.cuda_graph(batch=1, pad_to=pad_to)
        except Exception as e:  # a GPU or torch build that cannot capture: keep matching, eagerly
            log.warning("CUDA graph capture failed (%s: %s); matching without it", type(e).__name__, e)
            self._graph = None
        # the other front ends' detections have data-dependent shapes
        if self.features == "xfeat" and self.extractor.device.type == "cuda":
            self.extractor.use_cuda_graph(True)
        return self._graph is not None

    def _check_features(self, pairs: Sequence[tuple[Features, Features]]) -> None:
        """ValueError for a feature set this network cannot take (another front end's descriptors; points not in
        score order for a network whose Mamba branch scans them in input order, as it was trained)."""
        dim = int(self.net.conf["input_dim"])
        score_order = self.net.conf["scan_order"] == "score" and self.net.conf["mixer"] != "attention"
        for pair in pairs:
            for f in pair:
                if not isinstance(f, Features):
                    raise TypeError(f"expected Features, got {type(f).__name__}")
                f.require_front_end(self.features, "this matcher", "Matcher.extract")
                if f.descriptors.shape[-1] != dim:
                    raise ValueError(f"these Features have {f.descriptors.shape[-1]}-d descriptors, but this matcher "
                                     f"({self.features}) takes {dim}-d: extract them with the same front end "
                                     f"(Matcher.extract)")
                # (scores on the CPU only: on a GPU the check would wait for the device at every call)
                if score_order and len(f) > 1 and f.scores.device.type == "cpu" and bool(
                        (f.scores[1:] > f.scores[:-1]).any()):
                    raise ValueError("this network's Mamba branch scans the points in the order given, which must be "
                                     "by detection score, descending (as Matcher.extract returns them): reorder "
                                     "keypoints, descriptors and scores by scores.argsort(descending=True)")

    def _batch(self, pairs: Sequence[tuple[Features, Features]], pad_to: int | None = None) -> dict[str, torch.Tensor]:
        dtype = torch.float16 if self.fp16 else torch.float32
        data: dict[str, torch.Tensor] = {}
        for side in (0, 1):
            feats = [p[side].to(self.device) for p in pairs]
            length = max(max(len(f) for f in feats), int(pad_to or 0))
            dim = feats[0].descriptors.shape[-1]
            kpts = torch.zeros((len(feats), length, 2), device=self.device)
            desc = torch.zeros((len(feats), length, dim), device=self.device, dtype=dtype)
            mask = torch.zeros((len(feats), length), device=self.device, dtype=torch.bool)
            for b, f in enumerate(feats):
                n = len(f)
                kpts[b, :n], desc[b, :n], mask[b, :n] = f.keypoints, f.descriptors.to(dtype), True
                # padding sits at the image centre so normalised coordinates stay in range
                kpts[b, n:] = kpts.new_tensor(f.image_size) / 2
            data[f"keypoints{side}"] = kpts
            data[f"descriptors{side}"] = desc
            data[f"image_size{side}"] = torch.tensor([f.image_size for f in feats], device=self.device,
                                                     dtype=torch.float32)
            if (len(pairs) > 1 or pad_to) and not bool(mask.all()):
                data[f"mask{side}"] = mask
        if ("mask0" in data) != ("mask1" in data):  # masks come in pairs
            for side in (0, 1):
                if f"mask{side}" not in data:
                    data[f"mask{side}"] = torch.ones(data[f"keypoints{side}"].shape[:2], dtype=torch.bool,
                                                     device=self.device)
        return data

    def _unbatch(self, out: dict[str, Any], pairs: Sequence[tuple[Features, Features]]) -> list[MatchResult]:
        m0 = out["matches0"].cpu()
        s0 = out["matching_scores0"].float().cpu()
        results = []
        for b, (f0, f1) in enumerate(pairs):
            n0 = len(f0)
            valid = m0[b, :n0] > -1
            idx0 = torch.where(valid)[0]
            matches = torch.stack([idx0, m0[b, :n0][valid]], -1).numpy().astype(np.int64)
            results.append(MatchResult(
                keypoints0=f0.keypoints.cpu().numpy().astype(np.float32),
                keypoints1=f1.keypoints.cpu().numpy().astype(np.float32),
                matches=matches.reshape(-1, 2), scores=s0[b, :n0][valid].numpy().astype(np.float32),
                stop_layer=int(out["stop"]), num_layers=self.num_layers, timings_ms={}))
        return results
