"""Tests for mambaglue_ros.models.superpoint (random, seeded weights: no published weights here)."""
from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from mambaglue_ros.models.superpoint import (
    CELL_SIZE,
    SuperPoint,
    SuperPointCheckpointError,
    SuperPointCheckpointNotFoundError,
    expected_state_dict_shapes,
    load_superpoint_state_dict,
    sample_descriptors,
    simple_nms,
)

# Written out independently of the module: the key names of MagicLeap's superpoint_v1.pth
# (SuperPointPretrainedNetwork's SuperPointNet, also loaded by cvg/LightGlue's superpoint.py).
PUBLISHED_LAYERS = ["conv1a", "conv1b", "conv2a", "conv2b", "conv3a", "conv3b", "conv4a",
                    "conv4b", "convPa", "convPb", "convDa", "convDb"]
PUBLISHED_KEYS = {f"{n}.{p}" for n in PUBLISHED_LAYERS for p in ("weight", "bias")}


def make_model(seed: int = 0, **conf) -> SuperPoint:
    torch.manual_seed(seed)
    return SuperPoint(**conf).eval()


def smooth_image(h: int, w: int, channels: int = 1, seed: int = 0) -> torch.Tensor:
    """A textured image in [0, 1] (upsampled noise, so there is structure at several scales)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, channels, h // 8, w // 8, generator=g)
    img = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    img = img + 0.1 * torch.rand(1, channels, h, w, generator=g)
    return img.clamp(0, 1)


@pytest.fixture(scope="module")
def model() -> SuperPoint:
    return make_model(0)


# ------------------------------------------------------------------------------- layout
def test_state_dict_matches_published_layout(model: SuperPoint) -> None:
    sd = model.state_dict()
    assert set(sd) == PUBLISHED_KEYS  # nothing extra (no BN, no buffers), nothing missing
    assert tuple(sd["conv1a.weight"].shape) == (64, 1, 3, 3)
    assert tuple(sd["conv4b.weight"].shape) == (128, 128, 3, 3)
    assert tuple(sd["convPa.weight"].shape) == (256, 128, 3, 3)
    assert tuple(sd["convPb.weight"].shape) == (65, 256, 1, 1)
    assert tuple(sd["convDa.weight"].shape) == (256, 128, 3, 3)
    assert tuple(sd["convDb.weight"].shape) == (256, 256, 1, 1)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_state_dict_shapes(256)


def test_config_defaults_and_validation() -> None:
    assert SuperPoint.default_conf == {"descriptor_dim": 256, "nms_radius": 4,
                                       "max_num_keypoints": None,
                                       "detection_threshold": 0.0005, "remove_borders": 4}
    assert SuperPoint(max_num_keypoints=-1).conf["max_num_keypoints"] is None
    with pytest.raises(ValueError):
        SuperPoint(max_num_keypoints=0)
    with pytest.raises(ValueError, match="nms_radus"):
        SuperPoint(nms_radus=3)


# ------------------------------------------------------------------------------- outputs
def check_features(out: dict, b: int, h: int, w: int, border: int = 4) -> None:
    assert set(out) == {"keypoints", "scores", "descriptors"}
    for key in out:
        assert len(out[key]) == b
    for k, s, d in zip(out["keypoints"], out["scores"], out["descriptors"]):
        n = k.shape[0]
        assert n > 0
        assert k.shape == (n, 2) and k.dtype == torch.float32
        assert s.shape == (n,) and s.dtype == torch.float32
        assert d.shape == (n, 256) and d.dtype == torch.float32
        torch.testing.assert_close(d.norm(dim=1), torch.ones(n), atol=1e-5, rtol=0)
        x, y = k[:, 0], k[:, 1]
        assert bool((x >= border).all()) and bool((x < w - border).all())
        assert bool((y >= border).all()) and bool((y < h - border).all())
        assert bool((k == k.round()).all())  # pixel centres
        assert bool((s[:-1] >= s[1:]).all())  # sorted descending
        assert bool((s > 0.0005).all())
        # No duplicate locations.
        assert torch.unique(k, dim=0).shape[0] == n


def test_gray_240x320_shapes(model: SuperPoint) -> None:
    img = smooth_image(240, 320)
    with torch.no_grad():
        out = model(img)
    check_features(out, 1, 240, 320)
    # x/y order: keypoints must index the heatmap as [y, x] with the reported score.
    with torch.no_grad():
        heat, desc = model.dense(img)
    assert heat.shape == (1, 240, 320) and desc.shape == (1, 256, 30, 40)
    k, s = out["keypoints"][0].long(), out["scores"][0]
    torch.testing.assert_close(heat[0, k[:, 1], k[:, 0]], s)


def test_rgb_480x640_topk() -> None:
    m = make_model(1, max_num_keypoints=300)
    img = smooth_image(480, 640, channels=3, seed=1)
    with torch.no_grad():
        out = m(img)
    check_features(out, 1, 480, 640)
    assert out["keypoints"][0].shape[0] == 300


def test_rgb_equals_luminance_gray(model: SuperPoint) -> None:
    rgb = smooth_image(64, 96, channels=3, seed=2)
    gray = (0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3])
    with torch.no_grad():
        a, b = model(rgb), model(gray)
    for key in a:
        torch.testing.assert_close(a[key][0], b[key][0])


def test_topk_is_prefix_of_all(model: SuperPoint) -> None:
    img = smooth_image(64, 96, seed=3)
    m_all = make_model(0)
    m_k = make_model(0, max_num_keypoints=10)
    with torch.no_grad():
        full, top = m_all(img), m_k(img)
    n_all = full["keypoints"][0].shape[0]
    assert n_all > 10
    assert top["keypoints"][0].shape[0] == 10
    torch.testing.assert_close(top["scores"][0], full["scores"][0][:10])
    # Asking for more than exist returns everything.
    with torch.no_grad():
        many = make_model(0, max_num_keypoints=10_000)(img)
    assert many["keypoints"][0].shape[0] == n_all


def test_batch_matches_single_images(model: SuperPoint) -> None:
    a, b = smooth_image(64, 96, seed=4), smooth_image(64, 96, seed=5)
    with torch.no_grad():
        batch = model(torch.cat([a, b]))
        single = [model(a), model(b)]
    for i in range(2):
        for key in batch:
            torch.testing.assert_close(batch[key][i], single[i][key][0], atol=1e-5, rtol=1e-5)


def test_heatmap_pixel_order() -> None:
    """Bin c of cell (i, j) is pixel (8i + c // 8, 8j + c % 8) (LightGlue's reshape order), in our
    ``dense``: a detector head that always votes for bin 29 puts every cell's peak at row 3, column 5."""
    sp = make_model(0)
    with torch.no_grad():
        sp.convPb.weight.zero_()
        sp.convPb.bias.zero_()
        sp.convPb.bias[29] = 10.0  # 29 = 3 * 8 + 5
    heatmap, _ = sp.dense(torch.rand(1, 1, 24, 32))
    assert heatmap.shape == (1, 24, 32)
    cells = heatmap[0].reshape(3, 8, 4, 8).permute(0, 2, 1, 3).reshape(12, 64)  # (cell, pixel in cell)
    assert (cells.argmax(-1) == 29).all()
    assert torch.allclose(cells[:, 29], torch.full((12,), float(torch.softmax(sp.convPb.bias, 0)[29])))


def test_extract_features_returns_types(model: SuperPoint) -> None:
    img = smooth_image(64, 96, seed=6)
    feats = model.extract_features(img)
    assert len(feats) == 1
    f = feats[0]
    assert f.image_size == (96, 64)
    assert len(f) == f.keypoints.shape[0] == f.descriptors.shape[0] == f.scores.shape[0]
    assert not f.descriptors.requires_grad


def test_bad_input_shape(model: SuperPoint) -> None:
    with pytest.raises(ValueError):
        model(torch.rand(1, 2, 32, 32))


# ------------------------------------------------------------------------------- NMS
def test_nms_close_peaks_keep_larger() -> None:
    s = torch.zeros(1, 32, 32)
    s[0, 10, 10] = 0.9
    s[0, 10, 13] = 0.5  # 3 px away < radius 4
    out = simple_nms(s, 4)
    assert out[0, 10, 10] == pytest.approx(0.9)
    assert out[0, 10, 13] == 0
    assert int((out > 0).sum()) == 1


def test_nms_far_peaks_both_kept() -> None:
    s = torch.zeros(1, 32, 32)
    s[0, 5, 5] = 0.9
    s[0, 5, 15] = 0.5  # 10 px away > radius 4
    s[0, 20, 5] = 0.3
    out = simple_nms(s, 4)
    assert torch.equal(out, s)


def test_nms_recovers_peak_shadowed_by_suppressed_one() -> None:
    # A > B > C in a row, 4 px apart: B is suppressed by A, C is only beaten by B, so C survives.
    s = torch.zeros(1, 8, 32)
    s[0, 4, 4], s[0, 4, 8], s[0, 4, 12] = 0.9, 0.8, 0.7
    out = simple_nms(s, 4)
    assert out[0, 4, 4] > 0 and out[0, 4, 8] == 0 and out[0, 4, 12] > 0
    assert torch.equal(simple_nms(s, 0), s)
    with pytest.raises(ValueError):
        simple_nms(s, -1)


# ------------------------------------------------------------------------------- sampling
def test_sample_descriptors_cell_centre_and_constant() -> None:
    desc = F.normalize(torch.randn(1, 16, 5, 7), dim=1)
    # Pixel (3.5, 3.5) is the centre of cell (0, 0) in the published convention.
    out = sample_descriptors(torch.tensor([[[3.5, 3.5]]]), desc, CELL_SIZE)
    torch.testing.assert_close(out[0, 0], desc[0, :, 0, 0])
    const = F.normalize(torch.ones(1, 16, 5, 7), dim=1)
    kp = torch.tensor([[[4.0, 4.0], [20.3, 17.8], [50.0, 35.0]]])
    out = sample_descriptors(kp, const * 3.0, CELL_SIZE)
    torch.testing.assert_close(out[0], const[0, :, 0, 0].expand(3, -1))
    assert sample_descriptors(torch.zeros(1, 0, 2), desc).shape == (1, 0, 16)


# ------------------------------------------------------------------------------- loading
@pytest.fixture(scope="module")
def published_file(tmp_path_factory: pytest.TempPathFactory):
    """A random model saved like MagicLeap's superpoint_v1.pth: a flat OrderedDict of tensors."""
    src = make_model(7)
    sd = OrderedDict((k, v.clone()) for k, v in src.state_dict().items())
    path = tmp_path_factory.mktemp("ckpt") / "superpoint_v1.pth"
    torch.save(sd, path)
    return src, path


def outputs_equal(a: SuperPoint, b: SuperPoint) -> None:
    img = smooth_image(64, 96, seed=8)
    with torch.no_grad():
        oa, ob = a(img), b(img)
    assert oa["keypoints"][0].shape[0] > 0
    for key in oa:
        assert torch.equal(oa[key][0], ob[key][0]), key


def test_load_published_layout_identical_outputs(published_file) -> None:
    src, path = published_file
    fresh = make_model(123)
    assert not torch.equal(fresh.conv1a.weight, src.conv1a.weight)
    assert fresh.load_checkpoint(path) is fresh
    outputs_equal(src, fresh)
    outputs_equal(src, SuperPoint.from_checkpoint(str(path)))
    sd = load_superpoint_state_dict(path)
    assert list(sd) == list(src.state_dict())


@pytest.mark.parametrize("wrap", ["model", "state_dict", "module.", "superpoint.", "extractor.",
                                  "module.extractor.", "pipeline"])
def test_load_wrapped_and_prefixed(published_file, tmp_path, wrap: str) -> None:
    src, _ = published_file
    sd = src.state_dict()
    if wrap in ("model", "state_dict"):
        obj = {wrap: sd, "epoch": 3}
    elif wrap == "pipeline":
        # Whole matcher pipeline: extractor + matcher weights under one training wrapper.
        obj = {"model": {**{f"extractor.{k}": v for k, v in sd.items()},
                         "matcher.proj.weight": torch.zeros(2, 2)}}
    else:
        obj = {f"{wrap}{k}": v for k, v in sd.items()}
    path = tmp_path / f"wrapped_{wrap.strip('.')}.pth"
    torch.save(obj, path)
    outputs_equal(src, make_model(99).load_checkpoint(path))


def test_missing_file_raises(tmp_path) -> None:
    path = tmp_path / "no_such_superpoint.pth"
    with pytest.raises(SuperPointCheckpointNotFoundError, match="no_such_superpoint.pth"):
        load_superpoint_state_dict(path)
    with pytest.raises(FileNotFoundError, match="no_such_superpoint.pth"):
        SuperPoint().load_checkpoint(path)


def test_truncated_file_raises(published_file, tmp_path) -> None:
    _, good = published_file
    data = good.read_bytes()
    path = tmp_path / "truncated_sp.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SuperPointCheckpointError, match="truncated_sp.pth"):
        SuperPoint().load_checkpoint(path)
    garbage = tmp_path / "garbage_sp.pth"
    garbage.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(ValueError, match="garbage_sp.pth"):
        load_superpoint_state_dict(garbage)


def test_wrong_layout_raises_with_keys(tmp_path) -> None:
    # Shaped like an ALIKED checkpoint: plausible tensors, entirely different names.
    aliked = {"block1.conv1.weight": torch.zeros(16, 3, 3, 3),
              "block1.conv2.weight": torch.zeros(16, 16, 3, 3),
              "score_head.0.weight": torch.zeros(8, 32, 1, 1),
              "desc_head.weight": torch.zeros(128, 128, 3, 3)}
    path = tmp_path / "aliked_like.pth"
    torch.save(aliked, path)
    with pytest.raises(SuperPointCheckpointError) as info:
        SuperPoint().load_checkpoint(path)
    msg = str(info.value)
    assert "aliked_like.pth" in msg
    assert "conv1a.weight" in msg  # an expected key
    assert "block1.conv1.weight" in msg  # a found key


def test_wrong_shape_and_non_dict_raise(published_file, tmp_path) -> None:
    src, _ = published_file
    sd = dict(src.state_dict())
    sd["convDb.weight"] = torch.zeros(128, 256, 1, 1)
    sd["convDb.bias"] = torch.zeros(128)
    path = tmp_path / "dim128_sp.pth"
    torch.save(sd, path)
    with pytest.raises(SuperPointCheckpointError, match="dim128_sp.pth.*convDb"):
        load_superpoint_state_dict(path)
    # The same file fits a model configured for 128-d descriptors.
    assert SuperPoint(descriptor_dim=128).load_checkpoint(path).convDb.out_channels == 128
    lst = tmp_path / "list_sp.pth"
    torch.save([torch.zeros(1)], lst)
    with pytest.raises(SuperPointCheckpointError, match="list_sp.pth"):
        load_superpoint_state_dict(lst)


class _Payload:
    """Unpickling this calls os.mkdir(marker): harmless, but observable."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_code_executing_pickle_is_refused(published_file, tmp_path) -> None:
    src, _ = published_file
    marker = tmp_path / "payload_ran"
    obj = dict(src.state_dict())
    obj["conv1a.weight"] = _Payload(str(marker))
    path = tmp_path / "evil_sp.pth"
    torch.save(obj, path)

    with pytest.raises(SuperPointCheckpointError, match="evil_sp.pth.*refused") as info:
        SuperPoint().load_checkpoint(path)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists(), "the loader executed pickled code"

    # Control: the payload is live -- an unsafe load really would have run it.
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.is_dir()
