"""Assemble a release checkpoint from a matcher run (stage 1) and the regressor run on its frozen matcher (stage 2).

``results.sh`` trains a network's regressor in ``OUT_reg600`` from a copy of the matcher run's ``stage1_best.pt``, so
the checkpoint that run exports knows only stage 2 (its ``meta`` has ``stage1: null``). This writes the same tensors
with the matcher run's stage-1 data, steps, wall time, commands and validation filled in, after checking that the
exported matcher is the matcher run's best stage-1 model (in fp16) and that the file written holds the export's tensors.

  .venv/bin/python -m mambaglue_ros.training.release --matcher-run out/ablation_xfeat_long3k_v2 \\
      --regressor-run out/ablation_xfeat_long3k_v2_reg600 --out mambaglue_ros/weights/mambaglue_xfeat.pt
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import torch

from .. import weights as W


def released_meta(exported: dict[str, Any], matcher_summary: dict[str, Any], note: str | None) -> dict[str, Any]:
    """The exported checkpoint's metadata with the matcher run's stage 1 (and its data, as ``matcher_data``)."""
    meta = copy.deepcopy(exported["meta"])
    s1 = matcher_summary["stage1"]
    d = matcher_summary["config"]["data"]
    meta["steps"]["stage1"] = s1["steps"]
    meta["batch_size"]["stage1"] = s1["batch_size"]
    meta["wall_time_s"]["stage1"] = s1["wall_time_s"]
    meta["validation"]["stage1_start"] = s1["validation_start"]
    meta["validation"]["stage1_best"] = {**s1["validation_best"], "step": s1.get("best_step")}
    meta["validation"]["stage1_last"] = s1.get("validation_last")
    # stage 2's pairs are in meta["data"]; the matcher's own (more, homography-only) pairs differ
    meta["matcher_data"] = {k: d[k] for k in ("images", "holdout_every", "train_pairs", "val_pairs", "max_keypoints",
                                             "difficulty", "size", "photometric", "video_fraction", "render_fraction",
                                             "pos_th", "neg_th")}
    meta["matcher_data"]["train_pairs"] = matcher_summary["train_pairs"]
    meta["config"]["stage1"] = matcher_summary["config"]["stage1"]
    meta["command"] = list(matcher_summary.get("commands", [])) + list(meta.get("command", []))
    if note:
        meta["note"] = note
    return meta


def check_tensors(exported: dict[str, Any], stage1_model: dict[str, torch.Tensor]) -> None:
    """The exported matcher equals the stage-1 best model in fp16; raises otherwise."""
    state = exported["state_dict"]
    matcher_keys = [k for k in state if not k.startswith("token_confidence.")]
    missing = [k for k in matcher_keys if k not in stage1_model]
    if missing:
        raise ValueError(f"the matcher run's stage-1 model lacks {missing[:3]}: not the same network")
    differ = [k for k in matcher_keys if not torch.equal(state[k], stage1_model[k].to(state[k].dtype))]
    if differ:
        raise ValueError(f"the exported matcher is not the matcher run's stage1_best.pt: {differ[:3]} differ")


def release(matcher_run: Path, regressor_run: Path, out: Path, note: str | None = None) -> dict[str, Any]:
    """Write ``out`` from the two runs' folders (see the module docstring); returns the checkpoint as read back."""
    summary = json.loads((matcher_run / "summary.json").read_text())
    exported_path = regressor_run / f"mambaglue_{summary['features']}.pt"
    exported = W.load_checkpoint(exported_path, features=summary["features"])
    stage1 = torch.load(matcher_run / "stage1_best.pt", map_location="cpu", weights_only=True)
    if stage1.get("step") != summary["stage1"].get("best_step"):
        raise ValueError(f"stage1_best.pt is step {stage1.get('step')}, the summary says {summary['stage1'].get('best_step')}")
    check_tensors(exported, stage1["model"])
    W.save_file(out, {**exported, "version": W.CHECKPOINT_VERSION, "meta": released_meta(exported, summary, note)})
    back = W.load_checkpoint(out, features=summary["features"])
    if not all(torch.equal(back["state_dict"][k], v) for k, v in exported["state_dict"].items()):
        raise RuntimeError(f"{out} does not hold the tensors of {exported_path}")
    return back


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--matcher-run", type=Path, required=True, help="stage-1 run folder (summary.json, stage1_best.pt)")
    p.add_argument("--regressor-run", type=Path, required=True, help="stage-2 run folder with the exported checkpoint")
    p.add_argument("--out", type=Path, required=True, help="release checkpoint to write (.pt, or .pt.xz)")
    p.add_argument("--note", help="one line for meta['note'] (why this file ships)")
    args = p.parse_args(argv)
    back = release(args.matcher_run, args.regressor_run, args.out, args.note)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.2f} MiB): stage 1 {back['meta']['steps']['stage1']} "
          f"steps from {args.matcher_run}, stage 2 {back['meta']['steps']['stage2']} steps from {args.regressor_run}")


if __name__ == "__main__":
    main()
