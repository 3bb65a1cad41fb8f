"""mambaglue_ros.training.release: a release file from a matcher run and the regressor run on its frozen matcher."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mambaglue_ros import weights as W
from mambaglue_ros.models.mambaglue import MambaGlue
from mambaglue_ros.training.release import release

CONF = {"input_dim": 8, "descriptor_dim": 16, "n_layers": 2, "num_heads": 1}


def make_runs(tmp_path: Path, net: MambaGlue) -> tuple[Path, Path]:
    """A matcher run (summary.json, stage1_best.pt at step 40) and a regressor run whose export, as train.py writes
    it, knows only stage 2."""
    matcher, regressor = tmp_path / "run", tmp_path / "run_reg600"
    matcher.mkdir()
    regressor.mkdir()
    data = {"images": "photos", "holdout_every": 14, "train_pairs": 300, "val_pairs": 8, "max_keypoints": 64,
            "difficulty": 0.8, "size": [64, 48], "photometric": 1.0, "video_fraction": 0.0, "render_fraction": 0.0,
            "pos_th": 3.0, "neg_th": 5.0}
    summary = {"features": "xfeat", "train_pairs": 300, "commands": ["mambaglue train --config m.yaml --stage 1"],
               "config": {"data": data, "stage1": {"max_steps": 50}},
               "stage1": {"steps": 50, "batch_size": 8, "wall_time_s": 12.5, "best_step": 40,
                          "validation_start": {"nll_mean": 0.9}, "validation_best": {"nll_mean": 0.5},
                          "validation_last": {"nll_mean": 0.6}}}
    (matcher / "summary.json").write_text(json.dumps(summary))
    stage1 = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("token_confidence.")}
    torch.save({"model": stage1, "step": 40, "val": {}}, matcher / "stage1_best.pt")
    meta = {"data": {**data, "video_fraction": 0.4}, "steps": {"stage1": None, "stage2": 20},
            "batch_size": {"stage1": None, "stage2": 8}, "wall_time_s": {"stage1": None, "stage2": 3.0},
            "command": ["mambaglue train --config r.yaml --stage 2"],
            "validation": {"stage1_start": None, "stage1_best": None, "stage2_last": {"conf_bce": 0.2}},
            "config": {"model": {}, "stage1": {}, "stage2": {"max_steps": 20}}}
    W.save_checkpoint(regressor / "mambaglue_xfeat.pt", net, "xfeat", net.conf, meta=meta)
    return matcher, regressor


def test_release_fills_in_stage1_and_keeps_the_tensors(tmp_path):
    torch.manual_seed(0)
    net = MambaGlue(**CONF)
    matcher, regressor = make_runs(tmp_path, net)
    back = release(matcher, regressor, tmp_path / "out.pt", note="why")
    exported = W.load_checkpoint(regressor / "mambaglue_xfeat.pt")
    assert back["meta"]["steps"] == {"stage1": 50, "stage2": 20}
    assert back["meta"]["wall_time_s"]["stage1"] == 12.5 and back["meta"]["batch_size"]["stage1"] == 8
    assert back["meta"]["validation"]["stage1_best"] == {"nll_mean": 0.5, "step": 40}
    assert back["meta"]["matcher_data"]["train_pairs"] == 300 and back["meta"]["data"]["video_fraction"] == 0.4
    assert back["meta"]["command"] == ["mambaglue train --config m.yaml --stage 1", "mambaglue train --config r.yaml --stage 2"]
    assert back["meta"]["note"] == "why" and back["config"] == exported["config"]
    assert back["state_dict"].keys() == exported["state_dict"].keys()
    assert all(torch.equal(back["state_dict"][k], v) for k, v in exported["state_dict"].items())


def test_release_refuses_another_matcher(tmp_path):
    torch.manual_seed(0)
    net = MambaGlue(**CONF)
    matcher, regressor = make_runs(tmp_path, net)
    saved = torch.load(matcher / "stage1_best.pt", weights_only=True)
    key = next(k for k in saved["model"] if saved["model"][k].is_floating_point())
    saved["model"][key] = saved["model"][key] + 1.0  # a matcher the regressor run did not freeze
    torch.save(saved, matcher / "stage1_best.pt")
    with pytest.raises(ValueError, match="not the matcher run's stage1_best.pt"):
        release(matcher, regressor, tmp_path / "out.pt")
    saved["step"] = 50  # and a stage1_best.pt that is not the step the summary picked
    torch.save(saved, matcher / "stage1_best.pt")
    with pytest.raises(ValueError, match="the summary says 40"):
        release(matcher, regressor, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()
