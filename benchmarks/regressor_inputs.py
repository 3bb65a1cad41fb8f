#!/usr/bin/env python3
"""What the confidence regressor could read: does any per-point input make the early exit sooner at no precision cost?

The deep regressor reads one point's descriptor after a layer and predicts whether the point's assignment is already
the final layer's. Its exit then stops after the first layer where a share α of the points is counted as confident.
On video-like pairs it stops later than an exact regressor would (docs/results.md, "Which network settles sooner"). This
asks whether that is for want of information: the frozen matcher runs once over a training set and a held-out set, and
per-layer regressors of the shipped shape (d -> d/2 -> d/4 -> 1) are fitted offline to the same target and loss as stage
2 (``confidence_loss``: BCE averaged per image, then per pair, then over the layers; AdamW, lr 1e-3, weight decay 0.01,
``--steps`` of 8 pairs, warm-up 10, cosine to 0.1, gradient norm clipped at 1), once per input. Unlike stage 2 the fit
keeps its last step (no validation pick), and it reads the descriptors rounded to fp16 (kept so, to fit in memory):

    desc          the layer's descriptor (what the shipped regressor reads; the control)
    desc+delta    and its change over the layer (x_l - x_{l-1})
    desc+dnorm    and that change's relative norm
    desc+mb       and the layer's matchability logit (the assignment head's, as pruning reads it)
    desc+delta+mb both
    desc+rowmax   and the largest probability in the point's row of the layer's assignment (a reference: it needs the
                  whole assignment at every layer, the cost the regressor exists to avoid)

On the held-out pairs it reports per input and seed: the ROC AUC and BCE of settled against not per layer, the mean
stop at α (count rule, λ_l as the network's) and the precision of the matches at that stop, for all pairs, the video-like
and the homography ones; then where an exact regressor would stop at α 0.95 / 0.97 / 0.99 and the precision there, and
the precision after each layer. The stops are simulated on one full forward pass without pruning (as training's
validation does), with the count rule (``exit_rule: count``, the network's ``settled_fraction``); a pair without matches
at its stop scores precision 0 (as validation does).

    .venv/bin/python benchmarks/regressor_inputs.py --config config/ablations/xfeat_long3k_v2_regressor.yaml \\
        [--weights PATH] [--held-out-pairs 400] [--held-out-seed 4242] [--inputs desc,desc+delta] [--seeds 0,1] \\
        [--json out/regressor_inputs.json]

The training pairs are the config's (its cache is reused); the held-out pairs are new ones of the config's held-out
training photos (``data.holdout_every``), with its share of video-like pairs. Memory: ~2 GB per 1000 pairs at 512
keypoints (XFeat).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaglue_ros.matcher import build_network
from mambaglue_ros.models.mambaglue import MambaGlue, filter_matches, gather_points, unpermute_assignment
from mambaglue_ros.training.dataset import CacheSpec, PairCache, list_images, net_inputs, split_photos
from mambaglue_ros.training.losses import confidence_targets
from mambaglue_ros.training.train import (cache_spec, held_out_rooms, load_batch, load_config, make_caches,
                                         open_cache)

INPUTS = ("desc", "desc+delta", "desc+dnorm", "desc+mb", "desc+delta+mb", "desc+rowmax")


def spec_of(cache: PairCache) -> CacheSpec:
    meta = cache.meta
    fields = {k: (tuple(v) if k == "size" else v) for k, v in meta.items() if k in CacheSpec.__dataclass_fields__}
    return CacheSpec(**fields)


def held_out_cache(cfg: dict[str, Any], num_pairs: int, seed: int) -> PairCache:
    """``num_pairs`` new pairs of the config's held-out training photos, its pair options (video share included)."""
    d = cfg["data"]
    held = split_photos(list_images(d["images"]), int(d["holdout_every"]))[1]
    if not held:
        raise SystemExit(f"{d['images']}: no photo is held out with holdout_every {d['holdout_every']}")
    return open_cache(cfg, cache_spec(cfg, held, num_pairs, seed, held_out_rooms(cfg)), "regressor_inputs",
                      progress=False)[0]


@torch.inference_mode()
def collect(net: MambaGlue, cache: PairCache, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Per pair: its kind, point count, and per layer the precision of its matches; for layers 0..L-2 also every
    point's descriptor (fp16), the one before the layer, the shipped regressor's confidence, the matchability, the
    assignment row maximum and the target (argmax = the final layer's)."""
    spec = spec_of(cache)
    L = net.conf["n_layers"]
    pos_th = float(cfg["data"]["pos_th"])
    pairs = []
    for k in range(len(cache)):
        batch = load_batch(cache, [k], cfg)
        data = net_inputs(batch)
        s0, s1 = net.encode(data)
        d0, e0, i0 = s0["desc"], s0["enc"], s0["index"]
        d1, e1, i1 = s1["desc"], s1["enc"], s1["index"]
        inv0, inv1 = torch.argsort(i0, 1), torch.argsort(i1, 1)

        prev = (gather_points(d0, inv0)[0], gather_points(d1, inv1)[0])  # each point's token, in the input order
        las, layers = [], []
        for i in range(L):
            d0, d1 = net.transformers[i](d0, d1, e0, e1)
            las.append(unpermute_assignment(net.log_assignment[i](d0, d1), i0, i1, inv0, inv1))
            cur = (gather_points(d0, inv0)[0], gather_points(d1, inv1)[0])
            rec: dict[str, Any] = {}
            if i < L - 1:
                for s, x, p in zip("01", cur, prev):
                    rec[f"desc{s}"], rec[f"prev{s}"] = x.half(), p.half()
                    rec[f"conf{s}"] = net.token_confidence[i](x[None])[0]
                    rec[f"mb{s}"] = net.log_assignment[i].get_matchability(x[None])[0]
            layers.append(rec)
            prev = cur
        for i, la in enumerate(las):
            m0 = filter_matches(la, net.conf["filter_threshold"])[0][0]
            idx = torch.where(m0 >= 0)[0]
            err = (batch["proj0_1"][0, idx] - batch["keypoints1"][0, m0[idx]].double()).norm(dim=-1)
            layers[i]["prec"] = float((err < pos_th).float().mean()) if len(idx) else 0.0
            if i < L - 1:
                t0, t1 = confidence_targets(la, las[-1])
                layers[i].update(t0=t0[0].bool(), t1=t1[0].bool(), rm0=la[0, :-1, :].exp().max(-1).values,
                                 rm1=la[0, :, :-1].exp().max(-2).values)
        pairs.append({"kind": spec.pair_kind(k), "n": int(data["keypoints0"].shape[1] + data["keypoints1"].shape[1]),
                      "layers": layers})
    return pairs


def features_of(layer: dict[str, Any], side: str, inputs: str) -> torch.Tensor:
    x = layer[f"desc{side}"].float()
    parts = [x]
    change = x - layer[f"prev{side}"].float()
    if "delta" in inputs:
        parts.append(change)
    if "dnorm" in inputs:
        parts.append(change.norm(dim=-1, keepdim=True) / x.norm(dim=-1, keepdim=True).clamp(min=1e-6))
    if "mb" in inputs:
        parts.append(torch.logit(layer[f"mb{side}"].float().clamp(1e-6, 1 - 1e-6))[:, None])
    if "rowmax" in inputs:
        parts.append(layer[f"rm{side}"].float()[:, None])
    return torch.cat(parts, -1)


def both(layer: dict[str, Any], key: str) -> torch.Tensor:
    return torch.cat([layer[f"{key}0"], layer[f"{key}1"]])


def fit(train: list[dict[str, Any]], inputs: str, dim: int, steps: int, seed: int) -> nn.ModuleList:
    """One regressor per layer (the shipped shape on a wider input), stage 2's loss on the settled target."""
    torch.manual_seed(seed)
    L1 = len(train[0]["layers"]) - 1
    X = [[torch.cat([features_of(p["layers"][i], s, inputs) for s in "01"]) for p in train] for i in range(L1)]
    T = [[both(p["layers"][i], "t").float() for p in train] for i in range(L1)]
    # each point's weight: 1 / (2 x its image's point count), so that every image, then every pair, counts the same
    W = [torch.cat([torch.full((len(p["layers"][0][f"t{s}"]),), 0.5 / max(len(p["layers"][0][f"t{s}"]), 1))
                    for s in "01"]) for p in train]
    nets = nn.ModuleList([nn.Sequential(nn.Linear(X[0][0].shape[-1], dim // 2), nn.ReLU(), nn.Linear(dim // 2, dim // 4),
                                        nn.ReLU(), nn.Linear(dim // 4, 1)) for _ in range(L1)])
    opt = torch.optim.AdamW(nets.parameters(), lr=1e-3, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    order: list[int] = []
    batch = min(8, len(train))
    for step in range(steps):
        if len(order) < batch:
            order = list(rng.permutation(len(train)))
        idx = [order.pop() for _ in range(batch)]
        f = (step + 1) / 10 if step < 10 else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = 1e-3 * f
        w = torch.cat([W[k] for k in idx]) / len(idx)
        loss = sum((F.binary_cross_entropy_with_logits(nets[i](torch.cat([X[i][k] for k in idx])).squeeze(-1),
                                                       torch.cat([T[i][k] for k in idx]), reduction="none") * w).sum()
                   for i in range(L1)) / L1
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(nets.parameters(), 1.0)
        opt.step()
    return nets


def roc_auc(score: torch.Tensor, target: torch.Tensor) -> float:
    """Area under the ROC curve of ``score`` for ``target`` (Mann-Whitney, ties at their mean rank); NaN with one class."""
    _, where, counts = torch.unique(score.double(), return_inverse=True, return_counts=True)
    ranks = (counts.cumsum(0) - (counts - 1) / 2)[where]  # 1-based ranks, a tie's mean rank for each of its values
    pos = target > 0.5
    npos, nneg = int(pos.sum()), int((~pos).sum())
    if not npos or not nneg:
        return float("nan")
    return float((ranks[pos].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def stop_of(shares: list[float], alpha: float, layers: int) -> int:
    return next((i + 1 for i, r in enumerate(shares) if r >= alpha), layers)


@torch.no_grad()
def score(held: list[dict[str, Any]], confidence, thresholds: list[float], alpha: float) -> dict[str, Any]:
    """Stops and precision at the stop per pair kind, and AUC / BCE per layer, of one regressor (``confidence(pair,
    layer)`` -> the points' confidences, image 0 then image 1)."""
    L = len(held[0]["layers"])
    out: dict[str, Any] = {}
    rows = []
    for p in held:
        confs = [confidence(p, i) for i in range(L - 1)]
        stop = stop_of([1 - float((c < thresholds[i]).sum()) / p["n"] for i, c in enumerate(confs)], alpha, L)
        rows.append((p["kind"], stop, p["layers"][stop - 1]["prec"]))
    for kind in ("all", "video", "homography"):
        sel = [r for r in rows if kind == "all" or r[0] == kind]
        if sel:
            out[kind] = {"pairs": len(sel), "stop": float(np.mean([r[1] for r in sel])),
                         "precision": float(np.mean([r[2] for r in sel]))}
    c = [torch.cat([confidence(p, i) for p in held]).float() for i in range(L - 1)]
    t = [torch.cat([both(p["layers"][i], "t") for p in held]).float() for i in range(L - 1)]
    out["auc"] = [round(roc_auc(ci, ti), 4) for ci, ti in zip(c, t)]
    out["bce"] = [round(float(F.binary_cross_entropy(ci.clamp(1e-6, 1 - 1e-6), ti)), 4) for ci, ti in zip(c, t)]
    return out


def exact(held: list[dict[str, Any]], alphas: list[float]) -> dict[str, Any]:
    """Where an exact regressor would stop (a share α of the points settled) and the precision there; and the
    precision after each layer, per pair kind."""
    L = len(held[0]["layers"])
    out: dict[str, Any] = {}
    for kind in ("all", "video", "homography"):
        sel = [p for p in held if kind == "all" or p["kind"] == kind]
        if not sel:
            continue
        out[kind] = {"per_layer_precision": [float(np.mean([p["layers"][i]["prec"] for p in sel])) for i in range(L)]}
        for a in alphas:
            stops = [stop_of([float(both(p["layers"][i], "t").float().mean()) for i in range(L - 1)], a, L) for p in sel]
            out[kind][str(a)] = {"stop": float(np.mean(stops)),
                                 "precision": float(np.mean([p["layers"][s - 1]["prec"] for p, s in zip(sel, stops)]))}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a training config: its training pairs, held-out photos, features")
    ap.add_argument("--weights", default=None, help="matcher checkpoint (default: the shipped file of the front end)")
    ap.add_argument("--held-out-pairs", type=int, default=400)
    ap.add_argument("--held-out-seed", type=int, default=4242)
    ap.add_argument("--inputs", default=",".join(INPUTS), help=f"comma list of {INPUTS}")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--alpha", type=float, default=0.95)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    inputs = args.inputs.split(",")
    if set(inputs) - set(INPUTS):
        ap.error(f"--inputs: unknown {sorted(set(inputs) - set(INPUTS))}; choose from {INPUTS}")
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    train_cache, _ = make_caches(cfg, progress=False)
    held_cache = held_out_cache(cfg, args.held_out_pairs, args.held_out_seed)
    net, source = build_network(cfg["features"], args.weights, early_exit=False, pruning=False)
    net.eval()
    if net.conf["exit_rule"] != "count":
        raise SystemExit(f"{source}: exit_rule {net.conf['exit_rule']!r}; this script simulates the count rule")
    t0 = time.perf_counter()
    train, held = collect(net, train_cache, cfg), collect(net, held_cache, cfg)
    print(f"{source}: {len(train)} training pairs, {len(held)} held-out pairs "
          f"({sum(p['kind'] == 'video' for p in held)} video-like), collected in {time.perf_counter() - t0:.0f} s")
    L = net.conf["n_layers"]
    thresholds = [net.confidence_threshold(i) for i in range(L)]
    report: dict[str, Any] = {"weights": source, "config": args.config, "train_pairs": len(train),
                              "held_out_pairs": len(held), "held_out_seed": args.held_out_seed, "alpha": args.alpha,
                              "steps": args.steps, "exact": exact(held, [0.95, 0.97, 0.99]), "regressors": {}}
    report["regressors"]["shipped"] = score(held, lambda p, i: both(p["layers"][i], "conf"), thresholds, args.alpha)
    for inputs_ in inputs:
        for seed in (int(s) for s in args.seeds.split(",")):
            nets = fit(train, inputs_, int(net.conf["descriptor_dim"]), args.steps, seed)

            def confidence(p: dict[str, Any], i: int, nets: nn.ModuleList = nets, inputs_: str = inputs_) -> torch.Tensor:
                x = torch.cat([features_of(p["layers"][i], s, inputs_) for s in "01"])
                return torch.sigmoid(nets[i](x).squeeze(-1))

            report["regressors"][f"{inputs_} (seed {seed})"] = score(held, confidence, thresholds, args.alpha)
    print(f"\nalpha {args.alpha}, count rule, {len(held)} held-out pairs: mean stop / precision at the stop")
    print("| regressor input | all | video-like | homography | ROC AUC per layer |\n|---|---|---|---|---|")
    for name, r in report["regressors"].items():
        cells = " | ".join(f"{r[k]['stop']:.2f} / {r[k]['precision']:.4f}" if k in r else "-"
                           for k in ("all", "video", "homography"))
        print(f"| {name} | {cells} | {' '.join(f'{a:.3f}' for a in r['auc'])} |")
    print("\nan exact regressor: mean stop / precision at the stop; precision after each layer")
    for kind, r in report["exact"].items():
        cells = ", ".join(f"α {a}: {r[a]['stop']:.2f} / {r[a]['precision']:.4f}" for a in ("0.95", "0.97", "0.99"))
        print(f"{kind}: {cells}; layers: {' '.join(f'{v:.4f}' for v in r['per_layer_precision'])}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
