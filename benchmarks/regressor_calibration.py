#!/usr/bin/env python3
"""How well each network's confidence regressor predicts its own final answer, layer by layer.

The early exit stops after layer i when a fraction α of the points have a confidence above λ_i. This
prints, per layer and per kind of pair (synthetic homographies of held-out photos, and video-like small
motions of the same photos), what the regressor says against what happens:

- ``agree``: share of points whose argmax (dustbin included) already equals the final layer's (the target
  the regressor is trained on); ``agree (matched)``: the same among the points the final layer matches;
- ``conf``: mean predicted confidence; ``> λ``: share of points counted as confident (what the exit uses);
- ``missed``: share of the disagreeing points that are nevertheless counted as confident;
- ``stop@α``: mean layer at which the exit would stop for each α (simulated on the same forward pass);
- ``mean-rule stop@α``: the same with ``exit_rule='mean'`` (the mean confidence, i.e. the expected share of
  settled points, reaches α);
- ``oracle@α``: mean layer at which an exact regressor would stop: the first layer after which a fraction α
  of the points already has its final assignment. It depends on the matcher alone, so it says which network
  settles sooner, apart from how well its regressor predicts it;
- ``agree (output)`` and ``output oracle@α``: the same for what the matcher outputs, each point's filtered match
  (mutual, score above the network's ``filter_threshold``; the matched index or none) at that layer against the
  final layer's: a point whose argmax moves between columns it is not matched to either way counts as settled.

    .venv/bin/python benchmarks/regressor_calibration.py --images ../shared/data/photos/val --pairs 30 \\
        --methods mambaglue,lightglue,mambaglue@out/train_xfeat_v2_long/mambaglue_xfeat.pt
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from mambaglue_ros.evaluation.bench import photo_pair
from mambaglue_ros.evaluation.homography import build_matcher, synthetic_pairs
from mambaglue_ros.models.mambaglue import filter_matches
from mambaglue_ros.training.losses import confidence_targets


def stop_layer(shares: list[float], alpha: float, layers: int) -> int:
    """Layers run when the exit stops after the first layer whose share reaches ``alpha`` (all of them if none)."""
    return next((i + 1 for i, r in enumerate(shares) if r >= alpha), layers)


def layer_stats(matcher, pairs, alphas: list[float]) -> dict:
    net = matcher.net
    L = net.conf["n_layers"]
    th = [net.confidence_threshold(i) for i in range(L - 1)]
    acc = {k: np.zeros(L - 1) for k in ("agree", "agree_matched", "agree_output", "conf", "confident", "missed")}
    stops = {a: [] for a in alphas}
    oracle = {a: [] for a in alphas}
    mean_stops = {a: [] for a in alphas}
    output_oracle = {a: [] for a in alphas}
    filter_th = float(net.conf["filter_threshold"])
    n = 0
    for image0, image1 in pairs:
        f0, f1 = matcher.extract(image0), matcher.extract(image1)
        with torch.inference_mode():
            out = net.forward_train(matcher._batch([(f0, f1)]))
        las, final = out["log_assignment"], out["log_assignment"][-1]
        matched0 = (final[0, :-1, :].argmax(-1) < final.shape[2] - 1)
        ratio, agreed, expected, same_output = [], [], [], []
        final_m0, final_m1 = filter_matches(final, filter_th)[:2]
        for i in range(L - 1):
            t0, t1 = confidence_targets(las[i], final)
            c = torch.cat([out["confidence0"][i][0], out["confidence1"][i][0]]).float()
            t = torch.cat([t0[0], t1[0]]).bool()
            m0, m1 = filter_matches(las[i], filter_th)[:2]
            same = torch.cat([m0[0] == final_m0[0], m1[0] == final_m1[0]]).float().mean().item()
            acc["agree_output"][i] += same
            same_output.append(same)
            sure = c > th[i]
            acc["agree"][i] += t.float().mean().item()
            acc["agree_matched"][i] += t0[0][matched0].float().mean().item() if matched0.any() else 1.0
            acc["conf"][i] += c.mean().item()
            acc["confident"][i] += sure.float().mean().item()
            acc["missed"][i] += (sure & ~t).float().sum().item() / max(int((~t).sum()), 1)
            ratio.append(sure.float().mean().item())
            agreed.append(t.float().mean().item())
            expected.append(c.mean().item())
        for a in alphas:
            for kept, shares in ((stops, ratio), (oracle, agreed), (mean_stops, expected), (output_oracle, same_output)):
                kept[a].append(stop_layer(shares, a, L))
        n += 1
    return {"layers": L, "thresholds": th, **{k: (v / n).tolist() for k, v in acc.items()},
            "stop": {str(a): float(np.mean(s)) for a, s in stops.items()},
            "oracle_stop": {str(a): float(np.mean(s)) for a, s in oracle.items()},
            "mean_rule_stop": {str(a): float(np.mean(s)) for a, s in mean_stops.items()},
            "output_oracle_stop": {str(a): float(np.mean(s)) for a, s in output_oracle.items()}, "pairs": n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True)
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--features", default="xfeat")
    ap.add_argument("--keypoints", type=int, default=1024)
    ap.add_argument("--methods", default="mambaglue,lightglue")
    ap.add_argument("--alphas", default="0.9,0.95,0.99")
    ap.add_argument("--kinds", default="homography,video",
                    help="pair kinds: homography, video (--pairs each, held-out photos), easy (bench --pair easy)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not Path(args.images).is_dir():
        ap.error(f"--images: no such folder: {args.images}")
    if args.pairs < 1:
        ap.error("--pairs must be at least 1")
    torch.set_num_threads(1)
    alphas = [float(a) for a in args.alphas.split(",")]
    report = {}
    for method in args.methods.split(","):
        matcher = build_matcher(method, args.features, "cpu", args.keypoints)
        for kind in args.kinds.split(","):
            if kind == "easy":  # the one video-like pair of `mambaglue bench --pair easy`
                pairs = iter([photo_pair(args.keypoints, "easy")])
            else:
                pairs = ((p.image0, p.image1)
                         for p in synthetic_pairs(args.images, args.pairs, args.seed, video=kind == "video"))
            s = layer_stats(matcher, pairs, alphas)
            report[f"{method} | {kind}"] = s
            stops = ", ".join(f"α {a}: {v:.2f}" for a, v in s["stop"].items())
            oracle = ", ".join(f"α {a}: {v:.2f}" for a, v in s["oracle_stop"].items())
            mean_rule = ", ".join(f"α {a}: {v:.2f}" for a, v in s["mean_rule_stop"].items())
            output = ", ".join(f"α {a}: {v:.2f}" for a, v in s["output_oracle_stop"].items())
            print(f"\n{method} | {kind} pairs ({s['pairs']}): stop {stops}; with the mean rule {mean_rule}; "
                  f"an exact regressor would stop {oracle}; one exact on the output {output}")
            print("| layer | λ | agree | agree (matched) | agree (output) | conf | > λ | missed |\n"
                  "|---|---|---|---|---|---|---|---|")
            for i in range(s["layers"] - 1):
                print(f"| {i + 1} | {s['thresholds'][i]:.3f} | {s['agree'][i]:.3f} | {s['agree_matched'][i]:.3f} | "
                      f"{s['agree_output'][i]:.3f} | {s['conf'][i]:.3f} | {s['confident'][i]:.3f} | "
                      f"{s['missed'][i]:.3f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
