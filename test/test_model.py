"""MambaGlue network behaviour: batching, early exit, pruning, empty inputs, training, checkpoints."""
from __future__ import annotations

import contextlib
import math
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
    """Random values in the Mamba FFN columns (checkpoint round trips: every tensor must survive)."""
    g = torch.Generator().manual_seed(seed)
    d = net.conf["descriptor_dim"]
    with torch.no_grad():
        for layer in net.transformers:
            w = layer.self_attn.ffn[0].weight
            w[:, 2 * d:] = 0.05 * torch.randn(w[:, 2 * d:].shape, generator=g)
    return net


def warp(image: np.ndarray, angle_deg: float, scale: float, shift: tuple[float, float] = (0.0, 0.0)
         ) -> tuple[np.ndarray, np.ndarray]:
    """``image`` rotated and scaled about its centre, then shifted; and the 3x3 map of image -> warp."""
    import cv2

    h, w = image.shape[:2]
    A = cv2.getRotationMatrix2D((w / 2, h / 2), angle_deg, scale)
    A[:, 2] += shift
    return cv2.warpAffine(image, A, (w, h)), np.vstack([A, [0.0, 0.0, 1.0]])


def correct_fraction(r, H: np.ndarray, px: float = 3.0) -> float:
    p = np.c_[r.points0, np.ones(len(r))] @ H.T
    return float((np.linalg.norm(p[:, :2] / p[:, 2:] - r.points1, axis=1) < px).mean())


@pytest.fixture(scope="module")
def xfeat_matcher() -> Matcher:
    """The shipped XFeat checkpoint (trained Mamba branch and regressor) through the normal loader."""
    m = Matcher(features="xfeat", device="cpu", alpha=None, pruning=False, max_keypoints=512)
    assert m.weights_source == f"checkpoint:{W.packaged_checkpoint('xfeat').name}"
    return m


@pytest.fixture(scope="module")
def real_pairs(xfeat_matcher):
    """XFeat features of real photos: name -> (features0, features1, H_0to1).
    identity: the same image twice; easy: 1 deg, 2 % zoom, a few pixels (video-like); hard: 25 deg, 0.8x."""
    import cv2
    from skimage import data

    coffee = cv2.resize(data.coffee(), (640, 480))
    astronaut = cv2.resize(data.astronaut(), (640, 480))
    pairs = {}
    for name, (img, angle, scale, shift) in {"identity": (coffee, 0, 1.0, (0, 0)), "easy": (coffee, 1, 1.02, (3, 2)),
                                             "hard": (astronaut, 25, 0.8, (10, -5))}.items():
        img1, H = warp(img, angle, scale, shift)
        pairs[name] = (xfeat_matcher.extract(img), xfeat_matcher.extract(img1), H)
    return pairs


@contextlib.contextmanager
def alpha(matcher: Matcher, value: float | None):
    old = matcher.alpha
    matcher.alpha = value
    try:
        yield matcher
    finally:
        matcher.alpha = old


def test_padded_batch_equals_single_pairs(xfeat_matcher, real_pairs):
    f0a, f1a, _ = real_pairs["easy"]
    f0b, f1b, _ = real_pairs["hard"]
    # ragged on both sides
    pairs = [(f0a, f1a), (Features(f0b.keypoints[:400], f0b.descriptors[:400], f0b.scores[:400], f0b.image_size),
                          Features(f1b.keypoints[:300], f1b.descriptors[:300], f1b.scores[:300], f1b.image_size))]
    singles = [xfeat_matcher.match_features(a, b) for a, b in pairs]
    batched = xfeat_matcher.match_batch(pairs)
    for s, b in zip(singles, batched):
        assert len(s) > 100  # real pairs really match
        np.testing.assert_array_equal(s.matches, b.matches)
        # masked SDPA takes another kernel: scores round apart (1.7e-4 measured on these real pairs)
        np.testing.assert_allclose(s.scores, b.scores, atol=5e-4)


def test_early_exit_and_depth(xfeat_matcher, real_pairs):
    """The exit mechanism: a regressor forced confident exits after layer 1, forced unsure runs all 6."""
    f0, f1, _ = real_pairs["easy"]
    full = xfeat_matcher.match_features(f0, f1)
    assert full.stop_layer == full.num_layers == 6
    # the last linear layer of every layer's confidence regressor
    outputs = [tc.token[-2] for tc in xfeat_matcher.net.token_confidence]
    biases = [o.bias.detach().clone() for o in outputs]
    try:
        with alpha(xfeat_matcher, 0.95):
            with torch.no_grad():
                for o in outputs:
                    o.bias.fill_(20.0)  # every point confident after layer 1 -> exit there
            early = xfeat_matcher.match_features(f0, f1)
            with torch.no_grad():
                for o in outputs:
                    o.bias.fill_(-20.0)  # no point ever confident -> run to the end
            late = xfeat_matcher.match_features(f0, f1)
    finally:
        with torch.no_grad():
            for o, b in zip(outputs, biases):
                o.bias.copy_(b)
    assert early.stop_layer == 1
    assert late.stop_layer == 6
    with pytest.raises(ValueError):
        xfeat_matcher.alpha = 1.5


def test_early_exit_on_an_easy_pair_keeps_the_full_depth_matches(xfeat_matcher, real_pairs):
    """The trained regressor at the default alpha stops early on easy pairs, and the matches it stops
    with are the full-depth ones. Measured when written: identity exits after 3 of 6 layers with every
    point matched; the video-like pair after 5, 262 of 270 full-depth matches kept, 0.885 vs 0.881 correct."""
    f0, f1, _ = real_pairs["identity"]
    with alpha(xfeat_matcher, 0.95):
        same = xfeat_matcher.match_features(f0, f1)
    assert same.stop_layer <= 4 and len(same) >= 0.95 * len(f0)
    assert np.mean(same.matches[:, 0] == same.matches[:, 1]) > 0.99  # each point with itself
    f0, f1, H = real_pairs["easy"]
    full = xfeat_matcher.match_features(f0, f1)
    with alpha(xfeat_matcher, 0.95):
        early = xfeat_matcher.match_features(f0, f1)
    assert early.stop_layer < full.stop_layer == 6
    common = len({tuple(m) for m in early.matches} & {tuple(m) for m in full.matches})
    assert common >= 0.95 * len(full), (common, len(early), len(full))
    assert correct_fraction(early, H) >= correct_fraction(full, H) - 0.02


def test_exit_rules_read_the_share_of_settled_points():
    """'count' (LightGlue) counts points above λ_ℓ; 'mean' takes the confidences as probabilities and sums
    them: the expected share of settled points, which a calibrated regressor gives without being sharp."""
    net = MambaGlue(input_dim=8, descriptor_dim=16, n_layers=4, num_heads=1, exit_rule="count", alpha=0.9)
    layer = 1
    lam = net.confidence_threshold(layer)
    n = torch.tensor([200])
    # every point just below λ: none counts, yet 0.99 λ is the expected share settled
    hesitant = torch.full((1, 100), 0.99 * lam)
    assert not net.check_if_stop(hesitant, hesitant, layer, n)
    net.conf["exit_rule"] = "mean"
    assert net.check_if_stop(hesitant, hesitant, layer, n) == (0.99 * lam >= 0.9)
    # sharp confidences: both rules agree (95 of 100 points certain, 5 certain to change)
    sharp = torch.cat([torch.ones(1, 95), torch.zeros(1, 5)], dim=1)
    for rule in ("count", "mean"):
        net.conf.update(exit_rule=rule, alpha=0.95)
        assert net.check_if_stop(sharp, sharp, layer, n)
        net.conf["alpha"] = 0.96
        assert not net.check_if_stop(sharp, sharp, layer, n)
    # points pruned earlier count as settled; padding does not count at all
    net.conf.update(exit_rule="mean", alpha=0.95)
    assert net.check_if_stop(torch.full((1, 10), 0.5), torch.full((1, 10), 0.5), layer, torch.tensor([200]))
    mask = torch.tensor([[True] * 95 + [False] * 5])
    assert net.check_if_stop(torch.cat([torch.ones(1, 95), torch.zeros(1, 5)], 1), torch.ones(1, 100), layer,
                             torch.tensor([195]), mask, torch.ones(1, 100, dtype=torch.bool))
    with pytest.raises(ValueError, match="exit_rule"):
        MambaGlue(input_dim=8, descriptor_dim=16, n_layers=4, num_heads=1, exit_rule="vote")


def test_batch_exits_when_every_pair_is_done(xfeat_matcher, real_pairs):
    """``match_batch`` with early exit stops at the layer where the last pair is done: the identity pair
    alone exits earlier than the warped one, together they run as deep as the warped one, which then
    gets exactly its own matches."""
    easy, hard = real_pairs["identity"][:2], real_pairs["hard"][:2]
    with alpha(xfeat_matcher, 0.95):
        singles = [xfeat_matcher.match_features(*easy), xfeat_matcher.match_features(*hard)]
        batched = xfeat_matcher.match_batch([easy, hard])
    assert singles[0].stop_layer < singles[1].stop_layer < 6, [s.stop_layer for s in singles]
    assert [b.stop_layer for b in batched] == [singles[1].stop_layer] * 2
    np.testing.assert_array_equal(batched[1].matches, singles[1].matches)
    assert len(batched[0]) >= len(singles[0])  # deeper never hurts the easy pair here (all points matched)


def test_empty_and_tiny_inputs(xfeat_matcher):
    empty = Features(torch.zeros(0, 2), torch.zeros(0, 64), torch.zeros(0), (640, 480))
    some = random_features(50, 64)
    for a, b in [(empty, some), (some, empty), (empty, empty)]:
        r = xfeat_matcher.match_features(a, b)
        assert len(r) == 0 and r.matches.shape == (0, 2)
    one = random_features(1, 64)
    r = xfeat_matcher.match_features(one, perturbed(one, 1))
    assert r.matches.shape[1] == 2 and len(r) <= 1


def test_bf16_precision_agrees_with_fp32(real_pairs):
    """bf16 autocast (the CPU's fast reduced precision) finds nearly the same matches; outputs stay fp32.
    Measured on these real pairs when written: 94-96 % of the matches shared, median score change < 0.001."""
    m32 = Matcher(features="xfeat", device="cpu", alpha=None, max_keypoints=512)
    m16 = Matcher(features="xfeat", device="cpu", alpha=None, max_keypoints=512, precision="bf16")
    for name in ("easy", "hard"):
        f0, f1, H = real_pairs[name]
        a, b = m32.match_features(f0, f1), m16.match_features(f0, f1)
        assert len(a) > 150 and b.scores.dtype == np.float32 and np.all(np.isfinite(b.scores))
        same = len({tuple(r) for r in a.matches} & {tuple(r) for r in b.matches})
        assert same >= 0.9 * max(len(a), len(b)), (name, same, len(a), len(b))
        common = {tuple(r): s for r, s in zip(a.matches, a.scores)}
        diffs = [abs(common[tuple(r)] - s) for r, s in zip(b.matches, b.scores) if tuple(r) in common]
        assert np.median(diffs) < 0.01, (name, np.median(diffs))
        assert correct_fraction(b, H) >= correct_fraction(a, H) - 0.03


def test_precision_choices():
    with pytest.raises(ValueError, match="precision"):
        Matcher(features="xfeat", device="cpu", precision="int8")
    with pytest.warns(UserWarning, match="fp16 needs CUDA"):
        m = Matcher(features="xfeat", device="cpu", precision="fp16")
    assert m.precision == "fp32"


@pytest.mark.parametrize("given, reason", [
    ({"alpha": 2}, r"alpha must be in \(0, 1\], got 2"), ({"alpha": 0}, r"alpha must be in \(0, 1\], got 0"),
    ({"alpha": -1}, r"alpha must be in \(0, 1\], got -1"), ({"max_keypoints": 0}, "max_keypoints must be an integer >= 1"),
    ({"max_keypoints": None}, "max_keypoints must be an integer >= 1, got None"),  # before: int()'s TypeError
    ({"max_keypoints": 1.9}, "max_keypoints must be an integer >= 1, got 1.9"),  # before: 1, silently
    ({"resize_max": -5}, r"resize_max must be 0 \(off\) or a positive size in pixels, got -5")])
def test_constructor_refuses_what_the_setters_refuse(given, reason, monkeypatch):
    import mambaglue_ros.matcher as M

    def no_loading(*args, **kwargs):
        raise AssertionError("weights loaded before the arguments were checked")

    monkeypatch.setattr(M, "FeatureExtractor", no_loading)  # the check comes first, so the test is fast
    monkeypatch.setattr(M, "build_network", no_loading)
    with pytest.raises(ValueError, match=reason):
        Matcher(features="xfeat", device="cpu", **given)


def test_warm_start_takes_lightglues_regressor_and_unknown_options_are_refused(caplog):
    """LightGlue's weights (asked for, or DISK's fallback: no trained file ships) come with LightGlue's linear
    confidence regressor, so the early exit and pruning are LightGlue's, not an untrained deep regressor's; an
    option the network does not have (a misspelling, a LightGlue name) is refused, not dropped."""
    assert Matcher(features="xfeat", weights="lightglue", device="cpu").net.conf["regressor"] == "linear"
    assert Matcher(features="disk", device="cpu").net.conf["regressor"] == "linear"  # (no DISK file ships)
    assert Matcher(features="xfeat", device="cpu").net.conf["regressor"] == "deep"  # the shipped, trained one
    # the same for the network alone (bench, export): build_network decides it, Matcher only passes options on
    assert build_network("xfeat", "lightglue")[0].conf["regressor"] == "linear"
    assert build_network("disk")[0].conf["regressor"] == "linear"
    caplog.clear()
    with caplog.at_level("WARNING", logger="mambaglue_ros.matcher"):  # training's: deep, asked for, run at full depth
        assert build_network("xfeat", "lightglue", regressor="deep", early_exit=False,
                             pruning=False)[0].conf["regressor"] == "deep"
    assert "is untrained" not in caplog.text
    with caplog.at_level("WARNING", logger="mambaglue_ros.matcher"):
        Matcher(features="xfeat", weights="lightglue", device="cpu", regressor="deep")
    assert "is untrained" in caplog.text
    with pytest.raises(ValueError, match=r"unknown MambaGlue option\(s\) \['depth_confidence'\]"):
        Matcher(features="xfeat", device="cpu", depth_confidence=-1)


def test_a_score_order_scan_refuses_points_out_of_score_order():
    """A network whose Mamba branch scans the points as given (scan_order 'score', as the shipped ALIKED file) runs
    another network on points in another order: refused with what to do (before: silently different matches)."""
    from mambaglue_ros.types import Features

    m = Matcher(features="xfeat", weights="lightglue", device="cpu", mixer="attention+mamba", scan_order="score")
    import cv2
    from skimage import data

    f = m.extract(cv2.resize(data.coffee(), (320, 240)))
    m.match_features(f, f)
    order = torch.randperm(len(f), generator=torch.Generator().manual_seed(0))
    shuffled = Features(f.keypoints[order], f.descriptors[order], f.scores[order], f.image_size, f.scale)
    with pytest.raises(ValueError, match="must be by detection score, descending"):
        m.match_features(shuffled, f)
    with pytest.raises(ValueError, match="must be by detection score, descending"):
        m.prepare(shuffled)
    hilbert = Matcher(features="xfeat", weights="lightglue", device="cpu", mixer="attention+mamba",
                      scan_order="hilbert")
    hilbert.match_features(shuffled, f)  # orders the points itself: any order is fine


def test_features_of_the_wrong_shape_or_front_end_are_refused_with_a_reason():
    """Features is public: a set made by hand or by another front end fails where it is made or matched, with a
    reason (before: torch's "mat1 and mat2 shapes cannot be multiplied" or an AttributeError inside the network)."""
    from mambaglue_ros.types import Features

    with pytest.raises(ValueError, match=r"descriptors must be \(N, D\) with N = 10 keypoints, got \(9, 64\)"):
        Features(torch.zeros(10, 2), torch.zeros(9, 64), torch.zeros(10), (64, 48))
    with pytest.raises(ValueError, match=r"keypoints must be \(N, 2\)"):
        Features(torch.zeros(10, 3), torch.zeros(10, 64), torch.zeros(10), (64, 48))
    with pytest.raises(ValueError, match=r"scores must be \(N,\)"):
        Features(torch.zeros(10, 2), torch.zeros(10, 64), torch.zeros(10, 1), (64, 48))
    rng = np.random.default_rng(0)
    from_numpy = Features(rng.uniform(0, 48, (10, 2)), rng.normal(size=(10, 64)), np.zeros(10), (64, 48))
    assert from_numpy.keypoints.dtype == torch.float32 and len(from_numpy) == 10
    m = Matcher(features="xfeat", device="cpu")
    aliked_like = Features(torch.zeros(10, 2), torch.zeros(10, 128), torch.zeros(10), (64, 48))
    with pytest.raises(ValueError, match="128-d descriptors, but this matcher \\(xfeat\\) takes 64-d"):
        m.match_features(aliked_like, aliked_like)
    with pytest.raises(ValueError, match="128-d descriptors"):
        m.match_batch([(from_numpy, aliked_like)])
    assert m.match_features(from_numpy, from_numpy).keypoints0.shape == (10, 2)
    # another front end's set of the same width (ALIKED's and DISK's are both 128-d) is told by its tag
    other = Features(torch.zeros(10, 2), torch.zeros(10, 64), torch.zeros(10), (64, 48), front_end="disk")
    with pytest.raises(ValueError, match="come from the 'disk' front end, but this matcher takes 'xfeat' features"):
        m.match_features(from_numpy, other)
    with pytest.raises(ValueError, match="'disk' front end"):
        m.prepare(other)
    assert other.to("cpu").front_end == "disk"  # (kept by .to)
    extracted = m.extract(np.zeros((48, 64), np.uint8))
    assert extracted.front_end == "xfeat" and m.match_features(extracted, extracted).keypoints0.shape[1] == 2
    # image_size as cvg/LightGlue keeps it (a tensor) becomes plain numbers; a size that cannot be one is refused
    sized = Features(torch.zeros(10, 2), torch.zeros(10, 64), torch.zeros(10), torch.tensor([64, 48]))
    assert sized.image_size == (64, 48) and m.match_features(sized, sized).keypoints0.shape == (10, 2)
    for bad in ((-1, 48), (64,), (float("nan"), 48)):
        with pytest.raises(ValueError, match="image_size must be \\(width, height\\), two numbers >= 0"):
            Features(torch.zeros(10, 2), torch.zeros(10, 64), torch.zeros(10), bad)


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
    net, _ = build_network("xfeat", "lightglue", regressor="deep")  # a trained file's regressor
    live_mamba(net)
    path = tmp_path / "mg.pt"
    W.save_checkpoint(path, net, "xfeat", net.conf, meta={"note": "test"}, half=False)
    loaded, source = build_network("xfeat", str(path), alpha=0.9)
    assert source == "checkpoint:mg.pt" and loaded.conf["alpha"] == 0.9
    for (k, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(W.WeightsError, match="trained for front end 'xfeat'"):
        build_network("aliked", str(path))
    with pytest.raises(ValueError, match="fixed by the weights"):
        build_network("xfeat", str(path), n_layers=9)
    # nor may the options that are not shapes run the weights as another network (before: taken silently)
    for option, value in (("scan_order", "score"), ("bidirectional", not net.conf["bidirectional"]),
                          ("regressor", "linear"), ("mixer", "attention")):
        with pytest.raises(ValueError, match=f"'{option}'"):
            build_network("xfeat", str(path), **{option: value})
    assert build_network("xfeat", str(path), scan_order=net.conf["scan_order"])[0].conf["alpha"] == 0.95  # the same
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
    # the XFeat file holds the version-2 network (the default design), the ALIKED file still version 1 (model card)
    design = {k: net.conf[k] for k in W.VERSION1_NETWORK}
    expected = W.VERSION1_NETWORK if features == "aliked" else {k: MambaGlue.default_conf[k] for k in W.VERSION1_NETWORK}
    assert design == expected, design


def test_inference_constants_are_kept_until_a_weight_changes():
    """SelfBlock.ffn_weight and MambaBranch.inference_constants (``cached_derived``): reused between inference calls,
    made again after an in-place update, a dtype change or under autograd."""
    from mambaglue_ros.models.mambaglue import SelfBlock

    torch.manual_seed(0)
    block = SelfBlock(32, 2)
    branch = block.mamba
    with torch.inference_mode():
        w1, c1 = block.ffn_weight(), branch.inference_constants()
        assert block.ffn_weight() is w1 and branch.inference_constants() is c1
    with torch.no_grad():
        branch.A_log.add_(0.5)
        branch.out_proj.weight.mul_(2.0)
    with torch.inference_mode():
        c2, w2 = branch.inference_constants(), block.ffn_weight()
    assert c2 is not c1 and torch.allclose(c2["A"], -torch.exp(branch.A_log))
    assert torch.allclose(c2["A2"], (c2["A"] * math.log2(math.e)).t())
    assert w2 is not w1 and not torch.equal(w2, w1)
    block.double()
    with torch.inference_mode():
        assert block.ffn_weight().dtype == torch.float64 and branch.inference_constants()["D"].dtype == torch.float32
    with torch.enable_grad():
        fresh = branch.inference_constants()
        assert fresh is not branch.inference_constants() and fresh["A"].requires_grad


V1_DESIGN = {"scan_order": "score", "bidirectional": False, "mamba_message": "concat", "mamba_expand": 1.0}


def test_low_rank_mamba_columns():
    """``mamba_ffn_rank``: 0 (dense) unless asked; the automatic rank (-1) is d/4 where the Mamba columns are 2d wide
    (version 1) and 0 otherwise;
    at full rank the low-rank path gives the dense result; at a lower rank it is the truncated SVD of the folded
    columns (the best approximation, so a rank-r product gives the same output as dense inputs through it); training
    (autograd) runs the dense columns; the factors follow in-place weight updates; a rank below -1 is refused."""
    torch.manual_seed(0)
    small = {"input_dim": 32, "descriptor_dim": 64, "n_layers": 3, "num_heads": 2, "early_exit": False, "pruning": False}
    ranks = {name: MambaGlue(**small, **design).transformers[0].self_attn.ffn_rank
             for name, design in (("v1", V1_DESIGN), ("v2", {}), ("attention", {"mixer": "attention"}),
                                  ("v1 set", {**V1_DESIGN, "mamba_ffn_rank": 8}),
                                  ("v1 auto", {**V1_DESIGN, "mamba_ffn_rank": -1}), ("v2 auto", {"mamba_ffn_rank": -1}),
                                  ("v1 concat at expand 0.5", {**V1_DESIGN, "mamba_expand": 0.5, "mamba_ffn_rank": -1}))}
    assert ranks == {"v1": 0, "v2": 0, "attention": 0, "v1 set": 8, "v1 auto": 16, "v2 auto": 0,
                     "v1 concat at expand 0.5": 0}
    with pytest.raises(ValueError, match="mamba_ffn_rank"):
        MambaGlue(**small, mamba_ffn_rank=-2)
    f0 = random_features(200, 32, seed=1)
    f1 = perturbed(f0, seed=2)
    data = {"keypoints0": f0.keypoints[None], "keypoints1": f1.keypoints[None], "descriptors0": f0.descriptors[None],
            "descriptors1": f1.descriptors[None], "image_size0": torch.tensor([[640.0, 480.0]]),
            "image_size1": torch.tensor([[640.0, 480.0]])}
    dense = live_mamba(MambaGlue(**small, **V1_DESIGN, mamba_ffn_rank=0).eval())
    nets = {r: MambaGlue(**small, **V1_DESIGN, mamba_ffn_rank=r).eval() for r in (4, 128)}
    for net in nets.values():
        net.load_state_dict(dense.state_dict())
    with torch.inference_mode():
        ref, full, low = dense(data), nets[128](data), nets[4](data)
    # rank 128 >= the 128 folded Mamba columns: the same network, another order of sums
    assert torch.allclose(full["log_assignment"], ref["log_assignment"], atol=1e-4)
    assert torch.equal(full["matches0"], ref["matches0"])
    assert not torch.allclose(low["log_assignment"], ref["log_assignment"], atol=1e-4)  # rank 4 of random columns: an approximation
    block = nets[4].transformers[1].self_attn
    with torch.inference_mode():
        dense_w, up, down = block.low_rank_ffn_weight()
        folded = block.ffn_weight()
    n = dense_w.shape[1]
    assert up.shape == (128, 4) and down.shape == (4, 128) and torch.equal(dense_w, folded[:, :n])
    sv = torch.linalg.svdvals(folded[:, n:].double())
    # Eckart-Young: the error of the best rank-4 approximation is the norm of the other singular values
    assert torch.isclose((folded[:, n:] - up @ down).double().norm(), sv[4:].norm(), rtol=1e-4)
    with torch.inference_mode():  # kept between calls, made again when the rank changes
        assert block.low_rank_ffn_weight()[1] is up
        block.ffn_rank = 2
        assert block.low_rank_ffn_weight()[1].shape == (128, 2)
        block.ffn_rank = 4
        assert torch.allclose(block.low_rank_ffn_weight()[1] @ block.low_rank_ffn_weight()[2], up @ down, atol=1e-6)
    with torch.no_grad():  # an in-place update (an optimiser step) makes new factors
        block.ffn[0].weight[:, n:].mul_(2.0)
    with torch.inference_mode():
        assert torch.allclose(block.low_rank_ffn_weight()[1] @ down, 2 * up @ down, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # made outside autocast: the same factors as in fp32
            block._low_rank = None
            assert block.low_rank_ffn_weight()[1].dtype == torch.float32
    block.double()
    with torch.inference_mode():
        assert block.low_rank_ffn_weight()[1].dtype == torch.float64
    # under autograd the FFN runs as trained: gradients reach every Mamba column of the FFN's first layer
    net = nets[4].train()
    x = torch.randn(1, 50, 64)
    enc = net.posenc(torch.rand(1, 50, 2)).detach()
    for b in (net.transformers[0].self_attn, dense.transformers[0].self_attn):
        b.ffn[0].weight.grad = None
        b(x, enc).square().sum().backward()
    g_low, g_dense = (b.ffn[0].weight.grad for b in (net.transformers[0].self_attn, dense.transformers[0].self_attn))
    assert torch.allclose(g_low, g_dense, atol=1e-5) and g_low[:, n:].abs().sum() > 0


@pytest.mark.parametrize("design", [{"scan_order": "score", "bidirectional": False, "mamba_message": "concat",
                                     "mamba_expand": 1.0},
                                    {"scan_order": "hilbert", "bidirectional": True, "mamba_message": "gated"}],
                         ids=["v1", "v2"])
def test_a_prepared_first_self_block_gives_the_same_result(design):
    """``MambaGlue.prepare`` (one image's encoding and first self block) fed to ``forward`` gives the whole
    forward pass's result to the bit, with early exit and pruning, for both network versions; either side
    alone prepared too."""
    torch.manual_seed(0)
    net = live_mamba(MambaGlue(input_dim=32, descriptor_dim=64, n_layers=4, num_heads=2, filter_threshold=0.0,
                               **design).eval())  # threshold 0: mutual nearest neighbours of a random net match
    f0 = random_features(300, 32, seed=1)
    f1 = perturbed(f0, seed=2)
    data = {"keypoints0": f0.keypoints[None], "keypoints1": f1.keypoints[None],
            "descriptors0": f0.descriptors[None], "descriptors1": f1.descriptors[None],
            "image_size0": torch.tensor([f0.image_size], dtype=torch.float32),
            "image_size1": torch.tensor([f1.image_size], dtype=torch.float32)}
    with torch.inference_mode():
        plain = net(data)
        prepared = {f"prepared{s}": net.prepare(data[f"keypoints{s}"], data[f"descriptors{s}"], data[f"image_size{s}"])
                    for s in "01"}
        for given in (prepared, {"prepared0": prepared["prepared0"]}, {"prepared1": prepared["prepared1"]}):
            out = net({**data, **given})
            assert out["stop"] == plain["stop"]
            for key in ("matches0", "matches1", "matching_scores0", "matching_scores1"):
                assert torch.equal(out[key], plain[key]), (key, sorted(given))
        assert (plain["matches0"] > -1).sum() > 20  # a pair that matches, not two empty results
        net.conf.update(early_exit=False, pruning=False)  # every layer: the whole assignment matrix compares
        full = net(data)["log_assignment"]
        assert torch.equal(net({**data, **prepared})["log_assignment"], full)
        # and the layer-by-layer pass that training runs (whole layers from the encoding) agrees with both
        assert torch.equal(net.forward_train(data)["log_assignment"][-1], full)


def test_matcher_keeps_each_images_first_self_block(real_pairs, monkeypatch):
    """``Matcher.match_features`` runs an image's first self block once per Features object and reuses it (a
    frame matched with the previous and then the next frame); ``prepare`` computes it ahead. The results equal
    those of fresh copies of the features; a weight changed in place makes the kept blocks stale; at most
    ``PREPARED_KEPT`` images are kept; an image without keypoints is not prepared."""
    from mambaglue_ros import matcher as M

    m = Matcher(features="xfeat", device="cpu", max_keypoints=512)  # the node's defaults: exit and pruning on
    calls = []
    real_prepare = m.net.prepare
    monkeypatch.setattr(m.net, "prepare", lambda *a, **k: calls.append(1) or real_prepare(*a, **k))

    def copy(f: Features) -> Features:
        return Features(f.keypoints.clone(), f.descriptors.clone(), f.scores.clone(), f.image_size)

    f0, f1, _ = real_pairs["easy"]
    f2 = real_pairs["hard"][1]
    fresh = m.match_features(copy(f0), copy(f1))
    assert len(calls) == 2 and len(fresh) > 100
    calls.clear()
    for expected in (2, 0):  # computed for f0 and f1, then reused
        kept = m.match_features(f0, f1)
        assert len(calls) == expected
        calls.clear()
        np.testing.assert_array_equal(kept.matches, fresh.matches)
        np.testing.assert_array_equal(kept.scores, fresh.scores)
        assert kept.stop_layer == fresh.stop_layer
    m.prepare(f2)  # ahead, as the node's extraction stage does
    assert len(calls) == 1
    m.match_features(f1, f2)
    assert len(calls) == 1  # both kept
    calls.clear()

    w = m.net.transformers[0].self_attn.ffn[0].bias
    old = w.detach().clone()
    try:
        with torch.no_grad():
            w.add_(0.05)  # in place: the kept blocks of f0 and f1 are stale now
        changed = m.match_features(f0, f1)
        assert len(calls) == 2
        reference = m.match_features(copy(f0), copy(f1))
        np.testing.assert_array_equal(changed.matches, reference.matches)
        np.testing.assert_array_equal(changed.scores, reference.scores)
    finally:
        with torch.no_grad():
            w.copy_(old)
    m.match_features(f0, f1)  # the weight restored (in place again): both computed anew
    calls.clear()
    w.data = w.data.clone()  # new storage, same values and version (as .to() / .half() give): stale too
    m.match_features(f0, f1)
    assert len(calls) == 2
    calls.clear()
    f1.keypoints = f1.keypoints.clone()  # a field replaced: another image as far as the kept block knows
    m.match_features(f0, f1)
    assert len(calls) == 1

    others = [copy(f0) for _ in range(M.PREPARED_KEPT + 3)]
    for f in others:
        m.prepare(f)
    assert len(m._prepared) == M.PREPARED_KEPT == m.prepared_kept
    assert all(entry[0]() is f for entry, f in zip(m._prepared.values(), others[3:]))
    m.prepared_kept = 2  # what a multi-camera batcher sets (a multiple); fewer here: the oldest go
    m.prepare(others[0])
    assert [entry[0]() for entry in m._prepared.values()] == [others[-1], others[0]]
    m.forget_prepared()  # what timing code calls before each timed pair
    assert not m._prepared
    calls.clear()
    m.prepare(Features(torch.zeros(0, 2), torch.zeros(0, 64), torch.zeros(0), (640, 480)))
    assert not calls and not m._prepared
