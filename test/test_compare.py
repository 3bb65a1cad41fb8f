"""mambaglue compare: paired bootstrap differences between methods of eval-homography / eval-pose results."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mambaglue_ros.cli import main
from mambaglue_ros.evaluation import compare as cmp
from mambaglue_ros.evaluation import homography, pose


def homography_rows(rng: np.random.Generator, n: int, precision_shift: float = 0.0, error_scale: float = 1.0,
                    names: list[str] | None = None) -> list[dict]:
    names = names or [f"photo_{k:03d}#0" for k in range(n)]
    rows = []
    for name in names:
        p = float(np.clip(rng.uniform(0.6, 0.95) + precision_shift, 0, 1))
        err = float(rng.gamma(2.0, 1.0) * error_scale)
        rows.append({"pair": name, "precision": p, "correct": int(p * 300), "matches": 300, "recall": p,
                     "num_gt": 320, "error_magsac": err, "error_dlt": 2 * err, "stop_layer": 4, "num_layers": 6,
                     "match_ms": 10.0})
    return rows


def write_homography(path, per_pair: dict[str, list[dict]]) -> None:
    path.write_text(json.dumps({"methods": {}, "per_pair": homography.json_safe(per_pair)}))  # as eval-homography


def test_difference_is_the_evaluations_own_numbers_and_the_interval_covers_it(tmp_path):
    rng = np.random.default_rng(1)
    a, b = homography_rows(rng, 120), homography_rows(np.random.default_rng(2), 120)
    a[3]["error_magsac"] = float("inf")  # a failed homography: null in JSON, +inf again here
    a[5]["recall"] = float("nan")  # a pair without ground-truth matches: left out of the mean
    write_homography(tmp_path / "r.json", {"A": a, "B": b})
    result = cmp.compare([tmp_path / "r.json"], ["A", "B"], samples=400)
    got = result["sets"]["homography"]["methods"]["A"]
    sa, sb = homography.summarize(a), homography.summarize(b)
    for metric in ("precision", "recall", "auc@1px", "auc@3px", "auc@5px"):
        assert got[metric]["a"] == pytest.approx(sa[metric], abs=1e-5)
        assert got[metric]["b"] == pytest.approx(sb[metric], abs=1e-5)
        assert got[metric]["diff"] == pytest.approx(sa[metric] - sb[metric], abs=2e-5)
        assert got[metric]["low"] <= got[metric]["diff"] <= got[metric]["high"]


def test_a_method_against_itself_has_a_zero_interval_and_a_clear_gain_excludes_zero(tmp_path):
    rng = np.random.default_rng(3)
    base = homography_rows(rng, 100)
    better = [{**r, "precision": min(1.0, r["precision"] + 0.03), "error_magsac": r["error_magsac"] * 0.5}
              for r in base]
    write_homography(tmp_path / "r.json", {"same": [dict(r) for r in base], "better": better, "base": base})
    result = cmp.compare([tmp_path / "r.json"], ["same", "better", "base"], samples=400)
    same = result["sets"]["homography"]["methods"]["same"]
    assert all(v["diff"] == 0 and v["low"] == 0 and v["high"] == 0 for v in same.values())
    gain = result["sets"]["homography"]["methods"]["better"]
    assert gain["precision"]["low"] > 0 and gain["auc@3px"]["low"] > 0
    assert gain["precision"]["a_better"] == 1.0


def test_pairing_matters_a_shared_hard_pair_cancels(tmp_path):
    # Both methods are poor on the same pairs: unpaired, the spread of the pairs would swamp a small
    # consistent gain; paired, the interval excludes zero.
    rng = np.random.default_rng(4)
    hardness = rng.uniform(0.3, 0.95, 150)
    rows = lambda shift: [{"pair": f"p{k}", "precision": h + shift, "recall": h, "error_magsac": 1.0,
                           "matches": 100} for k, h in enumerate(hardness)]
    write_homography(tmp_path / "r.json", {"A": rows(0.004), "B": rows(0.0)})
    got = cmp.compare([tmp_path / "r.json"], ["A", "B"], samples=400)["sets"]["homography"]["methods"]["A"]
    assert got["precision"]["low"] == pytest.approx(0.004) and got["precision"]["high"] == pytest.approx(0.004)


def test_rows_from_two_files_are_matched_by_pair_name_and_a_shared_method_is_checked(tmp_path):
    a, b, ref = (homography_rows(np.random.default_rng(s), 50) for s in (6, 7, 8))
    write_homography(tmp_path / "one.json", {"A": a, "ref": ref})
    write_homography(tmp_path / "two.json", {"B": list(reversed(b)), "ref": ref})  # other order, same pairs
    result = cmp.compare([tmp_path / "one.json", tmp_path / "two.json"], ["A", "B"], samples=200)
    assert result["warnings"] == []
    assert result["sets"]["homography"]["methods"]["A"]["precision"]["diff"] == pytest.approx(
        homography.summarize(a)["precision"] - homography.summarize(b)["precision"], abs=2e-5)
    changed = [dict(r) for r in ref]
    changed[0]["precision"] += 0.1
    write_homography(tmp_path / "three.json", {"B": b, "ref": changed})
    result = cmp.compare([tmp_path / "one.json", tmp_path / "three.json"], ["A", "B"], samples=200)
    assert len(result["warnings"]) == 1 and "ref in" in result["warnings"][0] and "1 of 50" in result["warnings"][0]
    shifted = [dict(r, pair=f"x{k}#0") for k, r in enumerate(ref)]
    write_homography(tmp_path / "four.json", {"B": b, "ref": shifted})
    result = cmp.compare([tmp_path / "one.json", tmp_path / "four.json"], ["A", "B"], samples=200)
    assert "ref in" in result["warnings"][0] and "other pairs" in result["warnings"][0]


def test_other_pairs_kinds_or_methods_are_refused(tmp_path):
    rng = np.random.default_rng(9)
    write_homography(tmp_path / "a.json", {"A": homography_rows(rng, 20)})
    write_homography(tmp_path / "b.json", {"B": homography_rows(rng, 20, names=[f"other{k}" for k in range(20)])})
    with pytest.raises(ValueError, match="different pairs"):
        cmp.compare([tmp_path / "a.json", tmp_path / "b.json"], ["A", "B"], samples=100)
    with pytest.raises(ValueError, match="no per-pair rows for C"):
        cmp.compare([tmp_path / "a.json"], ["A", "C"], samples=100)
    (tmp_path / "bench.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="not an eval-homography or eval-pose"):
        cmp.compare([tmp_path / "bench.json"], ["A", "B"])
    (tmp_path / "unnamed.json").write_text(json.dumps({"per_pair": {"A": [{"precision": 1.0}], "B": []}}))
    with pytest.raises(ValueError, match="'pair' name"):
        cmp.compare([tmp_path / "unnamed.json"], ["A", "B"])
    (tmp_path / "pose.json").write_text(json.dumps({"datasets": {"kitti_k1": {"per_pair": {}}}}))
    with pytest.raises(ValueError, match="compare one kind"):
        cmp.compare([tmp_path / "a.json", tmp_path / "pose.json"], ["A", "B"])


def test_pose_results_per_dataset_through_the_cli(tmp_path, capsys):
    rng = np.random.default_rng(10)
    datasets = {}
    for name, n in (("euroc_stereo", 30), ("kitti_k1", 25)):
        per_pair = {}
        for m, scale in (("mambaglue", 1.0), ("lightglue", 1.3)):
            per_pair[m] = [{"pair": f"{name}/{k}", "err_deg": float(rng.gamma(2.0, 2.0) * scale),
                            "err_R_deg": 0.1, "err_t_deg": 1.0, "matches": 200, "inliers": 150, "failed": False,
                            "match_ms": 5.0} for k in range(n)]
        per_pair["mambaglue"][0].update(err_deg=pose.FAILED_DEG, failed=True)
        datasets[name] = {"per_pair": per_pair, "methods": {m: pose.summarize(r) for m, r in per_pair.items()}}
    (tmp_path / "pose.json").write_text(json.dumps({"datasets": datasets}))
    out = tmp_path / "cmp.json"
    assert main(["compare", str(tmp_path / "pose.json"), "--methods", "mambaglue,lightglue", "--samples", "300",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "euroc_stereo (30 pairs, drawn as 6 blocks of 5): A = mambaglue" in printed
    assert "kitti_k1 (25 pairs" in printed
    saved = json.loads(out.read_text())
    for name, d in datasets.items():
        got = saved["sets"][name]["methods"]["mambaglue"]["auc@10"]
        want = d["methods"]["mambaglue"]["auc@10"] - d["methods"]["lightglue"]["auc@10"]
        assert got["diff"] == pytest.approx(want, abs=2e-5)
    assert main(["compare", str(tmp_path / "pose.json"), "--methods", "mambaglue", "--samples", "300"]) == 2


def test_interval_width_matches_the_normal_approximation_for_independent_pairs(tmp_path):
    rng = np.random.default_rng(11)
    n = 400
    a = [{"pair": f"p{k}", "precision": float(v), "recall": 1.0, "error_magsac": 1.0} for k, v in
         enumerate(rng.uniform(0.5, 1.0, n))]
    b = [dict(r, precision=r["precision"] - float(d)) for r, d in zip(a, rng.normal(0.01, 0.05, n))]
    got = cmp.paired_bootstrap(a, b, {"precision": ("precision", "mean", None)}, samples=4000)["precision"]
    d = np.array([ra["precision"] - rb["precision"] for ra, rb in zip(a, b)])
    half_width = 1.96 * d.std() / np.sqrt(n)
    assert (got["high"] - got["low"]) / 2 == pytest.approx(half_width, rel=0.1)
    assert got["diff"] == pytest.approx(d.mean(), abs=1e-12)
    assert got["low"] == pytest.approx(d.mean() - half_width, abs=0.2 * half_width)


def test_pairs_of_one_photo_are_drawn_together(tmp_path):
    # 10 photos x 10 pairs; the gain of A depends on the photo only. Drawn pair by pair, the 100 pairs look like
    # 100 independent measurements; drawn by photo, there are 10, and the interval is about sqrt(10) wider.
    rng = np.random.default_rng(12)
    gain = rng.normal(0.0, 0.05, 10)
    b = [{"pair": f"photo{k % 10}#{k}", "precision": 0.8, "recall": 1.0, "error_magsac": 1.0} for k in range(100)]
    a = [dict(r, precision=0.8 + gain[k % 10]) for k, r in enumerate(b)]
    members = cmp.groups([r["pair"] for r in b], cmp.HOMOGRAPHY)
    assert sorted(len(m) for m in members) == [10] * 10 and all(len({i % 10 for i in m}) == 1 for m in members)
    metric = {"precision": ("precision", "mean", None)}
    by_photo = cmp.paired_bootstrap(a, b, metric, members, samples=3000)["precision"]
    by_pair = cmp.paired_bootstrap(a, b, metric, None, samples=3000)["precision"]
    assert by_photo["diff"] == pytest.approx(by_pair["diff"], abs=1e-12)  # summed in another order
    assert (by_photo["high"] - by_photo["low"]) > 2.5 * (by_pair["high"] - by_pair["low"])
    write_homography(tmp_path / "r.json", {"A": a, "B": b})
    result = cmp.compare([tmp_path / "r.json"], ["A", "B"], samples=3000)
    assert result["sets"]["homography"]["groups"] == 10
    assert result["sets"]["homography"]["methods"]["A"]["precision"]["low"] == pytest.approx(by_photo["low"])


def test_pose_pairs_are_drawn_in_blocks():
    blocks = cmp.groups([f"{k:06d}" for k in range(12)], cmp.POSE, block=5)
    assert [m.tolist() for m in blocks] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    hpatches = cmp.groups(["v_graffiti/1-2", "v_graffiti/1-3", "i_ajuntament/1-2", "solo"], cmp.HOMOGRAPHY)
    assert [m.tolist() for m in hpatches] == [[0, 1], [2], [3]]


def test_files_of_other_settings_are_refused_and_sets_without_a_method_skipped(tmp_path):
    rng = np.random.default_rng(13)
    rows = homography_rows(rng, 20)
    settings = {"dataset": "synthetic", "images": "../shared/data/photos/val", "seed": 0, "features": "xfeat",
                "max_keypoints": 1024, "pairs": 20}
    for name, extra in (("a", {}), ("b", {"images": "/work/main/../shared/data/photos/val"}), ("c", {"seed": 1})):
        (tmp_path / f"{name}.json").write_text(json.dumps({**settings, **extra, "per_pair": {name: rows}}))
    result = cmp.compare([tmp_path / "a.json", tmp_path / "b.json"], ["a", "b"], samples=100)  # same folder
    assert result["sets"]["homography"]["methods"]["a"]["precision"]["diff"] == 0
    with pytest.raises(ValueError, match="other settings.*seed: 0 there, 1 here"):
        cmp.compare([tmp_path / "a.json", tmp_path / "c.json"], ["a", "c"], samples=100)
    pose_rows = [{"pair": f"{k:06d}", "err_deg": 1.0 + k, "matches": 10} for k in range(8)]
    (tmp_path / "pose.json").write_text(json.dumps({"datasets": {
        "euroc_stereo": {"per_pair": {"A": pose_rows, "B": pose_rows}},
        "kitti_k1": {"per_pair": {"B": pose_rows}}}}))
    result = cmp.compare([tmp_path / "pose.json"], ["A", "B"], samples=100)
    assert list(result["sets"]) == ["euroc_stereo"] and "no per-pair rows for A" in result["skipped"]["kitti_k1"]
    with pytest.raises(ValueError, match="no pair set"):
        cmp.compare([tmp_path / "pose.json"], ["C", "B"], samples=100)
    with pytest.raises(ValueError, match="at least two methods"):
        cmp.compare([tmp_path / "pose.json"], ["B"], baseline="B")
