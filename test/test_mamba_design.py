"""The version-2 MambaGlue design: Hilbert scan order, bidirectional scan, gated 3d mixer, version-1 loading."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mambaglue_ros import weights as W
from mambaglue_ros.matcher import build_network
from mambaglue_ros.models.mambaglue import (MambaBranch, MambaGlue, hilbert_index, scan_permutation,
                                           selective_scan_inference)
from mambaglue_ros.training.homography import make_pair, make_video_pair, warp_points
from test_model import live_mamba as live  # random values in the zero-initialised Mamba FFN columns

SIZE = torch.tensor([[640.0, 480.0]])


def pair(m: int, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k0 = torch.rand(1, m, 2, generator=g) * SIZE
    d0 = torch.nn.functional.normalize(torch.randn(1, m, 64, generator=g), dim=-1)
    k1 = k0[:, :n] + 0.5 * torch.randn(1, n, 2, generator=g)
    d1 = torch.nn.functional.normalize(d0[:, :n] + 0.03 * torch.randn(1, n, 64, generator=g), dim=-1)
    return {"keypoints0": k0, "keypoints1": k1, "descriptors0": d0, "descriptors1": d1,
            "image_size0": SIZE, "image_size1": SIZE}


@pytest.fixture(scope="module")
def xfeat_v2() -> MambaGlue:
    torch.manual_seed(0)
    net, _ = build_network("xfeat", "lightglue", early_exit=False, pruning=False)
    assert net.conf["scan_order"] == "hilbert" and net.conf["bidirectional"] and net.conf["mamba_message"] == "gated"
    return live(net).eval()


def test_hilbert_index_is_a_curve_through_adjacent_cells():
    bits = 4
    n = 1 << bits
    cells = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(n), indexing="xy"), -1).reshape(-1, 2)
    normalised = cells.float() / (n - 1) * 2 - 1  # cell centres in [-1, 1]
    d = hilbert_index(normalised, bits=bits)
    assert sorted(d.tolist()) == list(range(n * n))  # a bijection onto 0 .. n^2 - 1
    path = cells[torch.argsort(d)]
    steps = (path[1:] - path[:-1]).abs().sum(-1)
    assert (steps == 1).all()  # consecutive positions are 4-neighbours: the defining property


def test_scan_permutation_puts_padding_last_and_breaks_ties_by_position():
    kpts = torch.tensor([[[0.9, 0.9], [-0.9, -0.9], [-0.9, -0.9], [0.0, 0.0], [-0.9, -0.9]]])
    mask = torch.tensor([[True, True, True, True, False]])
    perm = scan_permutation(kpts, mask)[0].tolist()
    assert perm[-1] == 4  # padding last
    assert perm[:2] == [1, 2]  # two points in one cell keep their input order
    assert sorted(perm) == list(range(5))


def test_hilbert_order_makes_the_network_permutation_equivariant(xfeat_v2):
    data = pair(120, 100, seed=1)
    perm = torch.randperm(120, generator=torch.Generator().manual_seed(2))
    shuffled = {**data, "keypoints0": data["keypoints0"][:, perm], "descriptors0": data["descriptors0"][:, perm]}
    with torch.no_grad():
        a, b = xfeat_v2(data), xfeat_v2(shuffled)
    assert (a["matches0"] > -1).sum() > 20
    torch.testing.assert_close(b["matches0"][0], a["matches0"][0][perm], rtol=0, atol=0)
    torch.testing.assert_close(b["matching_scores0"][0], a["matching_scores0"][0][perm], rtol=0, atol=1e-5)
    # The detection-score order of version 1 is not: the same shuffle changes its Mamba context.
    net_v1, _ = build_network("xfeat", "lightglue", early_exit=False, pruning=False, **W.VERSION1_NETWORK)
    live(net_v1.eval())
    with torch.no_grad():
        c, e = net_v1(data), net_v1(shuffled)
    assert not torch.allclose(e["matching_scores0"][0], c["matching_scores0"][0][perm], atol=1e-5)


def test_forward_and_forward_train_agree_in_input_order(xfeat_v2):
    data = pair(90, 70, seed=3)
    with torch.no_grad():
        out = xfeat_v2(data)
        train = xfeat_v2.forward_train(data)
    torch.testing.assert_close(out["log_assignment"], train["log_assignment"][-1], rtol=0, atol=1e-5)
    # forward's matches are the mutual argmax of the same (input-order) assignment
    scores = out["log_assignment"][0, :-1, :-1]
    matched = torch.where(out["matches0"][0] > -1)[0]
    assert len(matched) > 10
    assert (scores[matched].argmax(1) == out["matches0"][0][matched]).all()


def test_padded_batch_equals_single_pairs_with_hilbert_and_bidirectional(xfeat_v2):
    a, b = pair(80, 80, seed=4), pair(60, 45, seed=5)
    batch = {}
    for side, size in (("0", 80), ("1", 80)):
        for key in ("keypoints", "descriptors"):
            x0, x1 = a[key + side], b[key + side]
            pad = torch.zeros(1, size - x1.shape[1], x1.shape[2])
            batch[key + side] = torch.cat([x0, torch.cat([x1, pad], 1)], 0)
        batch["image_size" + side] = SIZE.expand(2, 2)
        batch["mask" + side] = torch.arange(size)[None] < torch.tensor([[size], [b["keypoints" + side].shape[1]]])
    with torch.no_grad():
        together = xfeat_v2(batch)
        alone = [xfeat_v2(a), xfeat_v2(b)]
    for i, single in enumerate(alone):
        m = single["matches0"].shape[1]
        assert (single["matches0"] > -1).sum() > 5
        assert torch.equal(together["matches0"][i, :m], single["matches0"][0])
        torch.testing.assert_close(together["matching_scores0"][i, :m], single["matching_scores0"][0],
                                   rtol=0, atol=1e-4)  # masked attention takes another kernel


def test_bidirectional_scan_gives_the_first_token_context_from_later_ones():
    torch.manual_seed(0)
    x = torch.randn(1, 40, 32)
    later = x.clone()
    later[:, 30:] += 1.0  # change tokens far beyond the conv's reach (kernel 5) of token 0
    for bidirectional, changes in ((False, False), (True, True)):
        branch = MambaBranch(32, bidirectional=bidirectional, message="gated").eval()
        with torch.no_grad():
            first = branch(x)[0][:, 0]
            first_later = branch(later)[0][:, 0]
        assert (not torch.allclose(first, first_later, atol=1e-7)) == changes, bidirectional


def test_gated_mixer_output_is_y_times_silu_z():
    torch.manual_seed(1)
    branch = MambaBranch(16, message="gated", expand=0.5).eval()
    concat = MambaBranch(16, message="concat", expand=0.5).eval()
    concat.load_state_dict(branch.state_dict())
    x = torch.randn(2, 12, 16)
    with torch.no_grad():
        (gated,) = branch(x)
        y, silu_z = concat(x)
    assert gated.shape == (2, 12, 8)  # inner width d * expand
    torch.testing.assert_close(gated, y * silu_z)


def test_scan_of_an_empty_sequence():
    # Reproduces the old failure: L = 0 made the chunk size 0 and `-(-L // T)` divide by zero.
    u = torch.zeros(1, 0, 8)
    bc = torch.zeros(1, 0, 4)
    y = selective_scan_inference(u, u, -torch.ones(8, 4), bc, bc, torch.ones(8), torch.zeros(8))
    assert y.shape == (1, 0, 8)


def test_pruning_every_point_of_one_image_returns_no_matches(xfeat_v2, monkeypatch):
    net = xfeat_v2
    monkeypatch.setitem(net.conf, "pruning", True)
    monkeypatch.setitem(net.conf, "early_exit", False)
    calls = []

    def prune_all_of_image0(confidences, matchability, layer_index):
        calls.append(layer_index)
        keep = torch.ones_like(matchability, dtype=torch.bool)
        return keep & False if len(calls) == 1 else keep  # first call = image 0 of layer 0

    monkeypatch.setattr(net, "pruning_mask", prune_all_of_image0)
    with torch.no_grad():
        out = net(pair(50, 40, seed=6))
    assert (out["matches0"] == -1).all() and (out["matches1"] == -1).all()
    assert out["matches0"].shape == (1, 50) and out["stop"] == 1


def test_version1_checkpoints_load_as_the_version1_network(tmp_path):
    net, source = build_network("xfeat")  # the shipped checkpoint
    ckpt = W.load_checkpoint(W.packaged_checkpoint("xfeat"), features="xfeat")
    if ckpt["version"] == 1:
        for key, value in W.VERSION1_NETWORK.items():
            assert net.conf[key] == value, key
    # a version-1 file saved without the new keys reads as the version-1 network
    legacy = {**ckpt, "version": 1, "config": {k: v for k, v in ckpt["config"].items() if k not in W.VERSION1_NETWORK}}
    path = tmp_path / "v1.pt"
    torch.save(legacy, path)
    assert W.load_checkpoint(path)["config"]["scan_order"] == "score"
    torch.save({**ckpt, "version": 99}, path)
    with pytest.raises(W.WeightsError, match="version 99 is not supported"):
        W.load_checkpoint(path)


def test_video_pairs_are_small_motions_and_h_maps_the_views():
    rng = np.random.default_rng(0)
    photo = (rng.random((600, 800, 3)) * 255).astype(np.uint8)
    photo = np.ascontiguousarray(np.repeat(np.repeat(photo[::8, ::8], 8, 0), 8, 1)[:600, :800])
    corners = np.array([[0, 0], [639, 0], [639, 479], [0, 479]], dtype=np.float64)
    video_motion, homography_motion = [], []
    for seed in range(5):
        p = make_video_pair(photo, seed, photometric=0.0)
        moved = np.linalg.norm(warp_points(corners, p.H_0to1) - corners, axis=1)
        # rotation 3 deg at a 400 px radius (21 px) + zoom 7 % (28 px) + shift 6 % (38 px) + tilt 2 % (13 px)
        assert moved.max() < 110
        video_motion.append(moved.mean())
        hard = make_pair(photo, seed, 0.8, photometric=0.0)
        homography_motion.append(np.linalg.norm(warp_points(corners, hard.H_0to1) - corners, axis=1).mean())
        # H maps view 0 onto view 1: sample view 1 at H(x0) and compare with view 0 inside the overlap
        ys, xs = np.mgrid[40:440:20, 40:600:20]
        pts0 = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
        pts1 = warp_points(pts0, p.H_0to1)
        inside = (pts1 >= 0).all(1) & (pts1[:, 0] < 639) & (pts1[:, 1] < 479)
        v0 = p.image0[pts0[inside, 1].astype(int), pts0[inside, 0].astype(int)].astype(float)
        v1 = p.image1[np.round(pts1[inside, 1]).astype(int), np.round(pts1[inside, 0]).astype(int)].astype(float)
        assert inside.mean() > 0.7 and np.abs(v0 - v1).mean() < 25
    print("mean corner motion, video vs homography pairs:", np.mean(video_motion), np.mean(homography_motion))
    assert np.mean(video_motion) < 0.5 * np.mean(homography_motion)


def test_eval_method_suffixes_turn_off_pruning_and_set_precision():
    from mambaglue_ros.evaluation.homography import build_matcher, parse_methods, split_suffixes

    assert split_suffixes("mambaglue+noprune+bf16") == ("mambaglue", {"precision": "bf16", "pruning": False})
    assert split_suffixes("mambaglue+bf16+noprune") == ("mambaglue", {"precision": "bf16", "pruning": False})
    assert split_suffixes("lightglue") == ("lightglue", {"precision": "fp32"})
    assert split_suffixes("mambaglue+alpha0.9+bf16") == ("mambaglue", {"precision": "bf16", "alpha": 0.9})
    assert split_suffixes("lightglue+noprune+alpha.97") == ("lightglue", {"precision": "fp32", "pruning": False,
                                                                          "alpha": 0.97})
    with pytest.raises(ValueError, match="alpha must be in"):
        parse_methods("mambaglue+alpha1.5")
    assert build_matcher("mambaglue+alpha0.9", "xfeat").alpha == 0.9
    assert parse_methods("mambaglue,mambaglue+noprune") == ["mambaglue", "mambaglue+noprune"]
    with pytest.raises(ValueError, match="unknown method"):
        parse_methods("mambaglue+prune")
    assert build_matcher("mambaglue+noprune", "xfeat").net.conf["pruning"] is False
    assert build_matcher("mambaglue", "xfeat").net.conf["pruning"] is True
    full = build_matcher("lightglue+fulldepth", "xfeat")
    assert full.alpha is None and full.net.conf["early_exit"] is False
    assert build_matcher("lightglue", "xfeat").net.conf["early_exit"] is True
    assert split_suffixes("mambaglue+dense+fulldepth") == ("mambaglue", {"precision": "fp32", "mamba_ffn_rank": 0,
                                                                         "alpha": None})
    assert build_matcher("mambaglue+dense", "xfeat").net.conf["mamba_ffn_rank"] == 0
    assert build_matcher("mambaglue", "xfeat").net.conf["mamba_ffn_rank"] == 0
    assert split_suffixes("mambaglue+lowrank")[1]["mamba_ffn_rank"] == -1
    assert build_matcher("mambaglue", "aliked").net.transformers[0].self_attn.ffn_rank == 0
    assert build_matcher("mambaglue+lowrank", "aliked").net.transformers[0].self_attn.ffn_rank == 64  # v1: d / 4
