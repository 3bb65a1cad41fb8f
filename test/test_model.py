"""MambaGlue network behaviour: batching, early exit, pruning, empty inputs, training, checkpoints."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from mambaglue_ros import weights as W
from mambaglue_ros.matcher import Matcher, build_network
from mambaglue_ros.models.mambaglue import MambaGlue
from mambaglue_ros.types import Features


def random_features(n: int, dim: int, size=(640, 480), seed=0) -> Features:
    g = torch.Generator().manual_seed(seed)
    kpts = torch.rand(n, 2, generator=g) * torch.tensor(size, dtype=torch.float32)
    desc = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    return Features(kpts, desc, torch.sort(torch.rand(n, generator=g), descending=True).values, size)


def perturbed(f: Features, seed: int) -> Features:
    """Same points moved slightly, descriptors slightly noisy: a pair with true matches."""
    g = torch.Generator().manual_seed(seed)
    desc = torch.nn.functional.normalize(f.descriptors + 0.1 * torch.randn(f.descriptors.shape, generator=g), dim=-1)
    return Features(f.keypoints + torch.randn(f.keypoints.shape, generator=g), desc, f.scores, f.image_size)


def live_mamba(net: MambaGlue, seed: int = 0) -> MambaGlue:
    """Give the zero-initialised Mamba FFN columns random values so the branch affects the output."""
    g = torch.Generator().manual_seed(seed)
    d = net.conf["descriptor_dim"]
    with torch.no_grad():
        for layer in net.transformers:
            w = layer.self_attn.ffn[0].weight
            w[:, 2 * d:] = 0.05 * torch.randn(w[:, 2 * d:].shape, generator=g)
    return net


@pytest.fixture(scope="module")
def xfeat_matcher() -> Matcher:
    m = Matcher(features="xfeat", weights="lightglue", device="cpu", alpha=None, pruning=False)
    live_mamba(m.net)
    return m


def test_padded_batch_equals_single_pairs(xfeat_matcher):
    f0a = random_features(300, 64, seed=1)
    f0b = random_features(180, 64, seed=2)
    pairs = [(f0a, perturbed(f0a, 3)), (f0b, perturbed(f0b, 4))]
    # make the second pair ragged on both sides
    f1b = pairs[1][1]
    pairs[1] = (f0b, Features(f1b.keypoints[:150], f1b.descriptors[:150], f1b.scores[:150], f1b.image_size))
    singles = [xfeat_matcher.match_features(a, b) for a, b in pairs]
    batched = xfeat_matcher.match_batch(pairs)
    for s, b in zip(singles, batched):
        assert len(s) > 10  # the perturbed pairs really match
        np.testing.assert_array_equal(s.matches, b.matches)
        np.testing.assert_allclose(s.scores, b.scores, atol=1e-4)  # masked SDPA takes another kernel


def test_early_exit_and_depth(xfeat_matcher):
    f0 = random_features(256, 64, seed=5)
    f1 = perturbed(f0, 6)
    full = xfeat_matcher.match_features(f0, f1)
    assert full.stop_layer == full.num_layers == 6
    regressor_out = xfeat_matcher.net.token_confidence[0].token[-2]
    bias = regressor_out.bias.detach().clone()
    xfeat_matcher.alpha = 0.95
    try:
        with torch.no_grad():
            regressor_out.bias.fill_(20.0)  # every point confident after layer 1 -> exit there
        early = xfeat_matcher.match_features(f0, f1)
        with torch.no_grad():
            regressor_out.bias.fill_(-20.0)  # no point confident -> run to the end
        late = xfeat_matcher.match_features(f0, f1)
    finally:
        xfeat_matcher.alpha = None
        with torch.no_grad():
            regressor_out.bias.copy_(bias)
    assert early.stop_layer == 1
    assert late.stop_layer == 6
    with pytest.raises(ValueError):
        xfeat_matcher.alpha = 1.5


def test_empty_and_tiny_inputs(xfeat_matcher):
    empty = Features(torch.zeros(0, 2), torch.zeros(0, 64), torch.zeros(0), (640, 480))
    some = random_features(50, 64)
    for a, b in [(empty, some), (some, empty), (empty, empty)]:
        r = xfeat_matcher.match_features(a, b)
        assert len(r) == 0 and r.matches.shape == (0, 2)
    one = random_features(1, 64)
    r = xfeat_matcher.match_features(one, perturbed(one, 1))
    assert r.matches.shape[1] == 2 and len(r) <= 1


def test_bf16_precision_agrees_with_fp32():
    """bf16 autocast (the CPU's fast reduced precision) finds nearly the same matches; outputs stay fp32."""
    m32 = Matcher(features="xfeat", device="cpu", alpha=None)
    m16 = Matcher(features="xfeat", device="cpu", alpha=None, precision="bf16")
    f0 = random_features(400, 64, seed=11)
    f1 = perturbed(f0, 12)
    a, b = m32.match_features(f0, f1), m16.match_features(f0, f1)
    assert len(a) > 100 and b.scores.dtype == np.float32 and np.all(np.isfinite(b.scores))
    same = len({tuple(r) for r in a.matches} & {tuple(r) for r in b.matches})
    # random descriptors make many near-ties (bf16 has 8 mantissa bits): real pairs agree closer (README)
    assert same >= 0.85 * max(len(a), len(b)), (same, len(a), len(b))
    common = {tuple(r): s for r, s in zip(a.matches, a.scores)}
    diffs = [abs(common[tuple(r)] - s) for r, s in zip(b.matches, b.scores) if tuple(r) in common]
    assert np.median(diffs) < 0.15  # scores move (~0.07 median here); matches are what users consume


def test_precision_choices():
    with pytest.raises(ValueError, match="precision"):
        Matcher(features="xfeat", device="cpu", precision="int8")
    with pytest.warns(UserWarning, match="fp16 needs CUDA"):
        m = Matcher(features="xfeat", device="cpu", precision="fp16")
    assert m.precision == "fp32"


def test_pruning_keeps_valid_indices():
    import cv2
    from skimage import data

    img0 = cv2.resize(data.coffee(), (640, 480))
    img1 = cv2.warpAffine(img0, cv2.getRotationMatrix2D((320, 240), 8, 1.05), (640, 480))
    # LightGlue's trained (linear) confidences make pruning act; an untrained deep regressor is never
    # confident, and unconfident points are never pruned.
    m = Matcher(features="xfeat", weights="lightglue", device="cpu", alpha=None, pruning=True, beta=0.95,
                regressor="linear")
    f0, f1 = m.extract(img0), m.extract(img1)
    with torch.inference_mode():
        out = m.net(m._batch([(f0, f1)]))
    assert out["kept0"] < len(f0) and out["kept1"] < len(f1), "nothing was pruned"
    r = m.match_features(f0, f1)
    m.net.conf["pruning"] = False
    unpruned = m.match_features(f0, f1)
    assert len(r) > 200
    assert r.matches[:, 0].max() < len(f0) and r.matches[:, 1].max() < len(f1)
    # pruning drops only points that would not have matched: the matches stay (nearly) the same
    same = len({tuple(x) for x in r.matches} & {tuple(x) for x in unpruned.matches})
    assert same >= 0.95 * len(unpruned)
    assert len(np.unique(r.matches[:, 0])) == len(r) and len(np.unique(r.matches[:, 1])) == len(r)
    assert np.all((r.scores > 0) & (r.scores <= 1))


@pytest.mark.parametrize("mixer,regressor", [("attention+mamba", "deep"), ("mamba", "deep"),
                                             ("attention", "linear")])
def test_training_forward_backward(mixer, regressor):
    torch.manual_seed(0)
    net = MambaGlue(input_dim=64, descriptor_dim=96, n_layers=3, num_heads=1, mixer=mixer, regressor=regressor)
    net.train()
    f0 = random_features(64, 64, seed=9)
    f1 = perturbed(f0, 10)
    data = {"keypoints0": f0.keypoints[None], "keypoints1": f1.keypoints[None],
            "descriptors0": f0.descriptors[None], "descriptors1": f1.descriptors[None],
            "image_size0": torch.tensor([[640.0, 480.0]]), "image_size1": torch.tensor([[640.0, 480.0]])}
    out = net.forward_train(data)
    assert len(out["log_assignment"]) == 3 and len(out["confidence0"]) == 2
    # NLL of the identity assignment at every layer
    idx = torch.arange(64)
    loss = sum(-la[0, idx, idx].mean() for la in out["log_assignment"])
    loss.backward()
    assert torch.isfinite(loss)
    if "mamba" in mixer:
        grads = [p.grad for n, p in net.named_parameters() if "self_attn.ffn.0.weight" in n]
        assert all(g is not None and g.abs().sum() > 0 for g in grads)
    # the regressor sees detached features: the matching loss gives it no gradient
    assert all(p.grad is None for p in net.token_confidence.parameters())


def test_checkpoint_round_trip_and_errors(tmp_path):
    net, _ = build_network("xfeat", "lightglue")
    live_mamba(net)
    path = tmp_path / "mg.pt"
    W.save_checkpoint(path, net, "xfeat", net.conf, meta={"note": "test"}, half=False)
    loaded, source = build_network("xfeat", str(path), alpha=0.9)
    assert source == "checkpoint:mg.pt" and loaded.conf["alpha"] == 0.9
    for (k, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(W.WeightsError, match="trained for front end 'xfeat'"):
        build_network("aliked", str(path))
    with pytest.raises(ValueError, match="fixed by the checkpoint"):
        build_network("xfeat", str(path), n_layers=9)
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(W.WeightsError, match="not a mambaglue_ros checkpoint"):
        build_network("xfeat", str(tmp_path / "other.pt"))
    with pytest.raises(W.WeightsError, match="not found"):
        build_network("xfeat", str(tmp_path / "missing.pt"))
    (tmp_path / "truncated.pt").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(W.WeightsError, match="truncated.pt"):
        build_network("xfeat", str(tmp_path / "truncated.pt"))
    # xz-compressed checkpoints (the shipped ALIKED one): same tensors, smaller file, same safe loader
    xz = tmp_path / "mg.pt.xz"
    W.save_checkpoint(xz, net, "xfeat", net.conf, half=False)
    assert xz.stat().st_size < path.stat().st_size
    from_xz, _ = build_network("xfeat", str(xz))
    for (k, a), b in zip(net.state_dict().items(), from_xz.state_dict().values()):
        assert torch.equal(a, b), k
    (tmp_path / "truncated.pt.xz").write_bytes(xz.read_bytes()[:1000])
    with pytest.raises(W.WeightsError, match="truncated.pt.xz"):
        build_network("xfeat", str(tmp_path / "truncated.pt.xz"))


class _Exploit:
    def __reduce__(self):
        return (os.mkdir, (os.environ["MG_EXPLOIT_DIR"],))


def test_pickle_with_code_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("MG_EXPLOIT_DIR", str(marker))
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _Exploit()}, path, pickle_protocol=2)
    with pytest.raises(W.WeightsError, match="refused"):
        W.load_file(path)
    assert not marker.exists()
    # positive control: without weights_only the same file runs its payload
    torch.load(path, weights_only=False)
    assert marker.is_dir()


@pytest.mark.parametrize("features", ["xfeat", "aliked"])
def test_shipped_trained_weights_load_by_default(features):
    """Both CPU front ends ship trained MambaGlue weights (fp16, under 30 MB) and load without options."""
    path = W.packaged_checkpoint(features)
    assert path is not None and path.stat().st_size < 30e6
    net, source = build_network(features)
    assert source == f"checkpoint:{path.name}"
    assert net.conf["mixer"] == "attention+mamba" and net.conf["regressor"] == "deep"
    ckpt = W.load_checkpoint(path, features)
    assert all(v.dtype == torch.float16 for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert ckpt["meta"]["steps"]["stage1"] > 0 and ckpt["meta"]["steps"]["stage2"] > 0
