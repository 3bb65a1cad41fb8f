"""bf16 on the CPU: matrix products padded to a few shapes (models/gemm_shapes.py).

oneDNN keeps a compiled kernel for every bf16 product shape for the life of the process; the padding bounds the
shapes (and so the memory) and must not change the values of the real rows and columns.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mambaglue_ros.models.gemm_shapes import BucketedGemmShapes, bucket_size

class ProductShapes(TorchDispatchMode):
    """Records the shapes of the matrix products torch runs (below the function mode, after autocast's casts):
    ``linear`` as ('linear', rows of the input, out features), ``matmul`` as ('matmul', shape of a, shape of b)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: set[tuple] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.linear.default:
            x, w = args[0], args[1]
            self.shapes.add(("linear", x.numel() // x.shape[-1], w.shape[0]))
        elif func is torch.ops.aten.matmul.default:
            self.shapes.add(("matmul", tuple(args[0].shape), tuple(args[1].shape)))
        return func(*args, **(kwargs or {}))

    def linear_rows(self) -> set[int]:
        return {s[1] for s in self.shapes if s[0] == "linear"}


def test_bucket_sizes_are_few_and_close_above_the_size():
    sizes = [bucket_size(n) for n in range(1, 2049)]
    assert all(s >= n for n, s in zip(range(1, 2049), sizes))
    assert all(b >= a for a, b in zip(sizes, sizes[1:]))  # monotone
    assert all(bucket_size(n) - n < 32 for n in range(1, 257))
    assert all(bucket_size(n) <= 1.125 * n for n in range(513, 2049))
    assert all(bucket_size(n) <= 1.25 * n for n in range(257, 513))
    assert len(set(sizes[32:])) == 27  # 33..2048 keypoints: 7 + 12 + 8 sizes
    assert bucket_size(512) == 512 and bucket_size(1024) == 1024  # full keypoint budgets are not padded


def test_padded_products_give_the_unpadded_values():
    torch.manual_seed(0)
    layer = torch.nn.Linear(96, 192)
    with torch.inference_mode():
        for n in (1, 5, 33, 300, 511, 700):
            x = torch.randn(1, n, 96)
            plain = layer(x)
            with BucketedGemmShapes():
                padded = layer(x)
            assert padded.shape == plain.shape
            torch.testing.assert_close(padded, plain)
            # attention-like products, every size varying (the contraction too: softmax(q k^T) v over n keys)
            q, k = torch.randn(1, 2, n, 24), torch.randn(1, 2, n + 7, 24)
            p = torch.softmax(q @ k.transpose(-1, -2), -1)
            v = torch.randn(1, 2, n + 7, 24)
            with BucketedGemmShapes():
                p_padded = torch.softmax(q @ k.transpose(-1, -2), -1)
                out_padded = torch.matmul(p_padded, v)
            torch.testing.assert_close(p_padded, p)
            torch.testing.assert_close(out_padded, p @ v)
        # broadcast products are left as they are
        a, b = torch.randn(40, 24), torch.randn(3, 24, 50)
        with BucketedGemmShapes():
            assert torch.equal(a @ b, torch.matmul(a, b))


def test_products_run_with_a_few_shapes_only():
    """Forty different token counts go through a linear layer and a product of two token sets: without the
    padding every count is a new shape (what oneDNN would compile and keep), with it only the bucket sizes."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 128)
    counts = np.random.default_rng(0).integers(33, 600, 40).tolist()

    def run() -> set[tuple]:
        with ProductShapes() as seen:
            for n in counts:
                x = torch.randn(1, n, 64)
                layer(x)
                x @ torch.randn(1, n + 3, 64).transpose(-1, -2)
        return seen.shapes

    with torch.inference_mode():
        plain = run()
        with BucketedGemmShapes():
            padded = run()
    buckets = {bucket_size(n) for n in counts}
    assert len(plain) >= 2 * len(set(counts))  # every count its own shapes
    assert {s[1] for s in padded if s[0] == "linear"} == buckets
    assert {s for s in padded if s[0] == "matmul"} == {
        ("matmul", (1, bucket_size(n), 64), (1, 64, bucket_size(n + 3))) for n in counts}
    assert len(padded) < len(plain) / 2


def test_a_bf16_matcher_on_the_cpu_pads_its_products_and_matches_as_without(photo_pair_features):
    from mambaglue_ros.matcher import Matcher

    f0, f1 = photo_pair_features
    m = Matcher(features="xfeat", precision="bf16")
    assert m.precision == "bf16" and m.bucket_gemm_shapes
    results = {}
    for bucketed in (False, True):
        m.bucket_gemm_shapes = bucketed
        m.forget_prepared()
        with ProductShapes() as seen:
            results[bucketed] = m.match_features(f0, f1)
        rows = seen.linear_rows()  # the token rows of each linear layer
        if bucketed:
            assert rows <= {bucket_size(n) for n in range(1, 4096)}, rows
        else:
            assert rows - {bucket_size(n) for n in range(1, 4096)}, "no unpadded row count: the test proves nothing"
    plain, padded = results[False], results[True]
    pairs_plain = {(tuple(a), tuple(b)) for a, b in zip(plain.points0.tolist(), plain.points1.tolist())}
    pairs_padded = {(tuple(a), tuple(b)) for a, b in zip(padded.points0.tolist(), padded.points1.tolist())}
    assert len(pairs_plain & pairs_padded) >= 0.98 * max(len(pairs_plain), len(pairs_padded)) > 20
    assert padded.stop_layer == plain.stop_layer


@pytest.fixture(scope="module")
def photo_pair_features():
    """XFeat features of the bench's moderate photo pair, cut to counts that are not bucket sizes."""
    from mambaglue_ros.evaluation.bench import photo_pair
    from mambaglue_ros.features import FeatureExtractor
    from mambaglue_ros.types import Features

    extractor = FeatureExtractor("xfeat", max_keypoints=512)
    image0, image1 = photo_pair(512, "moderate")

    def cut(f: Features, n: int) -> Features:
        return Features(f.keypoints[:n].clone(), f.descriptors[:n].clone(), f.scores[:n].clone(), f.image_size)

    return cut(extractor.extract(image0), 437), cut(extractor.extract(image1), 389)
