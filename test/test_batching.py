"""Several cameras through one matcher (``batching.py``): each caller gets its own pair's result, concurrent
pairs share a forward pass, per-camera α and keypoint budgets, errors reach the right callers, closing."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from mambaglue_ros.batching import BatchingMatcher, _Request
from mambaglue_ros.evaluation.bench import photo_pair
from mambaglue_ros.matcher import Matcher


class RecordingMatcher:
    """Returns (feats0, feats1, alpha) as the 'result'; records every call. ``gate`` holds the first call
    until released, so that the test can queue more pairs behind it."""

    def __init__(self) -> None:
        self.alpha = 0.95
        self.max_keypoints = 512
        self.image_scale = 1.0
        self.features = "fake"
        self.calls: list[tuple[str, int, float | None]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.fail_with: Exception | None = None

    def _hold(self) -> None:
        self.entered.set()
        assert self.gate.wait(10.0)
        if self.fail_with is not None:
            raise self.fail_with

    def match_features(self, f0, f1):
        self.calls.append(("single", 1, self.alpha))
        self._hold()
        return (f0, f1, self.alpha)

    def match_batch(self, pairs):
        self.calls.append(("batch", len(pairs), self.alpha))
        self._hold()
        return [(f0, f1, self.alpha) for f0, f1 in pairs]

    def extract(self, image):
        return ("features", image, self.max_keypoints, self.image_scale)


def wait_until(condition, timeout: float = 10.0) -> None:
    """Poll in-process state (no ROS, no timing assumption) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        threading.Event().wait(0.001)


def ask(client, f0, f1, out, key):
    out[key] = client.match_features(f0, f1)


def test_concurrent_pairs_share_one_batch_and_each_caller_gets_its_own():
    inner = RecordingMatcher()
    batcher = BatchingMatcher(inner, max_batch=8, max_wait_ms=0.0)
    try:
        clients = [batcher.client() for _ in range(4)]
        clients[2].alpha = 0.99  # the most demanding camera decides the batch's alpha
        out: dict = {}
        first = threading.Thread(target=ask, args=(clients[0], "a0", "a1", out, 0))
        first.start()
        assert inner.entered.wait(10.0)  # the batcher is busy with the first pair ...
        rest = [threading.Thread(target=ask, args=(c, f"{i}0", f"{i}1", out, i)) for i, c in enumerate(clients[1:], 1)]
        for t in rest:
            t.start()
        wait_until(lambda: len(batcher._queue) == 3)  # ... while three more queue up behind it
        inner.gate.set()
        for t in [first, *rest]:
            t.join(10.0)
        assert inner.calls == [("single", 1, 0.95), ("batch", 3, 0.99)]
        assert out[0] == ("a0", "a1", 0.95)
        assert [out[i][:2] for i in (1, 2, 3)] == [("10", "11"), ("20", "21"), ("30", "31")]
        assert batcher.batches == 2 and batcher.pairs == 4
    finally:
        inner.gate.set()
        batcher.close()


def test_per_client_budget_alpha_and_errors():
    inner = RecordingMatcher()
    inner.gate.set()
    batcher = BatchingMatcher(inner, max_wait_ms=0.0)
    try:
        a, b = batcher.client(), batcher.client()
        b.max_keypoints = 256
        assert a.extract("img")[2] == 512 and b.extract("img")[2] == 256 and a.max_keypoints == 512
        b.image_scale = 0.5  # each camera's rate controller sets its own front-end resolution
        assert b.extract("img")[3] == 0.5 and a.extract("img")[3] == 1.0 and a.image_scale == 1.0
        with pytest.raises(ValueError, match="image_scale"):
            a.image_scale = 0.0
        b.alpha = None  # early exit off for this camera: a batch with it runs every layer
        assert b.match_features("x", "y")[2] is None and a.alpha == 0.95
        with pytest.raises(ValueError):
            a.alpha = 1.5
        with pytest.raises(ValueError):
            a.max_keypoints = 0
        assert a.features == "fake"  # everything else is the shared matcher's, and a client does not set it
        inner.prepare = lambda feats: pytest.fail("a batch computes its images' first self blocks itself")
        a.prepare(("features", "img", 512))  # the camera's extraction stage asks; nothing is computed ahead
        assert not hasattr(inner, "prepared_kept") and batcher.clients == 2  # a matcher that keeps nothing
        with pytest.raises(AttributeError, match="share"):
            a.features = "other"
        inner.fail_with = RuntimeError("out of memory")
        with pytest.raises(RuntimeError, match="out of memory"):
            a.match_features("x", "y")
        inner.fail_with = None
        assert a.match_features("x", "y")[:2] == ("x", "y")  # the batcher goes on after an error
        inner.match_features = lambda f0, f1: None  # a matcher that returns nothing: the caller is told, not left waiting
        with pytest.raises(RuntimeError, match="not served"):
            a.match_features("x", "y")
    finally:
        batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        a.match_features("x", "y")


def test_the_shared_matcher_keeps_first_self_blocks_for_every_camera():
    """A batch of one pair goes through ``Matcher.match_features``, which reuses each image's first self block:
    the shared matcher keeps as many of them per camera as a matcher of its own keeps."""
    inner = RecordingMatcher()
    inner.prepared_kept = 8
    batcher = BatchingMatcher(inner)
    try:
        clients = [batcher.client() for _ in range(3)]
        assert inner.prepared_kept == 24 and len(clients) == 3
    finally:
        batcher.close()


def test_close_releases_waiting_callers():
    inner = RecordingMatcher()
    batcher = BatchingMatcher(inner, max_wait_ms=0.0)
    client = batcher.client()
    out: dict = {}
    errors: list = []

    def call(key):
        try:
            out[key] = client.match_features(key, key)
        except RuntimeError as e:
            errors.append(str(e))

    busy = threading.Thread(target=call, args=("first",))
    busy.start()
    assert inner.entered.wait(10.0)
    waiting = threading.Thread(target=call, args=("second",))
    waiting.start()
    wait_until(lambda: len(batcher._queue) == 1)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    waiting.join(10.0)
    assert len(errors) == 1 and "the batching matcher was closed" in errors[0]  # released, not left hanging
    inner.gate.set()
    busy.join(10.0)
    closer.join(10.0)
    assert out["first"][:2] == ("first", "first")


@pytest.fixture(scope="module")
def xfeat_pairs():
    m = Matcher(features="xfeat", max_keypoints=256, device="cpu")
    image0, image1 = photo_pair(256)
    f0, f1 = m.extract(image0), m.extract(image1)
    g0 = m.extract(np.ascontiguousarray(image1[:, ::-1]))  # a second camera: another pair, other counts
    g1 = m.extract(np.ascontiguousarray(image0[:, ::-1]))
    return m, [(f0, f1), (g0, g1)]


def test_real_network_batched_pairs_match_like_separate_calls(xfeat_pairs):
    m, pairs = xfeat_pairs
    m.alpha = None  # full depth: a batch and separate calls run the same layers
    separate = [m.match_features(*p) for p in pairs]
    batcher = BatchingMatcher(m, max_wait_ms=0.0)
    try:
        requests = [_Request(f0, f1, None) for f0, f1 in pairs]
        batcher._serve(requests)  # both pairs in one forward pass (as concurrent callers would be)
        assert all(r.error is None for r in requests), [r.error for r in requests]
        batched = [r.result for r in requests]
        assert batcher.batches == 1 and batcher.pairs == 2
    finally:
        batcher.close()
    for s, b in zip(separate, batched):
        # a batch runs without point pruning and pads the shorter set: the same matches, up to a few at the margin
        same = len({tuple(x) for x in s.matches} & {tuple(x) for x in b.matches})
        assert same >= 0.95 * max(len(s), len(b)) and len(s) > 50
