"""The GPU fast path: precision 'auto', fixed padded shapes, the compiled network; CUDA-only checks skip here.

``scripts/gpu_check.sh`` runs the ``on_gpu`` tests of this file on the CUDA machine (with test_ssm.py's CUDA tests).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mambaglue_ros import matcher as M
from mambaglue_ros.evaluation import bench

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def pair_features():
    m = M.Matcher(features="xfeat", device="cpu", max_keypoints=96, precision="fp32")
    image0, image1 = bench.photo_pair(96)
    return m.extract(image0), m.extract(image1)


def same_matches(a, b) -> float:
    """Fraction of a's matches that b has too."""
    sa = {tuple(x) for x in a.matches.tolist()}
    sb = {tuple(x) for x in b.matches.tolist()}
    return len(sa & sb) / max(1, len(sa))


# ---------------------------------------------------------------------------------------------- CPU
def test_precision_auto_dispatch(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert M.resolve_precision("auto", cuda) == "fp16"
    assert M.resolve_precision("auto", cuda, descriptor_dim=96) == "fp16"
    monkeypatch.setattr(M, "cpu_has_native_bf16", lambda: True)
    assert M.resolve_precision("auto", cpu) == "bf16"
    # bf16 only where it was measured to pay on a sequence: the d = 256 networks, not XFeat's d = 96
    assert M.resolve_precision("auto", cpu, descriptor_dim=256) == "bf16"
    assert M.resolve_precision("auto", cpu, descriptor_dim=96) == "fp32"
    xfeat = M.Matcher(features="xfeat", device="cpu", max_keypoints=64, precision="auto")
    aliked = M.Matcher(features="aliked", device="cpu", max_keypoints=64, precision="auto")
    assert (xfeat.precision, xfeat.extractor.precision) == ("fp32", "bf16")  # XFeat: network fp32, front end bf16
    assert (aliked.precision, aliked.extractor.precision) == ("bf16", "fp32")
    explicit = M.Matcher(features="xfeat", device="cpu", max_keypoints=64, precision="bf16")
    assert (explicit.precision, explicit.extractor.precision) == ("bf16", "fp32")
    assert M.resolve_extractor_precision("auto", "fp16", cuda, "aliked") == "fp16"
    monkeypatch.setattr(M, "cpu_has_native_bf16", lambda: False)
    assert M.resolve_precision("auto", cpu) == "fp32"
    for explicit in ("fp32", "bf16", "fp16"):
        assert M.resolve_precision(explicit, cpu) == explicit
    aliked = M.Matcher(features="aliked", device="cpu", max_keypoints=64, precision="auto")
    assert (aliked.precision, aliked.extractor.precision) == ("fp32", "fp32")
    assert M.resolve_extractor_precision("auto", "fp32", cpu, "xfeat") == "fp32"


def test_native_bf16_probe_agrees_with_the_kernel_flags():
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    assert M.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_padding_to_a_fixed_size_changes_no_match(pair_features):
    f0, f1 = pair_features
    m = M.Matcher(features="xfeat", device="cpu", max_keypoints=96, precision="fp32", alpha=None, pruning=False)
    plain = m.match_features(f0, f1)
    padded = m.match_batch([(f0, f1)], pad_to=128)[0]
    assert len(plain) > 20
    assert same_matches(plain, padded) >= 0.98 and same_matches(padded, plain) >= 0.98
    both = m.match_batch([(f0, f1), (f1, f0)], pad_to=128)
    assert same_matches(plain, both[0]) >= 0.98 and both[1].keypoints0.shape == f1.keypoints.shape


def test_compiled_network_gives_the_same_matches(pair_features):
    # backend "eager": dynamo traces the network (graph breaks at the exit test included) without a C++
    # toolchain; the inductor / CUDA-graph backends are checked on the GPU (test_on_gpu_compiled_...)
    f0, f1 = pair_features
    m = M.Matcher(features="xfeat", device="cpu", max_keypoints=96, precision="fp32", pruning=False)
    eager = m.match_batch([(f0, f1)], pad_to=128)[0]
    m.compile(backend="eager")
    for _ in range(2):
        compiled = m.match_batch([(f0, f1)], pad_to=128)[0]
        assert np.array_equal(compiled.matches, eager.matches) and compiled.stop_layer == eager.stop_layer
    m.alpha = 0.5  # settings stay live on the compiled network
    assert m.alpha == 0.5 and m.match_batch([(f0, f1)], pad_to=128)[0].stop_layer <= eager.stop_layer


# ---------------------------------------------------------------------------------------------- CUDA
cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (scripts/gpu_check.sh runs these)")


@cuda
def test_on_gpu_fp16_auto_matches_fp32(pair_features):
    f0, f1 = pair_features
    fp32 = M.Matcher(features="xfeat", device="cuda", precision="fp32", alpha=None, pruning=False)
    auto = M.Matcher(features="xfeat", device="cuda", precision="auto", alpha=None, pruning=False)
    assert auto.precision == "fp16"
    a, b = fp32.match_features(f0, f1), auto.match_features(f0, f1)
    assert same_matches(a, b) >= 0.95 and same_matches(b, a) >= 0.95


@cuda
def test_on_gpu_compiled_cuda_graphs_match_eager(pair_features):
    f0, f1 = pair_features
    m = M.Matcher(features="xfeat", device="cuda", precision="auto", pruning=False)
    eager = [r.matches for r in m.match_batch([(f0, f1)] * 4, pad_to=128)]
    m.compile()  # reduce-overhead: CUDA graphs
    for _ in range(3):  # warm-up, record, replay
        compiled = [r.matches for r in m.match_batch([(f0, f1)] * 4, pad_to=128)]
    for e, c in zip(eager, compiled):
        sa, sb = {tuple(x) for x in e.tolist()}, {tuple(x) for x in c.tolist()}
        assert len(sa & sb) >= 0.98 * max(1, len(sa))


@cuda
def test_on_gpu_batch_equals_separate_calls(pair_features):
    f0, f1 = pair_features
    m = M.Matcher(features="xfeat", device="cuda", precision="fp32", alpha=None, pruning=False)
    batched = m.match_batch([(f0, f1), (f1, f0), (f0, f0)])
    for (a, b), r in zip([(f0, f1), (f1, f0), (f0, f0)], batched):
        assert same_matches(m.match_features(a, b), r) >= 0.98


def test_cuda_graph_needs_a_cuda_matcher():
    m = M.Matcher(features="xfeat", device="cpu", max_keypoints=64, precision="fp32")
    with pytest.raises(ValueError, match="CUDA"):
        m.cuda_graph(batch=1, pad_to=64)


def test_full_depth_padded_network_is_one_graph(pair_features):
    # What a captured CUDA graph needs (Matcher.cuda_graph): with the exit and pruning off and the sets padded
    # and masked, the forward makes no host decision. fullgraph=True fails on any graph break (a tensor read on
    # the host, a data-dependent branch); checked here on the CPU with dynamo, on the GPU by capture itself.
    f0, f1 = pair_features
    m = M.Matcher(features="xfeat", device="cpu", max_keypoints=96, precision="fp32", alpha=None, pruning=False)
    data = m._batch([(f0, f1)], pad_to=128)
    assert "mask0" in data and "mask1" in data
    with torch.inference_mode():
        eager = m.net(data)
        traced = torch.compile(m.net, backend="eager", fullgraph=True, dynamic=False)(data)
    assert torch.equal(traced["matches0"], eager["matches0"]) and traced["stop"] == eager["stop"] == m.num_layers


class HostOps(TorchDispatchMode):
    """Records the ops that, on a GPU, would copy from the host (a tensor made from Python data) or wait for the
    device (a value read on the host, a nonzero): what CUDA-graph capture refuses. dynamo (above) traces the
    first kind without a break, so it is checked at the dispatcher."""

    HOST = {"aten.lift_fresh.default", "aten.lift_fresh_copy.default", "aten.is_nonzero.default",
            "aten._local_scalar_dense.default", "aten.item.default", "aten.nonzero.default", "aten.where.default"}

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in self.HOST:
            self.found.append(str(func))
        return func(*args, **(kwargs or {}))


def test_full_depth_padded_network_neither_copies_from_nor_waits_for_the_host(pair_features):
    f0, f1 = pair_features
    m = M.Matcher(features="xfeat", device="cpu", max_keypoints=96, precision="fp32", alpha=None, pruning=False)
    data = m._batch([(f0, f1)], pad_to=128)
    with torch.inference_mode(), HostOps() as ops:
        m.net(data)
    assert ops.found == []
    m.alpha = 0.95  # the check can fail: the exit test reads a value on the host
    with torch.inference_mode(), HostOps() as ops:
        m.net(data)
    assert "aten.is_nonzero.default" in ops.found


@cuda
def test_on_gpu_cuda_graph_matches_eager_full_depth(pair_features):
    f0, f1 = pair_features  # 96 keypoints each
    m = M.Matcher(features="xfeat", device="cuda", precision="auto", alpha=0.9, pruning=False)
    graph = m.cuda_graph(batch=2, pad_to=128)
    assert m.alpha == 0.9 and m.net.conf["pruning"] is False  # the matcher's settings are back after capture
    m.alpha = None  # eager at full depth, as the graph runs
    pairs = [(f0, f1), (f1, f0)]
    eager = m.match_batch(pairs, pad_to=128)
    for _ in range(2):  # replays reuse the static buffers
        replayed = graph.match_batch(pairs)
        for e, r in zip(eager, replayed):
            assert same_matches(e, r) >= 0.98 and same_matches(r, e) >= 0.98
            assert r.stop_layer == m.num_layers and r.keypoints0.shape == e.keypoints0.shape
    one = graph.match_features(f1, f0)  # fewer pairs than the batch: the last one repeats
    assert same_matches(one, eager[1]) >= 0.98 and same_matches(eager[1], one) >= 0.98
    big = M.Features(keypoints=torch.cat([f0.keypoints] * 2), descriptors=torch.cat([f0.descriptors] * 2),
                     scores=torch.cat([f0.scores] * 2), image_size=f0.image_size)
    assert len(graph.match_features(big, f1).keypoints0) == 192 and graph.fallbacks == 1  # > pad_to: eager


def test_use_cuda_graph_routes_pairs_that_fit_and_survives_a_failed_capture(pair_features, monkeypatch):
    f0, f1 = pair_features  # 96 keypoints each
    m = M.Matcher(features="xfeat", device="cpu", max_keypoints=96, precision="fp32")
    with pytest.raises(ValueError, match="CUDA"):
        m.use_cuda_graph(True)
    assert m.use_cuda_graph(False) is False

    class RecordingGraph:  # stands in for a captured graph (no CUDA here): what match_features hands it
        pad_to = 128
        calls = 0

        def match_features(self, a, b):
            RecordingGraph.calls += 1
            return "replayed"

    assert not m.cuda_graph_active
    m._graph = RecordingGraph()
    assert m.cuda_graph_active
    assert m.match_features(f0, f1) == "replayed" and RecordingGraph.calls == 1
    big = M.Features(keypoints=torch.cat([f0.keypoints] * 2), descriptors=torch.cat([f0.descriptors] * 2),
                     scores=torch.cat([f0.scores] * 2), image_size=f0.image_size)
    eager = m.match_features(big, f1)  # 192 > 128: the eager network
    assert RecordingGraph.calls == 1 and len(eager.keypoints0) == 192

    def no_capture(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(m, "device", torch.device("cuda"))
    monkeypatch.setattr(m, "cuda_graph", no_capture)
    assert m.use_cuda_graph(True) is False and m._graph is None  # logged; matching goes on eagerly


# ------------------------------------------------------------------------- XFeat detection as one CUDA graph
def _keyed(keypoints, scores, descriptors) -> dict:
    """Rows by keypoint position: the fixed-shape top-k may order equal scores differently from kornia's."""
    return {tuple(k): (float(s), d) for k, s, d in zip(keypoints.tolist(), scores, descriptors)}


@pytest.mark.parametrize("top_k", [96, 4096])  # fewer keypoints than survivors of the NMS, and more
def test_xfeat_fixed_shape_detection_is_kornias(top_k):
    from mambaglue_ros.features import FeatureExtractor, to_tensor_image

    fe = FeatureExtractor("xfeat", top_k, device="cpu")
    for image in bench.photo_pair(96):
        x = to_tensor_image(image).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            ref = fe.net.detectAndCompute(x, top_k=top_k)[0]
            keypoints, scores, descriptors = fe.net.detect_fixed(x, top_k)
        assert keypoints.shape == (1, top_k, 2) and scores.shape == (1, top_k) and descriptors.shape == (1, top_k, 64)
        valid = scores[0] > 0
        assert int(valid.sum()) == len(ref["keypoints"]) > 50
        assert torch.equal(scores[0][valid], ref["scores"])  # the same sorted scores, to the bit
        ours = _keyed(keypoints[0][valid], scores[0][valid], descriptors[0][valid])
        theirs = _keyed(ref["keypoints"], ref["scores"], ref["descriptors"])
        assert ours.keys() == theirs.keys()
        for point, (score, desc) in theirs.items():
            assert ours[point][0] == score and torch.equal(ours[point][1], desc)


def test_xfeat_fixed_shape_detection_neither_copies_from_nor_waits_for_the_host():
    from mambaglue_ros.features import FeatureExtractor, to_tensor_image

    fe = FeatureExtractor("xfeat", 128, device="cpu")
    x = to_tensor_image(bench.photo_pair(96)[0])
    with torch.inference_mode(), HostOps() as ops:
        fe.net.detect_fixed(x, 128)
    assert ops.found == []
    with torch.inference_mode(), HostOps() as ops:  # the check can fail: kornia's path waits for a nonzero
        fe.net.detectAndCompute(x, top_k=128)
    assert "aten.nonzero.default" in ops.found


def test_extractor_use_cuda_graph_routes_by_image_size_and_survives_a_failed_capture(monkeypatch):
    from mambaglue_ros import cuda_graph
    from mambaglue_ros import features as Fe

    fe = Fe.FeatureExtractor("xfeat", 64, device="cpu")
    with pytest.raises(ValueError, match="CUDA"):
        fe.use_cuda_graph(True)
    assert fe.use_cuda_graph(False) is False and not fe.cuda_graph_active
    image = bench.photo_pair(96)[0]
    eager = fe.extract(image)

    captured = []

    class RecordingGraph:  # stands in for GraphedExtractor (no CUDA here): built per size, replays the eager path
        def __init__(self, extractor, shape):
            self.top_k, self.runs = extractor.max_keypoints, []
            captured.append((shape, self.top_k))

        def run(self, x, limit):
            self.runs.append(limit)
            with torch.inference_mode():
                k, s, d = extractor_fixed(x, self.top_k)
            valid = s[0, :limit] > 0
            return k[0, :limit][valid], d[0, :limit][valid], s[0, :limit][valid]

    def extractor_fixed(x, top_k):
        return fe.net.detect_fixed(x, top_k)

    monkeypatch.setattr(cuda_graph, "GraphedExtractor", RecordingGraph)
    fe._graphs = {}  # what use_cuda_graph(True) sets on a CUDA extractor
    assert fe.cuda_graph_active
    graphed = fe.extract(image)
    assert captured == [((1, 3, 480, 640), 64)]
    assert torch.equal(graphed.keypoints, eager.keypoints) and torch.equal(graphed.descriptors, eager.descriptors)
    fe.set_max_keypoints(32)  # a lower budget: the captured top-k's prefix, no new capture
    assert len(fe.extract(image)) == 32 and len(captured) == 1
    fe.set_max_keypoints(128)  # a higher one: captured again for that size
    assert len(fe.extract(image)) == 128 and captured[-1] == ((1, 3, 480, 640), 128)
    for side in range(Fe.MAX_GRAPHED_SIZES):  # more sizes than graphs are kept: the rest run eager
        fe.extract(image[: 320 + 32 * side, :448])
    assert len(captured) == 2 + Fe.MAX_GRAPHED_SIZES - 1

    def no_capture(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(cuda_graph, "GraphedExtractor", no_capture)
    fe._graphs = {}
    again = fe.extract(image)  # logged; this size is extracted eagerly from now on
    assert fe._graphs == {(1, 3, 480, 640): None} and len(again) == 128


@cuda
def test_on_gpu_xfeat_graphed_detection_matches_eager():
    from mambaglue_ros.features import FeatureExtractor

    eager = FeatureExtractor("xfeat", 512, device="cuda", precision="fp32")
    graphed = FeatureExtractor("xfeat", 512, device="cuda", precision="fp32")
    assert graphed.use_cuda_graph(True)
    for image in bench.photo_pair(96) * 2:  # the second round replays the captured graph
        a, b = eager.extract(image), graphed.extract(image)
        assert len(b) == len(a) and torch.allclose(b.scores, a.scores, atol=1e-5)
        ka, kb = {tuple(k) for k in a.keypoints.tolist()}, {tuple(k) for k in b.keypoints.tolist()}
        assert len(ka & kb) >= 0.99 * len(ka)
    assert list(graphed._graphs.values())[0] is not None  # captured, not fallen back
