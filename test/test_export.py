"""ONNX export: the exported graph reproduces PyTorch (onnxruntime on CPU), padding included."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mambaglue_ros import export as E
from mambaglue_ros.cli import main as cli_main
from mambaglue_ros.matcher import build_network


def live_mamba(net, seed: int = 0):
    """Non-zero Mamba FFN columns, so that the exported Mamba branch (the scan) matters."""
    g = torch.Generator().manual_seed(seed)
    d = net.conf["descriptor_dim"]
    with torch.no_grad():
        for layer in net.transformers:
            w = layer.self_attn.ffn[0].weight
            w[:, 2 * d:] = 0.05 * torch.randn(w[:, 2 * d:].shape, generator=g)
    return net


@pytest.fixture(scope="module")
def xfeat_net():
    net, _ = build_network("xfeat", "lightglue", early_exit=False, pruning=False)
    return live_mamba(net).eval()


def test_exportable_matcher_equals_the_network(xfeat_net):
    """The export wrapper (fixed depth, masks) computes what the network computes with exit and pruning off."""
    inputs = E.example_inputs("xfeat", 96, valid=(96, 70), seed=3)
    k0, k1, d0, d1, s0, s1, m0, m1 = inputs
    with torch.no_grad():
        out = xfeat_net({"keypoints0": k0, "keypoints1": k1[:, :70], "descriptors0": d0, "descriptors1": d1[:, :70],
                         "image_size0": s0, "image_size1": s1})
    ref = E.run_pytorch(E.ExportableMatcher(xfeat_net), inputs)
    assert (out["matches0"] > -1).sum() >= 5  # the pair really matches
    np.testing.assert_array_equal(ref[0], out["matches0"].numpy())
    np.testing.assert_array_equal(ref[1][:, :70], out["matches1"].numpy())
    assert (ref[1][:, 70:] == -1).all() and (ref[3][:, 70:] == 0).all()  # padding never matches
    np.testing.assert_allclose(ref[2], out["matching_scores0"].numpy(), atol=1e-4)  # masked kernels round apart
    with pytest.raises(ValueError):
        E.ExportableMatcher(xfeat_net, layers=7)


def test_onnx_matches_pytorch(xfeat_net, tmp_path):
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx==1.23.2)")
    pytest.importorskip("onnxscript",
                        reason="torch.onnx.export(dynamo=True) needs onnxscript (pip install onnxscript==0.7.2)")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime==1.31.1)")
    import onnx

    path = E.export_onnx(xfeat_net, tmp_path / "mg.onnx", "xfeat", keypoints=64, layers=2)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == list(E.INPUT_NAMES)
    assert [o.name for o in model.graph.output] == list(E.OUTPUT_NAMES)
    # the scan traces without in-place writes: scatters only where the log assignment is assembled (6)
    assert sum(n.op_type.startswith("Scatter") for n in model.graph.node) <= 6
    for valid, seed in (((64, 64), 1), ((64, 40), 2), ((30, 50), 3)):
        inputs = E.example_inputs("xfeat", 64, valid=valid, seed=seed)
        ref = E.run_pytorch(E.ExportableMatcher(xfeat_net, layers=2), inputs)
        got = E.run_onnxruntime(path, inputs, threads=1)
        report = E.compare(ref, got, inputs[6].numpy())
        assert report["matches_ref"] >= 2, report  # random descriptors, 2 layers: few, but some
        assert report["matches_equal_fraction"] == 1.0, report
        assert report["max_score_error"] < 1e-4, report
        assert report["max_log_assignment_rel_error"] < 1e-2, report  # measured <= 1.5e-3
        assert (got[0][0, valid[0]:] == -1).all() and (got[1][0, valid[1]:] == -1).all()


def test_export_cli(tmp_path, capsys):
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    out = tmp_path / "cli.onnx"
    assert cli_main(["export-onnx", "--features", "xfeat", "--weights", "lightglue", "--out", str(out),
                     "--layers", "1", "--keypoints", "32"]) == 0
    text = capsys.readouterr().out
    assert out.stat().st_size > 0 and "1 layers, 32 keypoints" in text and "matches_equal_fraction 1" in text
