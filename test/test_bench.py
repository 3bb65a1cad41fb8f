"""`mambaglue bench` on tiny settings: the JSON, CSV and plots it writes have the promised fields and types.

No timing assertions: the numbers depend on the machine and its load.
"""
from __future__ import annotations

import csv
import json

import pytest

from mambaglue_ros.cli import main as cli_main
from mambaglue_ros.evaluation import bench

pytest.importorskip("kornia.feature")
pytest.importorskip("skimage.data")


def test_bench_cli_json_fields(tmp_path):
    out = tmp_path / "bench" / "out.json"
    plots = tmp_path / "plots"
    rc = cli_main(["bench", "--json", str(out), "--plots", str(plots), "--features", "xfeat", "--keypoints", "128",
                   "--repeats", "1", "--warmup", "0", "--extractors", "xfeat,xfeat+nchw,xfeat+kornia,superpoint",
                   "--threads", "1", "--device", "cpu"])
    assert rc == 0
    r = json.loads(out.read_text())
    peak_measurable = bench.reset_peak_rss()
    for key, kind in (("device", str), ("torch", str), ("kornia", str), ("threads", int), ("features", str),
                      ("weights_source", str), ("num_layers", int), ("repeats", int)):
        assert isinstance(r[key], kind), key
    assert r["device_type"] == "cpu" and r["threads"] == 1 and r["features"] == "xfeat"
    assert r["num_layers"] == 6
    assert r["weights_source"].startswith(("lightglue:", "checkpoint:"))
    assert set(r["matcher_ms"]) == set(bench.METHODS)
    for section in ("matcher_ms", "matcher_cpu_ms", "stop_layer", "matches", "peak_mb", "peak_increase_mb",
                    "pairs_per_s"):
        for method in bench.METHODS:
            assert set(r[section][method]) == {"128"}, (section, method)
    for method in bench.METHODS:
        assert r["matcher_ms"][method]["128"] > 0
        # end-to-end pairs per second include both extractions: fewer than matching alone
        assert 0 < r["pairs_per_s"][method]["128"] < 1000.0 / r["matcher_ms"][method]["128"]
        assert 1 <= r["stop_layer"][method]["128"] <= 6
        assert r["matches"][method]["128"] > 25  # 46-55 of 128 keypoints measured on this pair
        if peak_measurable:  # peak RSS exactly where the kernel lets us reset it; None elsewhere
            assert r["peak_mb"][method]["128"] >= r["peak_increase_mb"][method]["128"] >= -1.0
            assert r["peak_mb"][method]["128"] > 50  # torch alone is more than that
        else:
            assert r["peak_mb"][method]["128"] is None and r["peak_increase_mb"][method]["128"] is None
    for method in ("mambaglue", "lightglue", "lightglue_kornia", "mambaglue_bf16", "lightglue_bf16",
                   "mambaglue_torchscan"):  # full depth
        assert r["stop_layer"][method]["128"] == 6
    # bf16 autocast: nearly the same matches as fp32 (8 mantissa bits move a few borderline ones; 0-1 of
    # about 50 measured at 128 keypoints)
    for name in ("mambaglue", "lightglue"):
        assert abs(r["matches"][f"{name}_bf16"]["128"] - r["matches"][name]["128"]) <= 0.05 * r["matches"][name]["128"] + 1
    # the C++ scan and the torch scan give the same matches
    assert r["matches"]["mambaglue_torchscan"]["128"] == r["matches"]["mambaglue"]["128"]
    # ours with mixer 'attention' on LightGlue's weights is LightGlue: same matches as kornia's
    assert r["matches"]["lightglue"]["128"] == r["matches"]["lightglue_kornia"]["128"]
    n0, n1 = r["keypoints"]["128"]
    assert 0 < n0 <= 128 and 0 < n1 <= 128
    assert r["image_size"]["128"] == [640, 480]
    assert r["frontend_extract_ms"]["128"] > 0
    # SuperPoint with random weights
    assert set(r["extractor_ms"]) == {"xfeat", "xfeat+nchw", "xfeat+kornia", "superpoint"}
    assert r["extractor_keypoints"]["xfeat+nchw"] == r["extractor_keypoints"]["xfeat"]  # the layout changes no point
    assert r["extractor_keypoints"]["xfeat+kornia"] == r["extractor_keypoints"]["xfeat"]
    assert all(v > 0 for v in r["extractor_ms"].values())
    assert all(isinstance(v, int) for v in r["extractor_keypoints"].values())
    # every ratio is the quotient of the two medians it names (the tables print these)
    assert set(r["ratios"]) >= {"mambaglue/lightglue_kornia", "mambaglue_bf16/mambaglue"}
    for name, per_k in r["ratios"].items():
        a, b = name.split("/")
        assert per_k["128"] == pytest.approx(r["matcher_ms"][a]["128"] / r["matcher_ms"][b]["128"], rel=1e-9), name
    assert len(r["load_average_start"]) == 3 and isinstance(r["peak_rss_mb_process"], float)

    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    assert {row["name"] for row in rows if row["kind"] == "matcher"} == set(bench.METHODS)
    assert {row["name"] for row in rows if row["kind"] == "extractor"} == {"xfeat", "xfeat+nchw", "xfeat+kornia",
                                                                           "superpoint"}
    assert (plots / "bench_matcher_xfeat.png").stat().st_size > 0
    assert (plots / "bench_extractors.png").stat().st_size > 0


def test_bench_easy_pair_adaptive_only(tmp_path):
    out = tmp_path / "easy.json"
    rc = cli_main(["bench", "--json", str(out), "--features", "xfeat", "--keypoints", "128", "--repeats", "1",
                   "--warmup", "0", "--extractors", "none", "--threads", "1", "--device", "cpu", "--pair", "easy",
                   "--methods", "mambaglue_adaptive,lightglue_adaptive"])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["pair"] == "easy" and set(r["matcher_ms"]) == {"mambaglue_adaptive", "lightglue_adaptive"}
    assert r["ratios"]["mambaglue_adaptive/lightglue_adaptive"]["128"] == pytest.approx(
        r["matcher_ms"]["mambaglue_adaptive"]["128"] / r["matcher_ms"]["lightglue_adaptive"]["128"], rel=1e-9)
    assert r["extractor_ms"] == {}
    assert r["matches"]["lightglue_adaptive"]["128"] > 30  # an easy pair matches well


def test_bench_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["bench", "--json", str(tmp_path / "x.json"), "--keypoints", "abc"])
    with pytest.raises(SystemExit):
        cli_main(["bench", "--json", str(tmp_path / "x.json"), "--methods", "mambaglue,nope"])
    # SuperPoint has no LightGlue weights: it can be timed as a front end, not matched
    with pytest.raises(SystemExit):
        cli_main(["bench", "--json", str(tmp_path / "x.json"), "--features", "superpoint"])


def test_interleaved_rotates_and_reports():
    calls = []
    res = bench.interleaved({"a": lambda: calls.append("a") or 1, "b": lambda: calls.append("b") or 2}, repeats=3,
                            device=bench.resolve_device("cpu"), warmup=1, memory=True)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then rounds in rotating order
    assert set(res["ms"]) == set(res["cpu_ms"]) == {"a", "b"} and res["outputs"] == {"a": 1, "b": 2}
    # peak memory for every method where the platform can measure it, for none where it cannot
    expected = {"a", "b"} if bench.reset_peak_rss() else set()
    assert set(res["peak_mb"]) == set(res["peak_increase_mb"]) == expected
