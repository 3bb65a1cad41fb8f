"""Several cameras, one matcher: the pairs the cameras' trackers ask for are matched in one forward pass.

Plain Python (threads, no ROS), like ``pipeline.py``; the multi-camera node (``ros/multi_camera.py``) gives each
camera's ``MatcherNode`` a ``MatcherClient`` of one shared ``BatchingMatcher``.

Why. On a GPU one forward pass over N padded pairs costs little more than one pair (the network is a chain of
small kernels whose launch cost dominates at batch 1), so N camera streams share one network and one GPU at
nearly the cost of one. On a CPU a batch is *not* faster (padding, no pruning: ``benchmarks/multi_camera.py``), so
the single-camera node stays the CPU choice; a batch of one pair takes the ordinary ``match_features`` path
(pruning on), so a multi-camera node whose cameras do not coincide in time loses nothing.

How. Each tracker thread calls its client's ``match_features`` and blocks. The batcher's thread takes the first
waiting request, waits at most ``max_wait_ms`` for others (up to ``max_batch``), runs them as one
``Matcher.match_batch`` and hands every caller its own result (or the exception). Per camera:

* ``alpha`` (the rate controller's knob): a batch runs at the highest α among its pairs (the most demanding
  camera decides when the whole batch may exit; early exit applies to a batch as a whole).
* ``max_keypoints``: each camera's own budget, applied when its image is extracted. Extraction runs in the
  caller's thread, one image at a time (the front end and its keypoint budget are shared).

Everything else (front end, weights, device, filter threshold) is the shared matcher's.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from .types import check_alpha, check_image_scale, check_max_keypoints

__all__ = ["BatchingMatcher", "MatcherClient"]


@dataclass
class _Request:
    feats0: Any
    feats1: Any
    alpha: float | None
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class BatchingMatcher:
    """One ``Matcher`` shared by several callers, whose ``match_features`` calls are batched.

    Args:
        matcher: a ``Matcher`` (``match_features``, ``match_batch``, ``extract``, ``alpha``, ``max_keypoints``).
        max_batch: most pairs in one forward pass.
        max_wait_ms: how long the first waiting pair waits for others to join its batch.

    Attributes: ``batches`` and ``pairs`` served so far (``pairs / batches`` = the mean batch size).
    """

    def __init__(self, matcher: Any, max_batch: int = 8, max_wait_ms: float = 2.0) -> None:
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if not max_wait_ms >= 0.0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.matcher = matcher
        self.max_batch, self.max_wait_s = int(max_batch), float(max_wait_ms) / 1e3
        self.batches = 0
        self.pairs = 0
        self.clients = 0
        self._kept_per_camera = getattr(matcher, "prepared_kept", None)  # Matcher.prepare's images, one camera
        self.extract_lock = threading.Lock()  # the front end and its keypoint budget are shared
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="mambaglue-batcher", daemon=True)
        self._thread.start()

    def client(self) -> "MatcherClient":
        """A matcher for one camera's tracker (its own α and keypoint budget). The shared matcher keeps each
        camera's first self blocks for a batch of one pair (``Matcher.prepared_kept``: as many per camera as a
        matcher of its own keeps)."""
        client = MatcherClient(self)
        self.clients += 1
        if self._kept_per_camera is not None:
            self.matcher.prepared_kept = self._kept_per_camera * self.clients
        return client

    def submit(self, feats0: Any, feats1: Any, alpha: float | None) -> Any:
        """Match one pair in the next batch; blocks until its result is there (raises the batch's error)."""
        request = _Request(feats0, feats1, alpha)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batching matcher is closed")
            self._queue.append(request)
            self._cond.notify_all()
        request.done.wait()
        if request.error is not None:  # one exception object per caller: several threads raise it at once
            raise RuntimeError(f"batched match failed: {type(request.error).__name__}: {request.error}") \
                from request.error
        return request.result

    def close(self) -> None:
        """Stop the batcher thread; waiting and later calls raise RuntimeError."""
        with self._cond:
            self._closed = True
            pending, self._queue = self._queue, []
            self._cond.notify_all()
        for request in pending:
            request.error = RuntimeError("the batching matcher was closed")
            request.done.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    # ------------------------------------------------------------------ the batcher's thread
    def _next_batch(self) -> list[_Request] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            deadline = time.perf_counter() + self.max_wait_s  # the first request waits this long for company
            while len(self._queue) < self.max_batch and not self._closed:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._closed:
                return None
            batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
            return batch

    def _run(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                self._serve(batch)
        finally:  # however the thread ends, nobody is left waiting for it
            self.close()

    def _serve(self, batch: Sequence[_Request]) -> None:
        alphas = [r.alpha for r in batch]
        alpha = None if any(a is None for a in alphas) else max(alphas)
        try:
            self.matcher.alpha = alpha
            pairs = [(r.feats0, r.feats1) for r in batch]
            # one pair: the ordinary path (with point pruning), exactly what a single-camera node computes
            results = [self.matcher.match_features(*pairs[0])] if len(pairs) == 1 else self.matcher.match_batch(pairs)
            if len(results) != len(batch):
                raise RuntimeError(f"the matcher returned {len(results)} results for {len(batch)} pairs")
            for r, result in zip(batch, results):
                r.result = result
            self.batches += 1
            self.pairs += len(batch)
        except Exception as e:  # every caller of this batch gets the error; the batcher goes on
            for r in batch:
                r.error = e
        finally:
            for r in batch:
                if r.result is None and r.error is None:
                    r.error = RuntimeError("the batch was not served")
                r.done.set()


class MatcherClient:
    """One camera's view of a ``BatchingMatcher``: the ``Matcher`` interface the trackers and the node use.

    ``match_features`` joins the next batch; ``extract`` uses this client's keypoint budget and resolution;
    ``alpha``, ``max_keypoints`` and ``image_scale`` are this client's own. Other attributes (``features``, ``device``, ``net``, ...) are the
    shared matcher's.
    """

    def __init__(self, batcher: BatchingMatcher) -> None:
        self._batcher = batcher
        self._alpha = batcher.matcher.alpha
        self._max_keypoints = int(batcher.matcher.max_keypoints)
        self._image_scale = float(getattr(batcher.matcher, "image_scale", 1.0))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batcher.matcher, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # only the per-camera knobs are this client's; anything else is the shared network's and would change
        # every camera (or, set here, silently hide the shared value)
        if name not in ("_batcher", "_alpha", "_max_keypoints", "_image_scale", "alpha", "max_keypoints",
                        "image_scale"):
            raise AttributeError(f"{name} belongs to the matcher all cameras share; a camera's client sets only "
                                 "alpha, max_keypoints and image_scale")
        object.__setattr__(self, name, value)

    @property
    def alpha(self) -> float | None:
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

    @property
    def image_scale(self) -> float:
        return self._image_scale

    @image_scale.setter
    def image_scale(self, value: float) -> None:
        self._image_scale = check_image_scale(value)

    def extract(self, image: Any) -> Any:
        """Features of ``image`` with this client's keypoint budget and resolution."""
        with self._batcher.extract_lock:
            matcher = self._batcher.matcher
            if matcher.max_keypoints != self._max_keypoints:
                matcher.max_keypoints = self._max_keypoints
            if getattr(matcher, "image_scale", 1.0) != self._image_scale:
                matcher.image_scale = self._image_scale
            return matcher.extract(image)

    def prepare(self, feats: Any) -> None:
        """Nothing: a padded batch computes every image's first self block in its own forward pass, so the
        camera's extraction stage does not compute it ahead (``Matcher.prepare``); a batch of one pair still
        reuses what the shared matcher kept."""

    def match_features(self, feats0: Any, feats1: Any) -> Any:
        """Match two feature sets in the next batch (at this client's α or a higher one of the batch)."""
        return self._batcher.submit(feats0, feats1, self._alpha)

    def match(self, image0: Any, image1: Any) -> Any:
        return self.match_features(self.extract(image0), self.extract(image1))
