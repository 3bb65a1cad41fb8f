"""ONNX export of the matcher network: a fixed number of layers and a fixed number of keypoints.

    mambaglue export-onnx --features xfeat --out model.onnx [--layers N] [--keypoints K] [--weights W]
                          [--opset 18] [--no-check]

The graph is ``ExportableMatcher``: all ``layers`` layers run (no early exit, no point pruning: both are
data-dependent control flow), then the assignment of the last layer run and the mutual-nearest-neighbour
filter. Inputs (B = 1 pair unless --batch):

    keypoints0/1   (B, K, 2) float32 pixels (x, y)         descriptors0/1  (B, K, D) float32
    image_size0/1  (B, 2) float32 (W, H)                   mask0/1         (B, K) bool, True = real keypoint

An image with fewer than K keypoints is padded at the end (any coordinates, zero descriptors, mask False):
padding never matches and does not change the real keypoints' results (the network's padded-batch path).
Outputs: matches0 (B, K) int64 (index into image 1 or -1), matches1 (B, K), matching_scores0/1 (B, K), and
log_assignment (B, K+1, K+1).

Why fixed K. The selective scan runs over the keypoint sequence. For export it takes the forward-only path
``selective_scan_inference`` (chunks of T ~ sqrt(K/2) steps side by side, then a carry from chunk to
chunk): with K fixed its Python loops trace into a plain graph of about 2T + K/T small steps per scan
(K = 1024: 32 + 32), where a loop over K single steps would be thousands of nodes per scan, and a
closed form (cumulative sums of log decays) overflows float32. Dynamic K would need the loop counts as
graph inputs (ONNX Loop/Scan over symbolic trip counts), which torch.export does not produce from Python
loops; a fixed K with a mask covers every count up to K at the cost of computing the padding.
"""
from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from .models import mambaglue as mg

INPUT_NAMES = ("keypoints0", "keypoints1", "descriptors0", "descriptors1", "image_size0", "image_size1",
               "mask0", "mask1")
OUTPUT_NAMES = ("matches0", "matches1", "matching_scores0", "matching_scores1", "log_assignment")


class ExportableMatcher(nn.Module):
    """``net`` with a fixed depth and no adaptive control flow, positional tensor inputs (see module doc)."""

    def __init__(self, net: mg.MambaGlue, layers: int | None = None) -> None:
        super().__init__()
        n = net.conf["n_layers"]
        self.layers = n if layers is None else int(layers)
        if not 1 <= self.layers <= n:
            raise ValueError(f"layers must be in 1..{n}, got {layers}")
        self.net = net
        self.eval()

    def forward(self, keypoints0: torch.Tensor, keypoints1: torch.Tensor, descriptors0: torch.Tensor,
                descriptors1: torch.Tensor, image_size0: torch.Tensor, image_size1: torch.Tensor,
                mask0: torch.Tensor, mask1: torch.Tensor) -> tuple[torch.Tensor, ...]:
        data = {"keypoints0": keypoints0, "keypoints1": keypoints1, "descriptors0": descriptors0,
                "descriptors1": descriptors1, "image_size0": image_size0, "image_size1": image_size1,
                "mask0": mask0, "mask1": mask1}
        set0, set1 = self.net.encode(data)  # tokens in scan order (Hilbert: padding last)
        desc0, desc1, enc0, enc1 = set0["desc"], set1["desc"], set0["enc"], set1["enc"]
        tmask0, tmask1 = set0["mask"], set1["mask"]
        for i in range(self.layers):
            desc0, desc1 = self.net.transformers[i](desc0, desc1, enc0, enc1, tmask0, tmask1)
        scores = self.net.log_assignment[self.layers - 1](desc0, desc1, tmask0, tmask1)
        m0, m1, s0, s1 = mg.filter_matches(scores, self.net.conf["filter_threshold"])
        m0, m1, s0, s1 = m0.masked_fill(~tmask0, -1), m1.masked_fill(~tmask1, -1), s0 * tmask0, s1 * tmask1
        if self.net.reorders:
            k0, k1 = keypoints0.shape[1], keypoints1.shape[1]
            m0, m1, s0, s1 = mg.to_input_order(m0, m1, s0, s1, set0["index"], set1["index"], k0, k1)
            scores = mg.unpermute_assignment(scores, set0["index"], set1["index"])
        return m0, m1, s0, s1, scores


@contextlib.contextmanager
def inference_scan_everywhere() -> Iterator[None]:
    """Make every Mamba branch take ``selective_scan_inference``, whatever its buffer size (export only)."""
    original = mg.use_inference_scan
    mg.use_inference_scan = lambda u, d_state: True
    try:
        yield
    finally:
        mg.use_inference_scan = original


def example_inputs(features: str, keypoints: int, batch: int = 1, valid: tuple[int, int] | None = None,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs of the exported shapes (for tracing and checks): random keypoints and descriptors in image 0,
    image 1 the same moved a little (so that there are true matches); ``valid`` real keypoints per image,
    the rest padding."""
    from .features import MATCHER_CONF

    g = torch.Generator().manual_seed(seed)
    dim = MATCHER_CONF[features]["input_dim"]
    size = torch.tensor([[640.0, 480.0]]).expand(batch, 2).contiguous()
    kpts0 = torch.rand(batch, keypoints, 2, generator=g) * size[:, None]
    desc0 = nn.functional.normalize(torch.randn(batch, keypoints, dim, generator=g), dim=-1)
    kpts1 = kpts0 + torch.randn(kpts0.shape, generator=g)
    desc1 = nn.functional.normalize(desc0 + 0.1 * torch.randn(desc0.shape, generator=g), dim=-1)
    n0, n1 = valid or (keypoints, keypoints)
    mask0, mask1 = (torch.arange(keypoints)[None].expand(batch, -1) < n for n in (n0, n1))
    return kpts0, kpts1, desc0, desc1, size, size.clone(), mask0.contiguous(), mask1.contiguous()


def export_onnx(net: mg.MambaGlue, path: str | Path, features: str, keypoints: int, layers: int | None = None,
                batch: int = 1, opset: int = 18) -> Path:
    """Export ``net`` (fixed depth, fixed keypoint count, fixed batch) to one ONNX file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = ExportableMatcher(net, layers)
    args = example_inputs(features, keypoints, batch)
    with torch.no_grad(), inference_scan_everywhere():
        torch.onnx.export(model, args, str(path), dynamo=True, input_names=list(INPUT_NAMES),
                          output_names=list(OUTPUT_NAMES), opset_version=opset, external_data=False,
                          optimize=True, verify=False)
    return path


def run_pytorch(model: ExportableMatcher, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    """The exported computation in PyTorch: the torch scan the graph was traced from, not the C++ CPU scan."""
    from .models.ssm_cpu import torch_scan_only

    with torch.no_grad(), inference_scan_everywhere(), torch_scan_only():
        return [t.numpy() for t in model(*inputs)]


def run_onnxruntime(path: str | Path, inputs: tuple[torch.Tensor, ...], threads: int | None = None
                    ) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(list(OUTPUT_NAMES), {name: t.numpy() for name, t in zip(INPUT_NAMES, inputs)})


def compare(reference: list[np.ndarray], onnx: list[np.ndarray], mask0: np.ndarray) -> dict[str, Any]:
    """How far the ONNX outputs are from PyTorch's: matches agreement, score and log-assignment errors."""
    m0_ref, m0 = reference[0], onnx[0]
    real = mask0.astype(bool)
    matched = (m0_ref > -1) | (m0 > -1)
    la_ref, la = reference[4], onnx[4]
    finite = np.isfinite(la_ref) & (la_ref > -1e3)  # padding entries sit at about -1e4
    return {
        "matches_ref": int((m0_ref[real] > -1).sum()), "matches_onnx": int((m0[real] > -1).sum()),
        "matches_equal_fraction": float((m0_ref[matched] == m0[matched]).mean()) if matched.any() else 1.0,
        "max_score_error": float(np.abs(reference[2] - onnx[2]).max()),
        "max_log_assignment_error": float(np.abs(la_ref[finite] - la[finite]).max()),
        # relative to the magnitude: near-impossible pairs sit at log probabilities of -100s, where
        # float32 kernels that sum in another order differ by more than 1e-2 absolute
        "max_log_assignment_rel_error": float((np.abs(la_ref[finite] - la[finite])
                                               / np.maximum(1.0, np.abs(la_ref[finite]))).max()),
    }


def check(path: str | Path, net: mg.MambaGlue, features: str, keypoints: int, layers: int | None = None,
          batch: int = 1, valid: tuple[int, int] | None = None, seed: int = 1) -> dict[str, Any]:
    """Run the exported file with onnxruntime (CPU) and PyTorch on the same random inputs and compare."""
    model = ExportableMatcher(net, layers)
    inputs = example_inputs(features, keypoints, batch, valid, seed)
    reference = run_pytorch(model, inputs)
    outputs = run_onnxruntime(path, inputs)
    return compare(reference, outputs, inputs[6].numpy())


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .features import FRONT_ENDS

    p.add_argument("--features", default="xfeat", choices=FRONT_ENDS)
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--weights", default=None, help="MambaGlue weights (default: Matcher's default)")
    p.add_argument("--layers", type=int, default=None, help="layers to run (default: all)")
    p.add_argument("--keypoints", type=int, default=1024, help="keypoints per image (fixed; pad with mask)")
    p.add_argument("--batch", type=int, default=1, help="pairs per call (fixed)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")


def run_cli(args: argparse.Namespace) -> int:
    from .matcher import build_network

    if args.keypoints < 1 or args.batch < 1:
        raise ValueError("--keypoints and --batch must be >= 1")
    # the network as trained: the graph runs dense Mamba columns (traced), and so must the PyTorch run it is checked against
    net, source = build_network(args.features, args.weights, mamba_ffn_rank=0)
    start = time.perf_counter()
    path = export_onnx(net, args.out, args.features, args.keypoints, args.layers, args.batch, args.opset)
    layers = args.layers or net.conf["n_layers"]
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {time.perf_counter() - start:.1f} s): "
          f"{args.features}, weights {source}, {layers} layers, {args.keypoints} keypoints, batch {args.batch}, "
          f"opset {args.opset}")
    if args.no_check:
        return 0
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("onnxruntime is not installed: not checked (pip install onnxruntime)")
        return 0
    report = check(path, net, args.features, args.keypoints, args.layers, args.batch,
                   valid=(args.keypoints, max(1, args.keypoints * 3 // 4)))
    print("onnxruntime vs PyTorch, random keypoints and their perturbation (image 1 padded to 3/4): "
          + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in report.items()))
    return 0
