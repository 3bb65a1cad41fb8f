"""eval-homography: AUC and corner error by hand, a 3-pair run (JSON fields, plots), the HPatches layout."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from mambaglue_ros.cli import main as cli_main
from mambaglue_ros.evaluation.homography import (auc, corner_error, evaluate, hpatches_pairs, parse_alphas,
                                                 parse_methods, reprojection_errors, synthetic_pairs)
from mambaglue_ros.paths import data_root
from mambaglue_ros.training.dataset import list_images
from mambaglue_ros.training.homography import warp_points

PHOTOS = data_root() / "photos" / "val"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    """Three photos: links to the shared validation photos when present, else skimage's images."""
    folder = tmp_path_factory.mktemp("val_photos")
    if PHOTOS.is_dir() and len(list_images(PHOTOS)) >= 3:
        for p in list_images(PHOTOS)[:3]:
            (folder / p.name).symlink_to(p)
    else:
        from skimage import data

        warnings.warn(f"{PHOTOS} absent: eval-homography tests use scikit-image's bundled photos instead")
        for name in ("astronaut", "coffee", "chelsea"):
            cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(getattr(data, name)(), cv2.COLOR_RGB2BGR))
    return folder


def test_auc_on_a_hand_made_error_list():
    # errors 0.5, 2, failure: recall 1/3 from 0.5 px, 2/3 from 2 px (linear in between, as in SuperGlue/LightGlue)
    a1, a3, a5 = auc([0.5, 2.0, float("inf")], (1, 3, 5))
    assert a1 == pytest.approx((0.5 * 0.5 * (1 / 3) + 0.5 * (1 / 3)) / 1)  # 0.25
    assert a3 == pytest.approx(0.5)  # (1/12 + 0.75 + 2/3) / 3
    assert a5 == pytest.approx((1 / 12 + 0.75 + 3 * (2 / 3)) / 5)
    assert auc([0.0, 0.0], (1, 3)) == [1.0, 1.0]
    assert auc([float("inf")] * 3, (1, 3)) == [0.0, 0.0]
    assert auc([], (1,)) == [0.0]


def test_corner_and_reprojection_errors():
    H = np.array([[1.0, 0, 3], [0, 1, 4], [0, 0, 1]])
    assert corner_error(H, np.eye(3), (640, 480)) == pytest.approx(5.0)
    assert corner_error(None, np.eye(3), (640, 480)) == float("inf")
    S = np.diag([2.0, 2.0, 1.0])
    e = reprojection_errors(np.array([[10.0, 10.0]]), np.array([[21.0, 20.0]]), S)
    assert e[0] == pytest.approx(1.0)  # 1 px in image 1, 0.5 px in image 0: the larger
    assert parse_alphas("0.8, 1.0,none") == [0.8, 1.0, None]
    with pytest.raises(ValueError):
        parse_alphas("1.5")
    with pytest.raises(ValueError):
        parse_methods("mambaglue,superglue")
    assert parse_methods("mambaglue,lightglue+bf16") == ["mambaglue", "lightglue+bf16"]
    with pytest.raises(ValueError):
        parse_methods("mambaglue+fp8")


def test_eval_on_three_pairs_writes_json_and_plots(photo_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = cli_main(["eval-homography", "--images", str(photo_dir), "--pairs", "3", "--seed", "0", "--features", "xfeat",
                   "--methods", "mambaglue,lightglue,mambaglue+bf16", "--max-keypoints", "128", "--size", "320x240",
                   "--alphas", "0.9,none", "--json", str(out), "--plots", str(tmp_path / "plots"), "--no-progress"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["pairs"] == 3 and res["features"] == "xfeat" and res["seed"] == 0
    keys = {"precision", "recall", "auc@1px", "auc@3px", "auc@5px", "auc_dlt@1px", "auc_dlt@3px", "auc_dlt@5px",
            "pairs_per_s", "mean_stop_layer", "mean_matches"}
    # measured on the shared validation photos when written: precision 0.62 / 0.59, recall 0.89 / 0.88,
    # AUC@3px 0.22 / 0.18 (MambaGlue / LightGlue); a broken matcher or ground truth gives ~0
    for m in ("mambaglue", "lightglue"):
        s = res["methods"][m]
        assert keys <= set(s)
        assert 0.45 < s["precision"] <= 1.0 and 0.75 < s["recall"] <= 1.0, (m, s)
        assert all(0.0 <= s[k] <= 1.0 for k in keys if k.startswith("auc"))
        assert s["auc@3px"] > 0.1 and s["auc@5px"] >= s["auc@3px"] >= s["auc@1px"], (m, s)
        assert 1 <= s["mean_stop_layer"] <= 6 and s["pairs_per_s"] > 0
        assert [r["alpha"] for r in res["alpha_sweep"][m]] == [0.9, None]
        assert res["alpha_sweep"][m][1]["mean_stop_layer"] == 6  # exit off: every layer runs
    assert res["weights"]["lightglue"].startswith("lightglue:")
    # same pairs, same keypoints: the shipped MambaGlue is not worse than LightGlue (the control of this run)
    assert res["methods"]["mambaglue"]["precision"] >= res["methods"]["lightglue"]["precision"] - 0.05
    # bf16 moves a few borderline matches: 0.014 measured
    assert abs(res["methods"]["mambaglue+bf16"]["precision"] - res["methods"]["mambaglue"]["precision"]) < 0.05
    assert "lightglue" in capsys.readouterr().out
    for name in ("homography_auc_xfeat.png", "stop_layers_xfeat.png", "alpha_sweep_xfeat.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000
    # `mambaglue compare` reads this file's per-pair rows: its A and B are the run's own numbers
    assert cli_main(["compare", str(out), "--methods", "mambaglue,lightglue", "--samples", "200",
                     "--json", str(tmp_path / "compare.json")]) == 0
    got = json.loads((tmp_path / "compare.json").read_text())["sets"]["homography"]["methods"]["mambaglue"]
    for k in ("precision", "recall", "auc@1px", "auc@3px", "auc@5px"):
        assert got[k]["a"] == pytest.approx(res["methods"]["mambaglue"][k], abs=1e-5)
        assert got[k]["b"] == pytest.approx(res["methods"]["lightglue"][k], abs=1e-5)


def test_video_pairs_through_the_cli(photo_dir, tmp_path, capsys, monkeypatch):
    """--video scores the video-like pairs of ``synthetic_pairs(video=True)`` (what the node matches), not homographies."""
    import mambaglue_ros.evaluation.homography as evaluation

    made = []
    real = evaluation.make_video_pair
    monkeypatch.setattr(evaluation, "make_video_pair", lambda *a, **k: made.append(a[1]) or real(*a, **k))
    out = tmp_path / "video.json"
    rc = cli_main(["eval-homography", "--images", str(photo_dir), "--pairs", "2", "--seed", "3", "--features", "xfeat",
                   "--methods", "mambaglue", "--max-keypoints", "128", "--size", "320x240", "--video",
                   "--json", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["dataset"] == "synthetic_video" and "difficulty" not in res
    from mambaglue_ros.training.dataset import pair_seed

    assert made == [pair_seed(3, 0), pair_seed(3, 1)]  # both pairs made as video-like pairs, with the run's seeds
    assert len(res["per_pair"]["mambaglue"]) == 2
    assert res["methods"]["mambaglue"]["precision"] > 0.6, res["methods"]["mambaglue"]  # 0.91 measured: small motions
    assert cli_main(["eval-homography", "--hpatches", str(tmp_path), "--video", "--no-progress"]) != 0
    assert "--video makes synthetic pairs of --images; it does not apply to --hpatches" in capsys.readouterr().err


def test_held_out_every_takes_only_the_photos_a_training_run_held_out(photo_dir):
    from mambaglue_ros.training.dataset import list_images, split_photos

    held = split_photos(list_images(photo_dir), 3)[1]  # of 3 photos, a run with holdout_every 3 holds out the third
    pairs = list(synthetic_pairs(photo_dir, 3, seed=1, size=(160, 120), held_out_every=3))
    assert len(held) == 1 and {p.name.split("#")[0] for p in pairs} == {held[0].stem}
    with pytest.raises(ValueError, match="no photo is held out"):
        list(synthetic_pairs(photo_dir, 1, seed=1, size=(160, 120), held_out_every=4))


def test_synthetic_pairs_are_a_fixed_set(photo_dir):
    a = list(synthetic_pairs(photo_dir, 4, seed=1, size=(160, 120)))
    b = list(synthetic_pairs(photo_dir, 4, seed=1, size=(160, 120)))
    assert [p.name for p in a] == [p.name for p in b] and len(a) == 4
    assert all(np.array_equal(x.H_0to1, y.H_0to1) and np.array_equal(x.image1, y.image1) for x, y in zip(a, b))
    assert not np.allclose(a[0].H_0to1, next(synthetic_pairs(photo_dir, 1, seed=2, size=(160, 120))).H_0to1)
    # video=True: the same photos and seeds through make_video_pair (small motions, not these homographies)
    from mambaglue_ros.training.dataset import list_images, pair_seed, read_rgb
    from mambaglue_ros.training.homography import make_video_pair

    v = list(synthetic_pairs(photo_dir, 2, seed=1, size=(160, 120), video=True))
    photos = list_images(photo_dir)
    for k, pair in enumerate(v):
        ref = make_video_pair(read_rgb(photos[k % len(photos)]), pair_seed(1, k), (160, 120))
        assert np.array_equal(pair.H_0to1, ref.H_0to1) and np.array_equal(pair.image1, ref.image1)
    assert not np.allclose(v[0].H_0to1, a[0].H_0to1)


def _write_hpatches(root: Path, photo: np.ndarray) -> dict[str, np.ndarray]:
    """Two sequences in the HPatches layout: 1.ppm and k.ppm = 1.ppm warped by a known H_1_k."""
    truth = {}
    rng = np.random.default_rng(0)
    base = cv2.resize(photo, (400, 300), interpolation=cv2.INTER_AREA)
    for seq in ("v_fixture_a", "i_fixture_b"):
        d = root / seq
        d.mkdir(parents=True)
        cv2.imwrite(str(d / "1.ppm"), cv2.cvtColor(base, cv2.COLOR_RGB2BGR))
        for k in (2, 3):
            src = np.array([[0, 0], [399, 0], [399, 299], [0, 299]], np.float32)
            dst = src + rng.uniform(-25, 25, size=(4, 2)).astype(np.float32)
            H = cv2.getPerspectiveTransform(src, dst).astype(np.float64)
            size = (420, 310) if k == 3 else (400, 300)  # image k need not have image 1's size
            cv2.imwrite(str(d / f"{k}.ppm"), cv2.cvtColor(cv2.warpPerspective(base, H, size), cv2.COLOR_RGB2BGR))
            np.savetxt(d / f"H_1_{k}", H)
            truth[f"{seq}/1-{k}"] = H
    (root / "not_a_sequence").mkdir()
    return truth


def test_hpatches_layout(photo_dir, tmp_path):
    photo = cv2.cvtColor(cv2.imread(str(list_images(photo_dir)[0])), cv2.COLOR_BGR2RGB)
    truth = _write_hpatches(tmp_path / "hp", photo)
    pairs = list(hpatches_pairs(tmp_path / "hp"))
    assert sorted(p.name for p in pairs) == sorted(truth)
    for p in pairs:
        assert np.allclose(p.H_0to1, truth[p.name] / truth[p.name][2, 2])
    assert len(list(hpatches_pairs(tmp_path / "hp", max_pairs=3))) == 3
    # downscaled: H is rescaled so that it still maps image 1 onto image k
    small = {p.name: p for p in hpatches_pairs(tmp_path / "hp", resize_max=200)}
    p = small["i_fixture_b/1-3"]
    assert max(p.image0.shape[:2]) == 200 and max(p.image1.shape[:2]) == 200
    x = np.array([[50.0, 40.0]])  # a point in the small image 1
    s0 = np.array([400 / p.image0.shape[1], 300 / p.image0.shape[0]])
    s1 = np.array([420 / p.image1.shape[1], 310 / p.image1.shape[0]])
    full = warp_points((x + 0.5) * s0 - 0.5, truth["i_fixture_b/1-3"])
    assert np.allclose(warp_points(x, p.H_0to1), (full + 0.5) / s1 - 0.5, atol=1e-6)
    # the matchers find the (mild) homography: the H convention is right end to end
    res = evaluate(pairs[:2], "xfeat", ["lightglue"], max_keypoints=256, progress=False)
    assert res["methods"]["lightglue"]["precision"] > 0.7 and res["methods"]["lightglue"]["auc@5px"] > 0.3
    with pytest.raises(FileNotFoundError):
        list(hpatches_pairs(tmp_path / "missing"))
    out = tmp_path / "hp.json"
    assert cli_main(["eval-homography", "--hpatches", str(tmp_path / "hp"), "--pairs", "2", "--features", "xfeat",
                     "--methods", "lightglue", "--max-keypoints", "128", "--json", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["dataset"] == "hpatches"
