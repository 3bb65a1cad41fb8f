"""The matcher network as one captured CUDA graph, for a fixed batch and padded keypoint count.

At batch 1 a GPU spends the matcher's time launching kernels, not running them: on an H200 (docs/results.md,
GPU) MambaGlue's eager forward at 1024 keypoints took 27 ms, flat from 512 to 2048 keypoints, while a batch of
32 pairs cost 1.5 ms per pair. ``torch.compile`` (mode 'reduce-overhead') gained only 1.3x, because the early-exit
test is a host decision and breaks the network into many graphs. A graph captured here holds the whole forward:
one replay per call.

What a graph cannot hold is a decision on the host, so the captured network runs every layer (no early exit)
and prunes no point: it gives up the exit's one or two layers to drop every launch. Inputs are
padded to ``pad_to`` keypoints (masked: the padding changes no match, ``test_cuda_path``) and copied into the
graph's static input tensors; a call with fewer than ``batch`` pairs repeats its last pair.

    m = Matcher(features="xfeat", device="cuda", precision="auto")
    graph = m.cuda_graph(batch=1, pad_to=1024)   # captures (a few warm-up passes first)
    result = graph.match_features(f0, f1)        # MatchResult, like Matcher.match_features
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Sequence

import torch

from .types import Features, MatchResult

if TYPE_CHECKING:
    from .matcher import Matcher

__all__ = ["GraphedExtractor", "GraphedMatcher", "capture"]
log = logging.getLogger(__name__)


def capture(device: torch.device, forward: Any, warmup: int = 3) -> tuple[torch.cuda.CUDAGraph, Any, float]:
    """``forward()`` (on static inputs) captured as a CUDA graph under inference mode: (graph, its outputs,
    seconds). Warm-up runs first off the default stream (Triton JIT, cuBLAS handles, cuDNN autotuning,
    allocations). Callers enter their autocast with ``cache_enabled=False``: cached casts would be stale at replay."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        side_stream = torch.cuda.Stream(device)
        side_stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side_stream):
            for _ in range(max(1, warmup)):
                forward()
        torch.cuda.current_stream(device).wait_stream(side_stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's CUDA work (the node's other stage) does not break this capture
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = forward()
    torch.cuda.synchronize(device)
    return graph, out, time.perf_counter() - t0


class GraphedMatcher:
    """``matcher``'s network captured for ``batch`` pairs of at most ``pad_to`` keypoints per side (CUDA only).

    ``match_batch`` / ``match_features`` return what the matcher's own methods return (stop layer: the last);
    sets larger than ``pad_to`` fall back to the matcher's eager ``match_batch`` (counted in ``fallbacks``).
    The graph keeps its own copy of nothing but the inputs and activations: weights are the matcher's, so
    changing them (loading a checkpoint) needs a new capture; settings (alpha) do not apply inside the graph.
    """

    def __init__(self, matcher: "Matcher", batch: int = 1, pad_to: int | None = None, warmup: int = 3) -> None:
        if matcher.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA matcher, this one runs on {matcher.device}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.matcher, self.batch = matcher, int(batch)
        self.pad_to = int(pad_to or matcher.max_keypoints)
        if self.pad_to < 1:
            raise ValueError(f"pad_to must be >= 1, got {pad_to}")
        self.fallbacks = 0
        self._lock = threading.Lock()  # one set of static buffers: one replay at a time (node: two threads)
        net, dev = matcher.net, matcher.device
        dtype = torch.float16 if matcher.fp16 else torch.float32
        b, k, dim = self.batch, self.pad_to, int(net.conf["input_dim"])
        # static inputs: a valid set (random points, all real) so the warm-up and capture run the real kernels
        gen = torch.Generator(device=dev).manual_seed(0)
        self.static: dict[str, torch.Tensor] = {}
        for side in (0, 1):
            self.static[f"keypoints{side}"] = torch.rand((b, k, 2), device=dev, generator=gen) * 400
            self.static[f"descriptors{side}"] = torch.nn.functional.normalize(
                torch.randn((b, k, dim), device=dev, generator=gen), dim=-1).to(dtype)
            self.static[f"image_size{side}"] = torch.full((b, 2), 400.0, device=dev)
            self.static[f"mask{side}"] = torch.ones((b, k), dtype=torch.bool, device=dev)
        with self._full_depth(), self._autocast():
            self.graph, self.out, self.capture_s = capture(dev, lambda: net(self.static), warmup)
        log.info("captured the matcher as a CUDA graph: batch %d, %d keypoints, %.1f s", b, k, self.capture_s)

    @contextlib.contextmanager
    def _full_depth(self):
        conf = self.matcher.net.conf
        saved = {key: conf[key] for key in ("early_exit", "pruning")}
        conf.update(early_exit=False, pruning=False)
        try:
            yield
        finally:
            conf.update(saved)

    def _autocast(self) -> torch.autocast:
        # the autocast cache must be off while a graph is captured (its casts would be stale at replay)
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.matcher.precision == "bf16",
                              cache_enabled=False)

    @torch.inference_mode()
    def match_batch(self, pairs: Sequence[tuple[Features, Features]]) -> list[MatchResult]:
        """Up to ``batch`` feature pairs in one replay; more pairs run in several replays."""
        if not pairs:
            return []
        if any(max(len(a), len(b)) > self.pad_to for a, b in pairs):
            self.fallbacks += 1
            return self.matcher.match_batch(pairs)
        results: list[MatchResult] = []
        with self._lock:
            for start in range(0, len(pairs), self.batch):
                results += self._replay(list(pairs[start:start + self.batch]))
        return results

    def _replay(self, chunk: list[tuple[Features, Features]]) -> list[MatchResult]:
        t0 = time.perf_counter()
        data = self.matcher._batch(chunk + [chunk[-1]] * (self.batch - len(chunk)), pad_to=self.pad_to)
        for key, static in self.static.items():
            if key in data:
                static.copy_(data[key])
            else:  # _batch leaves the mask out where every point is real
                static.fill_(True)
        self.graph.replay()
        out = self.matcher._unbatch(self.out, chunk)
        elapsed = (time.perf_counter() - t0) * 1e3
        for r in out:
            r.timings_ms["match"] = elapsed / len(chunk)
        return out

    def match_features(self, feats0: Features, feats1: Features) -> MatchResult:
        """One pair (what the node asks for every frame)."""
        return self.match_batch([(feats0, feats1)])[0]


class GraphedExtractor:
    """XFeat's detection (network, NMS, top-k, descriptor sampling) captured as one CUDA graph for images of one
    size: one replay instead of ~190 kernel launches per image (``FeatureExtractor.use_cuda_graph``).

    The graph runs ``detect_fixed`` (the fixed-shape form of kornia's ``detectAndCompute``) for ``top_k``
    keypoints; ``run`` returns the valid rows, at most ``limit`` of them (the top-k is sorted, so a lower budget is
    its prefix and needs no new capture).
    """

    def __init__(self, extractor: Any, shape: Sequence[int], warmup: int = 3) -> None:
        if extractor.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA extractor, this one runs on {extractor.device}")
        net, dev = extractor.net, extractor.device
        self.shape, self.top_k = tuple(int(s) for s in shape), int(extractor.max_keypoints)
        threshold = extractor.detection_threshold
        self._lock = threading.Lock()
        self.static = torch.rand(self.shape, device=dev, generator=torch.Generator(device=dev).manual_seed(0))
        if extractor.channels_last:
            self.static = self.static.contiguous(memory_format=torch.channels_last)
        with extractor.autocast(cache_enabled=False):
            self.graph, self.out, self.capture_s = capture(
                dev, lambda: net.detect_fixed(self.static, self.top_k, threshold), warmup)
        log.info("captured XFeat's detection as a CUDA graph: %s, %d keypoints, %.1f s", self.shape, self.top_k,
                 self.capture_s)

    @torch.inference_mode()
    def run(self, x: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x of the captured shape -> (keypoints (n, 2), descriptors (n, 64), scores (n,)), new tensors."""
        with self._lock:  # one set of static buffers: the outputs are copied out before the next replay
            self.static.copy_(x)
            self.graph.replay()
            keypoints, scores, descriptors = (t[0, :limit] for t in self.out)
            valid = scores > 0
            return keypoints[valid], descriptors[valid], scores[valid]
