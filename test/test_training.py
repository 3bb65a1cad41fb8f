"""Training: pair generator, ground truth, losses, optimiser, resume, regressor stage, export."""
from __future__ import annotations

import copy
import hashlib
import math
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mambaglue_ros import weights as W
from mambaglue_ros.matcher import build_network
from mambaglue_ros.models.mambaglue import MambaGlue
from mambaglue_ros.paths import data_root
from mambaglue_ros.training.dataset import (CacheSpec, PairCache, build_cache, collate, epoch_order, list_images,
                                            net_inputs)
from mambaglue_ros.training.homography import gt_matches_from_homography, make_pair, warp_points
from mambaglue_ros.training.losses import confidence_loss, confidence_targets, matcher_loss, nll_loss
from mambaglue_ros.training import train as train_module
from mambaglue_ros.training.train import (MatcherOptimizer, build_model, load_config, make_caches, train,
                                          training_precision)

PHOTOS = data_root() / "photos" / "train"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    """Four photos: links to the shared corpus when present, else skimage's bundled images."""
    folder = tmp_path_factory.mktemp("photos")
    if PHOTOS.is_dir() and len(list_images(PHOTOS)) >= 4:
        for p in [list_images(PHOTOS)[i] for i in (0, 70, 150, 250)]:
            (folder / p.name).symlink_to(p)
    else:
        from skimage import data

        warnings.warn(f"{PHOTOS} absent: the training tests use scikit-image's bundled photos instead")
        for name in ("astronaut", "coffee", "chelsea", "rocket"):
            cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(getattr(data, name)(), cv2.COLOR_RGB2BGR))
    return folder


def _photo(photo_dir: Path) -> np.ndarray:
    p = list_images(photo_dir)[0]
    return cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------------------------------ ground truth
def test_images_in_subfolders_are_named_not_silently_dropped(tmp_path, caplog):
    import cv2

    image = np.zeros((8, 8, 3), np.uint8)
    (tmp_path / "seq").mkdir()
    cv2.imwrite(str(tmp_path / "seq" / "a.JPG"), image)
    with pytest.raises(FileNotFoundError, match="1 in its subfolders"):
        list_images(tmp_path)
    cv2.imwrite(str(tmp_path / "top.PNG"), image)
    with caplog.at_level("WARNING"):
        assert [p.name for p in list_images(tmp_path)] == ["top.PNG"]
    assert "1 images in subfolders are not used" in caplog.text


def test_resume_takes_a_state_saved_before_a_config_key_existed(tmp_path):
    from mambaglue_ros.training.train import check_run_folder, resume_fingerprint

    cfg = load_config(None)
    saved = resume_fingerprint(cfg, 1)
    del saved["data.render_fraction"]  # a key added to DEFAULTS after the run was saved: its default is what ran
    torch.save({"config": saved}, tmp_path / "stage1_state.pt")
    check_run_folder(cfg, tmp_path, [1], resume=True, overwrite=False)
    with pytest.raises(ValueError, match="data.render_fraction"):  # not when it is set to something else now
        check_run_folder(load_config(None, data={"render_fraction": 0.3}), tmp_path, [1], resume=True, overwrite=False)


def test_a_12_bit_image_in_16_bits_is_named_as_nearly_black(tmp_path, caplog):
    import cv2

    from mambaglue_ros.training.dataset import read_rgb

    ramp = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (48, 1))  # 12-bit data in a 16-bit PNG
    cv2.imwrite(str(tmp_path / "mono12.png"), ramp)
    with caplog.at_level("WARNING"):
        image = read_rgb(tmp_path / "mono12.png")
    assert image.max() == 15 and "mono12.png is nearly black (brightest pixel 15 of 255)" in caplog.text
    caplog.clear()
    cv2.imwrite(str(tmp_path / "mono8.png"), (ramp >> 4).astype(np.uint8))
    with caplog.at_level("WARNING"):
        read_rgb(tmp_path / "mono8.png")
    assert "nearly black" not in caplog.text


def test_a_run_without_held_out_photos_says_so(photo_dir, tmp_path, caplog):
    cfg = load_config(None, **{**tiny_run_config(photo_dir, tmp_path, 1), "data": {
        "images": str(photo_dir), "holdout_every": 0, "cache_dir": str(tmp_path / "cache"), "max_keypoints": 64,
        "train_pairs": 2, "size": [160, 120]}})
    with caplog.at_level("INFO"):
        train_cache, val_cache = make_caches(cfg, progress=False)
    assert len(train_cache) == 2 and val_cache is None
    assert "0 held out" in caplog.text and "no photos held out" in caplog.text


def test_gt_assignment_hand_made():
    H = torch.tensor([[1.0, 0, 10], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)  # shift right by 10 px
    k0 = torch.tensor([[0, 0], [50, 50], [100, 100], [200, 200], [300, 300]], dtype=torch.float32)
    k1 = torch.tensor([[10, 0],      # exact partner of 0
                       [61, 50],     # 1 px from 1 -> match
                       [114, 100],   # 4 px from 2 -> ambiguous (3..5 px): ignored, both sides
                       [400, 400],   # nothing near -> unmatched
                       [311, 300],   # 1 px from 4 -> match
                       [312, 300]],  # 2 px from 4 but not its nearest -> ignored (not mutual, < 5 px)
                      dtype=torch.float32)
    m0, m1 = gt_matches_from_homography(k0[None], k1[None], H[None], pos_th=3, neg_th=5)
    assert m0[0].tolist() == [0, 1, -2, -1, 4]
    assert m1[0].tolist() == [0, 1, -2, -1, 4, -2]


def test_gt_uses_the_larger_of_both_reprojection_errors():
    H = torch.diag(torch.tensor([2.0, 2.0, 1.0], dtype=torch.float64))  # image 1 = image 0 zoomed 2x
    k0 = torch.tensor([[10, 10], [50, 50]], dtype=torch.float32)
    # 21,20: 1 px in image 1, 0.5 px in image 0 -> 1 px, match; 104,100: 4 px / 2 px -> 4 px, ignored
    k1 = torch.tensor([[21, 20], [104, 100]], dtype=torch.float32)
    m0, m1 = gt_matches_from_homography(k0[None], k1[None], H[None])
    assert m0[0].tolist() == [0, -2] and m1[0].tolist() == [0, -2]
    # padding is ignored
    m0, m1 = gt_matches_from_homography(k0[None], k1[None], H[None], valid0=torch.tensor([[True, False]]),
                                        valid1=torch.tensor([[True, True]]))
    assert m0[0].tolist() == [0, -2]


# ------------------------------------------------------------------------------------------ pairs
def test_pair_generator_is_deterministic_and_h_maps_the_views(photo_dir):
    img = _photo(photo_dir)
    a, b = make_pair(img, 7, 0.8), make_pair(img, 7, 0.8)
    assert np.array_equal(a.image0, b.image0) and np.array_equal(a.image1, b.image1)
    assert np.array_equal(a.H_0to1, b.H_0to1)
    assert not np.allclose(make_pair(img, 8, 0.8).H_0to1, a.H_0to1)
    assert a.image0.shape == a.image1.shape == (480, 640, 3)
    # difficulty 0: both views are the same crop
    assert np.allclose(make_pair(img, 7, 0.0, photometric=0).H_0to1, np.eye(3), atol=1e-4)
    # views are inside the photo
    h, w = img.shape[:2]
    for H in (a.H0, a.H1):
        c = warp_points(np.array([[0, 0], [639, 0], [639, 479], [0, 479]]), H)
        assert np.all(c >= -1e-6) and np.all(c[:, 0] <= w - 1 + 1e-6) and np.all(c[:, 1] <= h - 1 + 1e-6)
    # H_0to1 maps view 0 onto view 1: pixels agree at warped points (no photometric change)
    for seed in (1, 2, 3):
        p = make_pair(img, seed, 1.0, photometric=0)
        g0 = cv2.cvtColor(p.image0, cv2.COLOR_RGB2GRAY).astype(np.float32)
        g1 = cv2.cvtColor(p.image1, cv2.COLOR_RGB2GRAY).astype(np.float32)
        ys, xs = np.mgrid[20:460:8, 20:620:8]
        pts0 = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
        pts1 = warp_points(pts0, p.H_0to1)
        inside = (pts1[:, 0] > 2) & (pts1[:, 0] < 637) & (pts1[:, 1] > 2) & (pts1[:, 1] < 477)
        assert inside.sum() > 200
        v0 = g0[pts0[inside, 1].astype(int), pts0[inside, 0].astype(int)]
        v1 = cv2.remap(g1, pts1[inside, 0].astype(np.float32)[:, None], pts1[inside, 1].astype(np.float32)[:, None],
                       cv2.INTER_LINEAR).ravel()
        wrong = cv2.remap(g1, pts0[inside, 0].astype(np.float32)[:, None], pts0[inside, 1].astype(np.float32)[:, None],
                          cv2.INTER_LINEAR).ravel()
        err, base = np.median(np.abs(v0 - v1)), np.median(np.abs(v0 - wrong))
        assert err < 6 and err < 0.5 * base, (seed, err, base)


# ------------------------------------------------------------------------------------------ cache + losses
@pytest.fixture(scope="module")
def tiny_cache(photo_dir, tmp_path_factory) -> PairCache:
    spec = CacheSpec(features="xfeat", max_keypoints=128, photos=[str(p) for p in list_images(photo_dir)],
                     num_pairs=4, seed=0, difficulty=0.8, size=(320, 240))
    folder = build_cache(spec, tmp_path_factory.mktemp("cache"), progress=False)
    return PairCache(folder)


def test_cache_is_reused_and_checked(tiny_cache, photo_dir):
    assert len(tiny_cache) == 4
    item = tiny_cache[0]
    assert item["keypoints0"].shape[1] == 2 and item["descriptors0"].shape[1] == 64
    assert item["descriptors0"].dtype == torch.float16 and item["H_0to1"].shape == (3, 3)
    spec = CacheSpec(features="xfeat", max_keypoints=64, photos=[str(p) for p in list_images(photo_dir)],
                     num_pairs=4, seed=0, size=(320, 240))
    with pytest.raises(ValueError, match="other parameters"):
        build_cache(spec, tiny_cache.folder, progress=False)
    assert epoch_order(10, 0, 1) == epoch_order(10, 0, 1) != epoch_order(10, 0, 2)


def test_a_loaded_config_is_the_callers_own(monkeypatch):
    """Editing a loaded config's section once changed the defaults of every later load_config in the process."""
    from mambaglue_ros.training import train as train_module

    # a private DEFAULTS: should this test fail, the edits below must not reach the other tests
    monkeypatch.setattr(train_module, "DEFAULTS", copy.deepcopy(train_module.DEFAULTS))
    size = [320, 240]
    cfg = load_config(None, features="xfeat", data={"size": size})
    cfg["model"]["mixer"] = "attention"
    cfg["stage1"]["lr"] = 123.0
    cfg["data"]["size"][0] = 1
    again = load_config(None, features="xfeat")
    assert again["model"]["mixer"] == "attention+mamba" and again["stage1"]["lr"] != 123.0
    assert size == [320, 240]  # nor the caller's override


@pytest.mark.parametrize("mixer", ["attention+mamba", "attention"])
def test_a_padded_batch_gives_finite_gradients(tiny_cache, mixer):
    """Pairs with fewer keypoints than others in the batch are padded; the padding queries' attention rows have
    no key at all. Those rows once gave NaN in the softmax, and through the products every parameter's gradient
    became NaN (training stopped at the next step with a non-finite loss)."""
    torch.manual_seed(0)
    net = build_model(load_config(None, features="xfeat", model={"mixer": mixer})).train()
    short = {k: v for k, v in tiny_cache[1].items()}
    for key in ("keypoints1", "descriptors1"):
        short[key] = short[key][:90]  # as if the second photo had given 90 keypoints
    batch = collate([tiny_cache[0], short])
    assert not bool(batch["mask1"].all())
    out = net.forward_train(net_inputs(batch))
    loss, _ = matcher_loss(out["log_assignment"], batch["gt_matches0"], batch["gt_matches1"])
    loss.backward()
    grads = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    assert grads and all(torch.isfinite(g).all() for g in grads.values()), \
        [n for n, g in grads.items() if not torch.isfinite(g).all()][:5]


def test_losses_are_finite_and_decrease(tiny_cache):
    torch.manual_seed(0)
    cfg = load_config(None, features="xfeat")
    net = build_model(cfg).train()
    batch = collate([tiny_cache[i] for i in range(2)])  # xfeat, 128 keypoints, d=96: cheap
    assert int((batch["gt_matches0"] >= 0).sum()) > 10  # the pairs have real ground-truth matches
    data = net_inputs(batch)
    opt = MatcherOptimizer(net, {**cfg["stage1"], "lr": 3e-4, "lr_new": 1e-3})
    losses = []
    for _ in range(20):
        out = net.forward_train(data)
        loss, per_layer = matcher_loss(out["log_assignment"], batch["gt_matches0"], batch["gt_matches1"])
        assert torch.isfinite(loss) and len(per_layer) == 6
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses
    # the NLL of a perfect assignment is 0, of a uniform one log(N+1)
    la = out["log_assignment"][-1].detach()
    nll, parts = nll_loss(la, batch["gt_matches0"], batch["gt_matches1"])
    assert torch.isfinite(nll) and torch.isfinite(parts["nll_pos"]).all()
    closs, accs = confidence_loss(out["confidence0"], out["confidence1"], out["log_assignment"],
                                  batch["mask0"], batch["mask1"])
    assert torch.isfinite(closs) and len(accs) == 5


def test_nll_of_perfect_and_uniform_assignments():
    """Hand-made ground truth, M=3, N=4: 0<->1 and 2<->0 match, row 1 and columns 2, 3 are unmatched.
    A perfect assignment costs 0, a uniform one -log p; the loss reads only the GT entries."""
    gt0, gt1 = torch.tensor([[1, -1, 0]]), torch.tensor([[2, 0, -1, -1]])
    perfect = torch.full((1, 4, 5), -30.0)
    for i, j in ((0, 1), (2, 0), (1, 4), (3, 2), (3, 3)):  # the two matches, then the three dustbins
        perfect[0, i, j] = 0.0
    nll, parts = nll_loss(perfect, gt0, gt1)
    assert float(nll) == 0.0 and float(parts["num_pos"]) == 2
    nll, _ = nll_loss(torch.full((1, 4, 5), -math.log(5.0)), gt0, gt1)
    assert float(nll) == pytest.approx(math.log(5.0))
    wrong = perfect.clone()
    wrong[0, 0, 1] = -2.0  # one match less certain: balance 0.5 x mean over the 2 matches
    assert float(nll_loss(wrong, gt0, gt1)[0]) == pytest.approx(0.5 * 2.0 / 2)


def test_confidence_targets_compare_each_layer_with_the_final_one():
    """M=2, N=3. Final: row 0 -> column 1, row 1 -> dustbin; column 0 -> dustbin, 1 -> row 0, 2 -> dustbin.
    Layer: row 0 -> column 1 (agrees), row 1 -> column 0 (not); columns -> rows 1 (not), 0, 2 (agree)."""
    final = torch.full((1, 3, 4), -5.0)
    for i, j in ((0, 1), (1, 3), (2, 0), (2, 2)):
        final[0, i, j] = 0.0
    layer = torch.full((1, 3, 4), -5.0)
    for i, j in ((0, 1), (1, 0), (2, 2)):
        layer[0, i, j] = 0.0
    t0, t1 = confidence_targets(layer, final)
    assert t0.tolist() == [[1.0, 0.0]] and t1.tolist() == [[0.0, 1.0, 1.0]]
    t0, t1 = confidence_targets(final, final)
    assert t0.tolist() == [[1.0, 1.0]] and t1.tolist() == [[1.0, 1.0, 1.0]]


def test_warm_columns_move_at_the_warm_lr(tiny_cache):
    cfg = load_config(None, features="xfeat")
    net = build_model(cfg).train()
    name = "transformers.0.self_attn.ffn.0.weight"
    w = dict(net.named_parameters())[name]
    before = w.detach().clone()
    opt = MatcherOptimizer(net, {**cfg["stage1"], "lr": 0.0, "lr_new": 1e-3})
    batch = collate([tiny_cache[0], tiny_cache[1]])
    out = net.forward_train(net_inputs(batch))
    matcher_loss(out["log_assignment"], batch["gt_matches0"], batch["gt_matches1"])[0].backward()
    opt.step()
    d = net.conf["descriptor_dim"]
    assert torch.equal(w.detach()[:, : 2 * d], before[:, : 2 * d])  # warm columns (lr 0) unchanged
    assert not torch.equal(w.detach()[:, 2 * d:], before[:, 2 * d:])  # Mamba columns learn
    assert torch.equal(dict(net.named_parameters())["transformers.0.cross_attn.to_qk.weight"].detach(),
                       build_model(cfg).state_dict()["transformers.0.cross_attn.to_qk.weight"])


# ------------------------------------------------------------------------------------------ the loop
def test_a_bf16_training_step_follows_the_fp32_step(tiny_cache):
    # Mixed precision (config precision: bf16): the forward under CPU bf16 autocast, the backward outside it. The
    # log assignments come out in float32 (as log_softmax computes them, not rounded to bf16), bf16 is really used,
    # every parameter that learns in fp32 learns in bf16, and the loss and the gradients follow the fp32 step's.
    # How closely depends on the CPU and on the pairs: at this warm start the gradient is a sum of small, partly
    # cancelling terms, and bf16's rounding (attention logits included) goes through six layers. Measured on two
    # pairs: loss within 3 % and gradient cosine 0.87 on an Intel Xeon with AMX; on an AMD EPYC with AVX512-BF16
    # loss within 2.5-6.5 % (two caches that differ in the last bits of the features), cosine 0.83, norm ratio 0.88.
    # The bounds below leave room for that; a wrong cast, a broken graph or overflow is outside them.
    cfg = load_config(None, features="xfeat")
    net = build_model(cfg).train()
    batch = collate([tiny_cache[i] for i in range(2)])
    data = net_inputs(batch)

    def step(bf16: bool) -> tuple[float, dict[str, torch.Tensor]]:
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net.forward_train(data)
        assert all(la.dtype == torch.float32 for la in out["log_assignment"])
        loss, _ = matcher_loss(out["log_assignment"], batch["gt_matches0"], batch["gt_matches1"])
        closs, _ = confidence_loss(out["confidence0"], out["confidence1"], out["log_assignment"],
                                   batch["mask0"], batch["mask1"])
        assert loss.dtype == closs.dtype == torch.float32 and torch.isfinite(closs)
        loss.backward()
        return float(loss), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    loss32, g32 = step(False)
    loss16, g16 = step(True)
    assert loss16 != loss32  # the forward did run in bf16
    assert abs(loss16 - loss32) < 0.1 * loss32
    learns = {n for n, g in g32.items() if bool(g.any())}
    assert learns and learns == {n for n, g in g16.items() if bool(g.any())}
    flat32, flat16 = (torch.cat([g[n].flatten() for n in sorted(learns)]) for g in (g32, g16))
    assert torch.isfinite(flat16).all()
    assert float(torch.nn.functional.cosine_similarity(flat16, flat32, dim=0)) > 0.6
    assert 0.75 < float(flat16.norm() / flat32.norm()) < 1.33


def test_training_precision_is_resolved_per_machine(monkeypatch):
    assert training_precision(load_config(None)) == "fp32"  # runs made before the option stay fp32
    assert training_precision(load_config(None, precision="bf16")) == "bf16"
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda native=native: native)
        assert training_precision(load_config(None, precision="auto")) == expected
    with pytest.raises(ValueError, match="unknown training precision"):
        training_precision(load_config(None, precision="fp16"))


def tiny_run_config(photo_dir: Path, tmp_path: Path, stage1_steps: int) -> dict:
    """A training run of a few steps on 4 pairs of 128 keypoints (2 for validation), in tmp_path."""
    stage = {"batch_size": 2, "ckpt_every": 1, "val_every": 100, "log_every": 1}
    return {"features": "xfeat", "out_dir": str(tmp_path / "run"), "hardware": "test CPU",
            "data": {"images": str(photo_dir), "holdout_every": 4, "cache_dir": str(tmp_path / "cache"),
                     "max_keypoints": 128, "train_pairs": 4, "val_pairs": 2, "size": [320, 240]},
            "stage1": {**stage, "max_steps": stage1_steps}, "stage2": {**stage, "max_steps": 2}}


def test_train_resume_regressor_stage_and_export(photo_dir, tmp_path):
    base = tiny_run_config(photo_dir, tmp_path, stage1_steps=3)
    s = train(load_config(None, **base), "1", progress=False)
    assert s["stage1"]["steps"] == 3 and s["stage1"]["precision"] == "fp32"
    state = torch.load(tmp_path / "run" / "stage1_state.pt", weights_only=True)
    assert state["step"] == 3 and state["pos"] == 2 and state["epoch"] == 1  # 3 batches of 2 over 4 pairs
    s = train(load_config(None, **{**base, "stage1": {**base["stage1"], "max_steps": 5}}), "1", resume=True,
              progress=False)
    assert s["stage1"]["steps"] == 5
    assert [r["step"] for r in s["stage1"]["loss_curve"]][-1] == 5
    assert len([r for r in torch.load(tmp_path / "run" / "stage1_state.pt", weights_only=True)["history"]]) == 5
    # stage 2: the matcher stays as stage 1 left it, the regressors change
    stage1 = torch.load(tmp_path / "run" / "stage1_best.pt", weights_only=True)["model"]
    s = train(load_config(None, **base), "2", progress=False)
    stage2 = torch.load(tmp_path / "run" / "stage2_state.pt", weights_only=True)["model"]
    for k, v in stage1.items():
        if k.startswith("token_confidence."):
            continue
        assert torch.equal(v, stage2[k]), k
    assert any(not torch.equal(stage1[k], stage2[k]) for k in stage1 if k.startswith("token_confidence."))
    # the release checkpoint loads the way users load it
    path = Path(s["export"]["path"])
    assert path.stat().st_size < 30 * 2**20
    ckpt = W.load_checkpoint(path, features="xfeat")
    assert all(v.dtype == torch.float16 for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert {"data", "steps", "wall_time_s", "hardware", "command", "validation"} <= set(ckpt["meta"])
    assert ckpt["meta"]["steps"] == {"stage1": 5, "stage2": 2}
    # trained as it is (no low-rank Mamba columns), released with the inference default
    assert build_model(load_config(None, **base)).conf["mamba_ffn_rank"] == 0
    assert ckpt["config"]["mamba_ffn_rank"] == MambaGlue.default_conf["mamba_ffn_rank"] == 0
    net, src = build_network("xfeat", str(path))
    assert src.startswith("checkpoint:") and net.conf["mixer"] == "attention+mamba" and net.conf["regressor"] == "deep"
    exported = torch.load(tmp_path / "run" / "stage2_best.pt", weights_only=True)["model"]
    for k, v in net.state_dict().items():
        assert torch.equal(v, exported[k].half().float()), k
    # stage 2 alone on a released checkpoint's matcher (stage2.init = its path): fresh regressors learn, the
    # matcher is the checkpoint's exactly; a config whose network differs from the checkpoint's is refused
    again = {**base, "out_dir": str(tmp_path / "again"), "stage2": {**base["stage2"], "init": str(path)}}
    s2 = train(load_config(None, **again), "2", progress=False)
    released = W.load_checkpoint(s2["export"]["path"], features="xfeat")
    retrained = released["state_dict"]
    fresh = build_model(load_config(None, **again)).state_dict()
    for k, v in ckpt["state_dict"].items():
        if not k.startswith("token_confidence."):
            assert torch.equal(v, retrained[k]), k
    assert any(not torch.equal(fresh[k].half(), retrained[k]) for k in fresh if k.startswith("token_confidence."))
    assert released["meta"]["init"] == f"matcher of {path}, regressors fresh"
    # the matcher's own training (stage 1 of the released checkpoint) is carried into the new metadata
    assert released["meta"]["steps"] == {"stage1": 5, "stage2": 2}
    assert released["meta"]["matcher"]["from"] == str(path) and released["meta"]["matcher"]["data"] == ckpt["meta"]["data"]
    with pytest.raises(ValueError, match="run stage 2 alone"):
        train(load_config(None, **again), "both", progress=False)
    with pytest.raises(ValueError, match="other network options"):
        train(load_config(None, **{**again, "model": {"scan_order": "score"}}), "2", progress=False, overwrite=True)
    # stage 1 continuing a released checkpoint's matcher (stage1.init = its path): at a learning rate of 1e-30 the
    # matcher stays the checkpoint's (from the LightGlue warm start it would not), and the new file says where it
    # started and carries that file's own training
    frozen = {**base["stage1"], "max_steps": 2, "lr": 1e-30, "lr_new": 1e-30, "init": str(path)}
    cont = {**base, "out_dir": str(tmp_path / "continued"), "stage1": frozen}
    s3 = train(load_config(None, **cont), "both", progress=False)
    state = torch.load(tmp_path / "continued" / "stage1_state.pt", weights_only=True)["model"]
    for k, v in ckpt["state_dict"].items():
        if not k.startswith("token_confidence."):
            torch.testing.assert_close(state[k], v.float(), rtol=0, atol=1e-20, msg=k)
    warm = build_model(load_config(None, **base)).state_dict()
    assert any(not torch.equal(warm[k], state[k]) for k in warm if not k.startswith("token_confidence."))
    continued = W.load_checkpoint(s3["export"]["path"], features="xfeat")
    assert continued["meta"]["init"] == f"matcher of {path} (stage 1 continued it), regressors fresh"
    assert continued["meta"]["continued_from"]["steps"] == {"stage1": 5, "stage2": 2}
    assert continued["meta"]["continued_from"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert continued["meta"]["steps"] == {"stage1": 2, "stage2": 2}
    with pytest.raises(ValueError, match=r"stage1\.init"):  # a resumed stage 1 keeps the start it had
        train(load_config(None, **{**cont, "stage1": {**frozen, "init": "lightglue"}}), "1", resume=True, progress=False)
    # stage 2 again on its own, with the continued file gone: the record made when stage 1 started (path, sha256,
    # that file's training) still says what it continued, and stage 2 does not read the file
    aside = path.rename(path.with_name("moved_aside.pt"))
    s4 = train(load_config(None, **cont), "2", progress=False, overwrite=True)
    aside.rename(path)
    again = W.load_checkpoint(s4["export"]["path"], features="xfeat")["meta"]
    assert again["init"] == continued["meta"]["init"] and again["continued_from"] == continued["meta"]["continued_from"]
    # stage 1 afresh from the LightGlue warm start in that folder: the record of the continued start is dropped
    warm_again = {**cont, "stage1": {**frozen, "init": None, "lr": 1e-4, "lr_new": 1e-3}}
    s5 = train(load_config(None, **warm_again), "both", progress=False, overwrite=True)
    assert "stage1_init" not in s5
    assert W.load_checkpoint(s5["export"]["path"], features="xfeat")["meta"]["init"] == "LightGlue weights of xfeat (warm start)"
    with pytest.raises(ValueError, match="other network options"):
        train(load_config(None, **{**cont, "out_dir": str(tmp_path / "c2"), "model": {"scan_order": "score"}}), "1",
              progress=False)
    assert not (tmp_path / "c2").exists()  # refused before the run folder and the feature caches are made
    with pytest.raises(W.WeightsError, match="weights file not found.*no_such_file"):
        missing = {**frozen, "init": str(tmp_path / "no_such_file.pt")}
        train(load_config(None, **{**cont, "out_dir": str(tmp_path / "c3"), "stage1": missing}), "1", progress=False)
    assert not (tmp_path / "c3").exists()  # refused before the run folder is made


def test_a_run_folder_is_not_reused_by_accident(photo_dir, tmp_path):
    """A stage's saved state is continued only with --resume and the same config (its budget, logging and paths may
    change), or started again with --overwrite; an existing export target (a shipped weights file) is replaced only
    with export_overwrite; a run with no limit, or a truncated summary.json, is refused with what to do."""
    base = tiny_run_config(photo_dir, tmp_path, stage1_steps=1)
    train(load_config(None, **base), "1", progress=False)
    with pytest.raises(ValueError, match="holds a stage-1 run.*--resume.*--overwrite"):
        train(load_config(None, **base), "1", progress=False)  # before: its state was deleted without a word
    with pytest.raises(ValueError, match=r"stage1\.lr \(0\.0001 -> 1e-05\)"):
        train(load_config(None, **{**base, "stage1": {**base["stage1"], "lr": 1e-5}}), "1", resume=True,
              progress=False)  # before: the saved optimiser's learning rates came back, the config said otherwise
    with pytest.raises(ValueError, match=r"model\.scan_order"):
        train(load_config(None, **{**base, "model": {"scan_order": "score"}}), "1", resume=True, progress=False)
    # the budget and the logging may change
    again = train(load_config(None, **{**base, "stage1": {**base["stage1"], "max_steps": 2, "log_every": 2}}), "1",
                  resume=True, progress=False)
    assert again["stage1"]["steps"] == 2
    (tmp_path / "run" / "summary.json").write_text("{")  # a truncated file (a Ctrl-C while it was written)
    with pytest.raises(ValueError, match="summary.json is not valid JSON"):
        train(load_config(None, **base), "1", progress=False, overwrite=True)
    (tmp_path / "run" / "summary.json").unlink()
    assert train(load_config(None, **base), "1", progress=False, overwrite=True)["stage1"]["steps"] == 1

    shipped = tmp_path / "shipped.pt"
    shipped.write_bytes(b"keep")
    with pytest.raises(ValueError, match="export target .*shipped.pt exists"):
        train(load_config(None, **{**base, "export": str(shipped)}), "2", progress=False)
    assert shipped.read_bytes() == b"keep"
    with pytest.raises(ValueError, match="never stop"):
        load_config(None, stage1={"max_minutes": 0, "max_steps": 0})
    # a finished run extended: stage 1 goes on, so stage 2's saved regressors belong to another matcher (before:
    # they were resumed on it, and the run ended in "stage 2 changed matcher weights")
    full = {**base, "out_dir": str(tmp_path / "full"), "stage2": {**base["stage2"], "max_steps": 1, "init": "last"}}
    train(load_config(None, **full), "both", progress=False)
    longer = {**full, "stage1": {**full["stage1"], "max_steps": 2}}
    with pytest.raises(ValueError, match="another matcher.*--overwrite"):
        train(load_config(None, **longer), "both", resume=True, progress=False)


def test_config_photo_folders_follow_the_data_root(tmp_path, monkeypatch):
    """Every config names its photos under $MAMBAGLUE_DATA; load_config makes that (and any relative path) absolute
    and normalised, the form training keys its feature caches and resumes by."""
    root = Path(__file__).resolve().parents[1]
    monkeypatch.delenv("MAMBAGLUE_DATA", raising=False)
    default = root.parent / "shared" / "data"
    assert data_root() == default
    configs = [*sorted((root / "config").glob("train_*.yaml")), *sorted((root / "config" / "ablations").glob("*.yaml"))]
    for path in configs:
        assert load_config(path)["data"]["images"] == str(default / "photos" / "train"), path.name
    assert load_config()["data"]["images"] == str(default / "photos" / "train")
    monkeypatch.setenv("MAMBAGLUE_DATA", str(tmp_path / "elsewhere" / ".." / "data"))
    assert data_root() == tmp_path / "data"
    assert load_config(root / "config" / "train_xfeat.yaml")["data"]["images"] == str(tmp_path / "data" / "photos" /
                                                                                      "train")
    assert load_config(data={"images": "${MAMBAGLUE_DATA}/val"})["data"]["images"] == str(tmp_path / "data" / "val")
    assert load_config(data={"images": "/x/$MAMBAGLUE_DATA_X"})["data"]["images"] == "/x/$MAMBAGLUE_DATA_X"
    monkeypatch.chdir(tmp_path)
    assert load_config(data={"images": "mine/../photos"})["data"]["images"] == str(tmp_path / "photos")


def test_config_files_parse():
    root = Path(__file__).resolve().parents[1]
    for name in ("train_xfeat.yaml", "train_aliked.yaml", "train_aliked_regressor.yaml", "train_xfeat_regressor.yaml"):
        cfg = load_config(root / "config" / name)
        assert cfg["features"] in name and cfg["stage1"]["lr_new"] > cfg["stage1"]["lr"]
    # every training and ablation config loads and builds its network; each XFeat v2 ablation differs from
    # config/train_xfeat.yaml in exactly one network option (and its run folder)
    base = load_config(root / "config" / "train_xfeat.yaml")
    for path in [root / "config" / "train_xfeat_v1.yaml", *sorted((root / "config" / "ablations").glob("*.yaml"))]:
        cfg = load_config(path)
        build_model(cfg)
        if path.stem.startswith("xfeat_v2_"):
            changed = [k for k in cfg["model"] if cfg["model"][k] != base["model"][k]]
            assert len(changed) == 1, (path.name, changed)
            assert {k for k in cfg if k != "model" and cfg[k] != base[k]} == {"out_dir"}, path.name
    # each attention-only control has its shipped run's data and budget: only the mixer (and run folder, export,
    # the step budget that replaces the shipped run's clock) differ
    def differences(a: dict, b: dict, prefix: str = "") -> set[str]:
        out = set()
        for k in set(a) | set(b):
            if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
                out |= differences(a[k], b[k], f"{prefix}{k}.")
            elif a.get(k) != b.get(k):
                out.add(prefix + k)
        return out

    matcher_diff = {"model.mixer", "out_dir", "stage1.max_steps", "stage1.max_minutes"}
    regressor_diff = {"model.mixer", "out_dir", "stage2.init"}
    for shipped, control, expected in (("train_aliked.yaml", "aliked_attention.yaml", matcher_diff),
                                       ("train_aliked_regressor.yaml", "aliked_attention_regressor.yaml", regressor_diff),
                                       ("train_xfeat_v1.yaml", "xfeat_v1_attention.yaml", matcher_diff),
                                       ("train_xfeat_regressor.yaml", "xfeat_v1_attention_regressor.yaml", regressor_diff)):
        shipped_cfg = load_config(root / "config" / shipped)
        control_cfg = load_config(root / "config" / "ablations" / control)
        assert differences(shipped_cfg, control_cfg) == expected, control
        assert control_cfg["model"]["mixer"] == "attention", control
    assert load_config(root / "config" / "ablations" / "aliked_attention.yaml")["stage1"]["max_steps"] == 418
    # the v2 runs at the shipped budgets have their control's data and budget in both stages: only the network
    # options (the defaults of MambaGlue, i.e. version 2) and the run folder differ
    v2_options = ("scan_order", "bidirectional", "mamba_message", "mamba_expand")
    network = {f"model.{k}" for k in ("mixer", *v2_options)}
    for control, v2 in (("aliked_attention.yaml", "aliked_v2.yaml"),
                        ("aliked_attention_regressor.yaml", "aliked_v2_regressor.yaml"),
                        ("xfeat_v1_attention.yaml", "xfeat_v1budget_v2.yaml"),
                        ("xfeat_v1_attention_regressor.yaml", "xfeat_v1budget_v2_regressor.yaml"),
                        ("xfeat_long3k_attention.yaml", "xfeat_long3k_v2.yaml"),
                        ("xfeat_long3k_attention_regressor.yaml", "xfeat_long3k_v2_regressor.yaml"),
                        ("aliked_long3k_attention.yaml", "aliked_long3k_v2.yaml"),
                        ("aliked_long3k_attention_regressor.yaml", "aliked_long3k_v2_regressor.yaml")):
        control_cfg, v2_cfg = (load_config(root / "config" / "ablations" / n) for n in (control, v2))
        assert differences(control_cfg, v2_cfg) == network | {"out_dir"}, v2
        assert {k: v2_cfg["model"][k] for k in v2_options} == {k: MambaGlue.default_conf[k] for k in v2_options}
    # v2's one-factor ablations at that budget: one network option and the run folder differ from v2, in both stages
    for tag, option in (("forward_only", "bidirectional"), ("concat", "mamba_message")):
        for stage in ("", "_regressor"):
            v2_cfg, variant = (load_config(root / "config" / "ablations" / f"xfeat_v1budget_v2{t}{stage}.yaml")
                               for t in ("", f"_{tag}"))
            assert differences(v2_cfg, variant) == {f"model.{option}", "out_dir"}, (tag, stage)
    assert load_config(root / "config" / "ablations" / "xfeat_v1_attention.yaml")["stage1"]["max_steps"] == 837
    # the aliked_long3k regressors on pairs their matchers did not see: only data.pair_seed (and the folder) differ
    for tag in ("v2", "attention"):
        seen, fresh = (load_config(root / "config" / "ablations" / f"aliked_long3k_{tag}_{s}.yaml")
                       for s in ("regressor", "regfresh"))
        assert differences(seen, fresh) == {"data.pair_seed", "out_dir"} and fresh["data"]["pair_seed"] != seen["seed"]
    # the XFeat runs of the protocol after the review: xfeat_long3k's with new pairs each epoch and 128 validation
    # pairs (the regressor on other pairs than the matcher's), v2 and control still differing only in the network
    protocol = {"out_dir", "data.fresh_pairs_each_epoch", "data.val_pairs"}
    for tag in ("v2", "attention"):
        # (and the step count alone ends the stage that runs: no clock that a loaded CPU could make cut one short)
        for stage, extra in (("", {"stage1.max_minutes"}), ("_regressor", {"data.pair_seed", "stage2.max_minutes"})):
            old, new = (load_config(root / "config" / "ablations" / f"xfeat_{p}_{tag}{stage}.yaml")
                        for p in ("long3k", "fresh"))
            assert differences(old, new) == protocol | extra, (tag, stage)
            assert new["data"]["fresh_pairs_each_epoch"] is True and new["data"]["val_pairs"] == 128
            assert new["stage2" if stage else "stage1"]["max_minutes"] == 0
    for stage in ("", "_regressor"):
        control, v2 = (load_config(root / "config" / "ablations" / f"xfeat_fresh_{t}{stage}.yaml")
                       for t in ("attention", "v2"))
        assert differences(control, v2) == network | {"out_dir"}, stage
    # that protocol at a budget that finishes inside one session: only the matcher's step count (and folders) differ
    for tag in ("v2", "attention"):
        for stage, extra in (("", {"stage1.max_steps"}), ("_regressor", set())):
            full, short = (load_config(root / "config" / "ablations" / f"{p}_{tag}{stage}.yaml")
                           for p in ("xfeat_fresh", "xfeat_fresh3ep"))
            assert differences(full, short) == {"out_dir"} | extra, (tag, stage)
        short = load_config(root / "config" / "ablations" / f"xfeat_fresh3ep_{tag}.yaml")
        # three whole epochs: every matcher step sees pairs no earlier step saw
        assert short["stage1"]["max_steps"] * short["stage1"]["batch_size"] == 3 * short["data"]["train_pairs"]
    # more seeds of that comparison: each seed-k config is its seed-0 original with only the seed and run folder
    pairs = [(seed, seed0, other) for seed in (1, 2) for seed0, other in (
        ("xfeat_v1budget_v2", f"xfeat_seed{seed}_v2"), ("xfeat_v1_attention", f"xfeat_seed{seed}_attention"))]
    # and of the shipped XFeat file's 3000 + 600-step comparison
    pairs += [(1, f"xfeat_long3k_{tag}", f"xfeat_long3k_seed1_{tag}") for tag in ("v2", "attention")]
    for seed, seed0, other in pairs:
        for stage in ("", "_regressor"):
            a, b = (load_config(root / "config" / "ablations" / f"{n}{stage}.yaml") for n in (seed0, other))
            assert differences(a, b) == {"seed", "out_dir"}, (other, stage)
            assert (a["seed"], b["seed"]) == (0, seed), (other, stage)
    # the continued shipped XFeat matcher: the early-layer run and its control differ only in gamma; both continue the
    # shipped file on the pairs of its regressor (xfeat_long3k_v2_regressor.yaml's data and network)
    early, equal = (load_config(root / "config" / "ablations" / f"xfeat_continue_{t}.yaml") for t in ("early", "equal"))
    assert differences(early, equal) == {"out_dir", "stage1.gamma"}
    assert (early["stage1"]["gamma"], equal["stage1"]["gamma"]) == (1.25, 1.0)
    assert early["stage1"]["init"] == "mambaglue_ros/weights/mambaglue_xfeat.pt" and (root / early["stage1"]["init"]).is_file()
    shipped_regressor = load_config(root / "config" / "ablations" / "xfeat_long3k_v2_regressor.yaml")
    assert early["data"] == shipped_regressor["data"] and early["model"] == shipped_regressor["model"]
    # ALIKED at 3000 matcher steps: aliked_long's runs with 3x the pairs and steps (only those differ; the regressor
    # stage is aliked_long's recipe on the new matcher)
    for tag in ("v2", "attention"):
        long1k, long3k = (load_config(root / "config" / "ablations" / f"aliked_{n}_{tag}.yaml")
                          for n in ("long", "long3k"))
        assert differences(long1k, long3k) == {"out_dir", "data.train_pairs", "stage1.max_steps"}, tag
        assert (long3k["data"]["train_pairs"], long3k["stage1"]["max_steps"]) == (3000, 3000)
        reg1k, reg3k = (load_config(root / "config" / "ablations" / f"aliked_{n}_{tag}_regressor.yaml")
                        for n in ("long", "long3k"))
        assert differences(reg1k, reg3k) == {"out_dir"}, tag
    # the longer budget: the shipped XFeat matcher's data with more pairs and 3000 steps (only those differ)
    long_ctrl = load_config(root / "config" / "ablations" / "xfeat_long3k_attention.yaml")
    assert differences(load_config(root / "config" / "ablations" / "xfeat_v1_attention.yaml"), long_ctrl) == \
        {"out_dir", "data.train_pairs", "stage1.max_steps", "stage1.val_every"}
    assert (long_ctrl["data"]["train_pairs"], long_ctrl["stage1"]["max_steps"]) == (3000, 3000)
    # the rendered-room runs: v2 and its control differ only in the mixer, and the shipped-budget pair differs from
    # the first (1000-step) pair only in the budget and the arithmetic
    for prefix in ("xfeat_render", "xfeat_render3k"):
        v2_cfg, ctrl_cfg = (load_config(root / "config" / "ablations" / f"{prefix}_{t}.yaml") for t in ("v2", "attention"))
        assert differences(v2_cfg, ctrl_cfg) == {"model.mixer", "out_dir"}, prefix
        assert v2_cfg["model"] == load_config(None)["model"] and ctrl_cfg["model"]["mixer"] == "attention"
        assert v2_cfg["data"]["render_fraction"] == 0.3
    short, long = (load_config(root / "config" / "ablations" / f"{p}_v2.yaml") for p in ("xfeat_render", "xfeat_render3k"))
    assert differences(short, long) == {"out_dir", "precision", "data.train_pairs", "stage1.max_steps", "stage1.val_every"}
    assert (long["data"]["train_pairs"], long["stage1"]["max_steps"], long["precision"]) == (3000, 3000, "bf16")
    # ALIKED's longer budget: the shipped-budget ALIKED pair (aliked_v2 / aliked_attention) with more pairs and steps
    for tag in ("v2", "attention"):
        for stage, changed in (("", {"data.train_pairs", "stage1.max_steps", "stage1.max_minutes"}), ("_regressor", set())):
            short, long = (load_config(root / "config" / "ablations" / f"aliked{p}_{tag}{stage}.yaml") for p in ("", "_long"))
            assert differences(short, long) == changed | {"out_dir"}, (tag, stage)
    long = load_config(root / "config" / "ablations" / "aliked_long_v2.yaml")
    assert (long["data"]["train_pairs"], long["stage1"]["max_steps"], long["precision"]) == (1000, 1000, "fp32")
    # the XFeat regressor run keeps the version-1 XFeat matcher's network and trains stage 2 on it
    xfeat_v1, xfeat_reg = (load_config(root / "config" / p) for p in ("train_xfeat_v1.yaml", "train_xfeat_regressor.yaml"))
    assert xfeat_reg["model"] == xfeat_v1["model"] and xfeat_reg["stage2"]["init"].endswith("mambaglue_xfeat_v1.pt")
    # the shipped XFeat file is the long3k version-2 run: its configs hold the default (version-2) network
    assert load_config(root / "config" / "ablations" / "xfeat_long3k_v2.yaml")["model"] == load_config(None)["model"]
    with pytest.raises(ValueError, match="unknown config keys"):
        load_config(None, stage1={"learning_rate": 1.0})


# ------------------------------------------------------------------------------------------ rendered pairs
def test_render_pair_projections_land_on_the_same_surface_point():
    """Depth projection of a rendered pair: the colour at a pixel and at its projection agree (textures have
    no lighting), far better than at a random other projected pixel; projecting back returns to the pixel;
    and in a pair with parallax some points are hidden (NaN) in the other view."""
    from mambaglue_ros.geometry import invert
    from mambaglue_ros.training.render_pairs import make_render_pair, project_with_depth

    hidden_any = False
    for seed in range(3):
        p = make_render_pair(seed, size=(320, 240))
        assert p.image0.shape == (240, 320, 3) and np.isfinite(p.depth0).all()
        rng = np.random.default_rng(seed)
        pts = np.c_[rng.integers(0, 320, 1500), rng.integers(0, 240, 1500)].astype(float)
        q = project_with_depth(pts, p.depth0, p.depth1, p.K, p.T_1_0)
        hidden_any |= bool(np.isnan(q).any())
        ok = np.isfinite(q).all(1) & (q[:, 0] >= 0) & (q[:, 0] <= 319) & (q[:, 1] >= 0) & (q[:, 1] <= 239)
        assert ok.sum() > 300, (seed, ok.sum())
        c0 = p.image0[pts[ok, 1].astype(int), pts[ok, 0].astype(int)].astype(float)
        c1 = p.image1[np.rint(q[ok, 1]).astype(int), np.rint(q[ok, 0]).astype(int)].astype(float)
        same = np.median(np.abs(c0 - c1).mean(1))
        shuffled = np.median(np.abs(c0 - c1[rng.permutation(len(c1))]).mean(1))
        assert same < 12 and same < 0.3 * shuffled, (seed, same, shuffled)
        back = project_with_depth(np.rint(q[ok]), p.depth1, p.depth0, p.K, invert(p.T_1_0))
        assert np.nanmedian(np.linalg.norm(back - pts[ok], axis=1)) < 1.0
        # a different relative pose moves the projections by pixels: the pose is really used
        wrong = project_with_depth(pts[ok], p.depth0, p.depth1, p.K, invert(p.T_1_0))
        assert np.nanmedian(np.linalg.norm(wrong - q[ok], axis=1)) > 3.0
    assert hidden_any


def test_render_share_in_a_cache_and_mixed_batches(photo_dir, tmp_path):
    """A cache with rendered pairs: the share is a fixed choice per pair that keeps every video pair of the
    same seed, rendered pairs store depth projections (no homography), and a batch mixing both kinds gets
    ground truth from each pair's own geometry, the homography pairs exactly as before."""
    photos = [str(p) for p in list_images(photo_dir)]
    with pytest.raises(ValueError, match="sum to at most 1"):
        CacheSpec(features="xfeat", max_keypoints=64, photos=photos, num_pairs=4, seed=0, video_fraction=0.6,
                  render_fraction=0.5)
    plain = CacheSpec(features="xfeat", max_keypoints=64, photos=photos, num_pairs=4, seed=0, video_fraction=0.4)
    mixed = CacheSpec(features="xfeat", max_keypoints=64, photos=photos, num_pairs=4, seed=0, video_fraction=0.4,
                      render_fraction=0.3)
    assert "render_fraction" not in plain.to_json() and plain.key() != mixed.key()
    kinds = [mixed.pair_kind(k) for k in range(2000)]
    assert [k for k in range(2000) if plain.is_video_pair(k)] == [k for k in range(2000) if kinds[k] == "video"]
    assert abs(kinds.count("render") / 2000 - 0.3) < 0.04
    first_render = kinds.index("render")
    first_homography = kinds.index("homography")
    spec = CacheSpec(features="xfeat", max_keypoints=128, photos=photos, num_pairs=max(first_render,
                     first_homography) + 1, seed=0, size=(320, 240), video_fraction=0.4, render_fraction=0.3)
    cache = PairCache(build_cache(spec, tmp_path / "cache", progress=False))
    rendered, homography = cache[first_render], cache[first_homography]
    assert torch.isnan(rendered["H_0to1"]).all() and rendered["proj0_1"].shape == rendered["keypoints0"].shape
    assert "proj0_1" not in homography and torch.isfinite(homography["H_0to1"]).all()
    batch = collate([homography, rendered])
    alone = collate([homography])
    n0, n1 = (int(homography[f"keypoints{s}"].shape[0]) for s in (0, 1))
    assert torch.equal(batch["gt_matches0"][0, :n0], alone["gt_matches0"][0, :n0])
    assert torch.equal(batch["gt_matches1"][0, :n1], alone["gt_matches1"][0, :n1])
    ref = gt_matches_from_homography(homography["keypoints0"][None].float(), homography["keypoints1"][None].float(),
                                     homography["H_0to1"][None], 3.0, 5.0)
    assert torch.equal(alone["gt_matches0"], ref[0])
    m0 = batch["gt_matches0"][1, : rendered["keypoints0"].shape[0]]
    i0 = torch.where(m0 >= 0)[0]
    assert len(i0) > 20  # a rendered pair 1-8 frames apart shares many points
    err = (rendered["proj0_1"][i0].double() - rendered["keypoints1"][m0[i0]].double()).norm(dim=-1)
    assert float(err.max()) < 3.0


def test_a_bf16_run_trains_and_records_its_precision(photo_dir, tmp_path):
    cfg = {**tiny_run_config(photo_dir, tmp_path, stage1_steps=4), "precision": "bf16"}
    s = train(load_config(None, **cfg), "both", progress=False)
    assert s["stage1"]["precision"] == s["stage2"]["precision"] == "bf16"
    assert s["stage1"]["steps"] == 4 and all(math.isfinite(r["loss"]) for r in s["stage1"]["loss_curve"])
    assert math.isfinite(s["export"]["validation_fp16"]["nll_mean"])
    meta = W.load_checkpoint(s["export"]["path"], features="xfeat")["meta"]
    assert meta["precision"] == {"stage1": "bf16", "stage2": "bf16"}


def test_losses_of_a_float64_model_stay_float64(tiny_cache):
    # The fp32 casts of the mixed-precision path apply to bf16 / fp16 only.
    batch = collate([tiny_cache[0]])
    m, n = batch["gt_matches0"].shape[1], batch["gt_matches1"].shape[1]
    la = torch.log_softmax(torch.randn(1, m + 1, n + 1, dtype=torch.float64), -1)
    loss, _ = matcher_loss([la, la], batch["gt_matches0"], batch["gt_matches1"])
    conf = [torch.rand(1, m, dtype=torch.float64)], [torch.rand(1, n, dtype=torch.float64)]
    closs, _ = confidence_loss(*conf, [la, la])
    assert loss.dtype == closs.dtype == torch.float64
    bf = [la.to(torch.bfloat16)] * 2
    assert matcher_loss(bf, batch["gt_matches0"], batch["gt_matches1"])[0].dtype == torch.float32


def test_pair_seed_draws_other_training_pairs_and_the_validation_pairs_stay(photo_dir, tmp_path):
    """data.pair_seed: a regressor stage can train on other pairs than its matcher's run saw (pair k = photo k %
    photos, warped by the seed's draw k); the validation pairs stay the run's. Unset, the run's seed draws them."""
    data = {"images": str(photo_dir), "holdout_every": 4, "cache_dir": str(tmp_path / "cache"), "max_keypoints": 32,
            "train_pairs": 2, "val_pairs": 1, "size": [160, 120]}
    runs = {}
    for pair_seed in (None, 0, 5):
        cfg = load_config(None, **{**tiny_run_config(photo_dir, tmp_path, 1), "data": {**data, "pair_seed": pair_seed}})
        train_cache, val_cache = make_caches(cfg, progress=False)
        runs[pair_seed] = ([int(train_cache[k]["seed"]) for k in range(2)], int(val_cache[0]["seed"]),
                           train_cache.folder)
    assert runs[None] == runs[0]  # the run's seed (0): the same pairs, the same cache
    assert not set(runs[5][0]) & set(runs[0][0]) and runs[5][1] == runs[0][1]
    assert runs[5][2] != runs[0][2]


def test_fresh_pairs_each_epoch_trains_each_epoch_on_pairs_of_its_own(photo_dir, tmp_path, monkeypatch):
    """data.fresh_pairs_each_epoch: epoch 0 trains on the fixed set, each later epoch on pairs of its own, drawn and
    cached when it starts (none for an epoch the step budget never reaches); a run resumed in the middle of an epoch
    goes on with that epoch's pairs. Without the option every epoch reads the fixed set."""
    import mambaglue_ros.training.train as T

    read = []  # the cache folder of every training batch, in order
    load = T.load_batch

    def recorded(cache, idx, cfg):
        if cache.folder.name.startswith("train_"):  # (validation reads its own cache through it too)
            read.append(cache.folder.name)
        return load(cache, idx, cfg)

    monkeypatch.setattr(T, "load_batch", recorded)
    base = tiny_run_config(photo_dir, tmp_path, stage1_steps=3)  # 4 pairs, batch 2: epoch 0, half of epoch 1
    base["data"] = {**base["data"], "max_keypoints": 32, "size": [160, 120], "fresh_pairs_each_epoch": True}
    s = train(load_config(None, **base), "1", progress=False)
    caches = tmp_path / "cache" / "xfeat_k32"
    assert s["stage1"]["steps"] == 3 and len(list(caches.glob("train_*"))) == 2 and s["stage1"]["epoch_cache_s"] > 0
    assert read[0] == read[1] != read[2]  # epoch 0: the fixed set; epoch 1: its own
    seeds = {f.name: {int(np.load(p)["seed"]) for p in f.glob("pair_*.npz")} for f in caches.glob("train_*")}
    assert not set.intersection(*seeds.values())  # other warps in each epoch
    s = train(load_config(None, **{**base, "stage1": {**base["stage1"], "max_steps": 5}}), "1", resume=True,
              progress=False)
    assert s["stage1"]["steps"] == 5 and len(list(caches.glob("train_*"))) == 3
    assert read[3] == read[2] and read[4] not in read[:4]  # epoch 1 goes on with its pairs; epoch 2: new ones
    read.clear()
    fixed = {**base, "out_dir": str(tmp_path / "fixed"),
             "data": {**base["data"], "fresh_pairs_each_epoch": False, "cache_dir": str(tmp_path / "fixed_cache")}}
    train(load_config(None, **fixed), "1", progress=False)
    assert len(set(read)) == 1 and len(list((tmp_path / "fixed_cache" / "xfeat_k32").glob("train_*"))) == 1


def test_rendered_validation_pairs_are_in_other_rooms_than_training(monkeypatch, photo_dir, tmp_path):
    """Checkpoint picking must not reward knowing the training rooms: validation's rendered pairs come from rooms
    NUM_SCENES .. 2 NUM_SCENES - 1, training's from 0 .. NUM_SCENES - 1; a cache without rendered pairs keeps its
    key (no scene_offset in it)."""
    import mambaglue_ros.training.train as T
    from mambaglue_ros.training import render_pairs as RPairs

    rooms = []

    class Stop(Exception):
        pass

    def room(index):
        rooms.append(index)
        raise Stop

    monkeypatch.setattr(RPairs, "_scene", room)
    cfg = load_config(None, data={"render_fraction": 1.0})
    for offset in (0, RPairs.NUM_SCENES):
        spec = T.cache_spec(cfg, [Path("photo.png")], 20, 3, offset)
        for k in range(20):
            with pytest.raises(Stop):
                spec.make(None, k)
    assert all(r < RPairs.NUM_SCENES for r in rooms[:20]) and len(set(rooms[:20])) > 1
    assert all(RPairs.NUM_SCENES <= r < 2 * RPairs.NUM_SCENES for r in rooms[20:])
    # make_caches gives the offset to validation only, and only where there are rendered pairs
    specs = {}
    monkeypatch.setattr(T, "open_cache", lambda cfg, spec, name, extractor, progress: (specs.setdefault(name, spec),
                                                                                        extractor))
    data = {"images": str(photo_dir), "holdout_every": 4}
    for share in (0.5, 0.0):
        specs.clear()
        T.make_caches(load_config(None, data={**data, "render_fraction": share}), progress=False)
        assert specs["train"].scene_offset == 0
        assert specs["val"].scene_offset == (RPairs.NUM_SCENES if share else 0)
    assert "scene_offset" not in specs["val"].to_json()  # (the key that caches made before the option have)
    photo = [Path("photo.png")]
    assert T.cache_spec(cfg, photo, 2, 3, RPairs.NUM_SCENES).key() != T.cache_spec(cfg, photo, 2, 3).key()


def test_resume_refuses_other_validation_pairs(photo_dir, tmp_path):
    """best_val was measured on the saved run's validation pairs: a resume validating on others is refused."""
    base = tiny_run_config(photo_dir, tmp_path, stage1_steps=1)
    base["data"] = {**base["data"], "max_keypoints": 32, "size": [160, 120]}
    train(load_config(None, **base), "1", progress=False)
    state = torch.load(tmp_path / "run" / "stage1_state.pt", weights_only=True)
    assert state["val_cache"].startswith("val_")
    state["val_cache"] = "val_0000000000"  # as if the validation pairs had changed since
    torch.save(state, tmp_path / "run" / "stage1_state.pt")
    with pytest.raises(ValueError, match="picked its best checkpoint on validation pairs val_0000000000"):
        train(load_config(None, **{**base, "stage1": {**base["stage1"], "max_steps": 2}}), "1", resume=True,
              progress=False)
