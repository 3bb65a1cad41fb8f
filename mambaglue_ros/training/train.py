"""Two-stage MambaGlue training on synthetic homography pairs (CPU-friendly, resumable, time-budgeted).

Stage 1 (matcher): warm start from the front end's LightGlue weights (the Mamba branch and the Mamba
columns of the self-block FFNs start fresh / at zero, so step 0 *is* LightGlue), then fine-tune with
LightGlue's assignment NLL at every layer. AdamW with two learning rates: ``lr`` for the warm-started
parameters and ``lr_new`` for the new ones (Mamba branch, the Mamba columns of the FFN input layer; the
warm columns of that same tensor get ``lr`` exactly: their Adam step is rescaled after each update).
Stage 2 (regressor): matcher frozen, the per-layer deep confidence regressors learn, with BCE, whether
each point's current assignment is already the final one.

    mambaglue train --config config/train_xfeat.yaml [--stage 1|2|both] [--max-minutes M] [--resume] [--out DIR]

Outputs in the run folder (``out_dir`` of the config, or ``--out``):
    stage{1,2}_state.pt   resumable training state (model fp32, optimiser, step, data position, time, log)
    stage{1,2}_best.pt    the model with the best validation loss (fp32 state dict + numbers)
    stage{1,2}_log.jsonl  loss curve and validations
    mambaglue_<features>.pt  the release checkpoint (fp16, ``weights.save_checkpoint``) after stage 2;
                          also copied to ``export`` when the config names a path
    summary.json          numbers for the model card
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import yaml

from .. import weights as W
from ..paths import expand_data_path
from ..matcher import ARCHITECTURE_OPTIONS, CHECKPOINT_OPTIONS, build_network, cpu_has_native_bf16
from ..models.mambaglue import MambaGlue, filter_matches
from .dataset import (CacheSpec, PairCache, build_cache, cache_folder, collate, iterate_batches, list_images,
                      net_inputs, split_photos)
from .losses import confidence_loss, confidence_targets, matcher_loss, nll_loss
from .render_pairs import NUM_SCENES

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "features": "xfeat",
    "seed": 0,
    "out_dir": "out/train_xfeat",
    "export": None,  # copy the release checkpoint here after stage 2
    "export_overwrite": False,  # True: the export may replace an existing file (else the run is refused at its start)
    "hardware": None,  # text for the checkpoint metadata (default: detected)
    "threads": 0,  # torch threads (0 = torch's default)
    # Arithmetic of the training forward passes: 'fp32', or 'bf16' mixed precision (torch.autocast: fp32 master
    # weights, optimiser and validation; the Mamba scan, the assignments, the confidences and the losses stay fp32),
    # which pays only on a CPU that computes bf16 natively (AVX512-BF16 / AMX: about 0.7x the fp32 step time of the
    # version-2 XFeat network at batch 8, docs/results.md); 'auto' = bf16 there, else fp32. Every run before this
    # option was fp32.
    "precision": "fp32",
    "data": {
        "images": "$MAMBAGLUE_DATA/photos/train",  # $MAMBAGLUE_DATA: mambaglue_ros.paths.data_root()
        "holdout_every": 14,  # every n-th photo (sorted) is held out for validation / checkpoint picking
        "cache_dir": "out/cache",
        "max_keypoints": 512,
        "train_pairs": 1000,
        "val_pairs": 64,
        "difficulty": 0.8,
        "size": [640, 480],
        "photometric": 1.0,
        "video_fraction": 0.0,  # share of video-like small-motion pairs (consecutive-frame matching)
        "render_fraction": 0.0,  # share of rendered-room pairs: parallax, occlusions, depth ground truth
        # The seed the training pairs are drawn with (null: the run's ``seed``). Pair k is photo k % photos, warped by
        # a draw of this seed, so a regressor stage given its matcher run's seed trains on pairs that matcher saw
        # (several epochs): another value gives it pairs the matcher did not memorise, as new images will be. A
        # regressor stage must be its own config for that (the ``_regressor.yaml`` files): ``--stage both`` trains
        # both stages on the same pairs, also with fresh_pairs_each_epoch.
        "pair_seed": None,
        # True: every epoch after the first trains on pairs of its own (epoch e draws with pair seed + e *
        # EPOCH_SEED_STRIDE; epoch 0 is the fixed set), extracted as the epoch starts, so that a run of several
        # epochs sees new warps of its photos instead of memorising one set (glue-factory draws a new homography per
        # sample). Costs a cache of train_pairs per epoch (time, disk); False: the same pairs every epoch.
        "fresh_pairs_each_epoch": False,
        "pos_th": 3.0,
        "neg_th": 5.0,
    },
    # network options (see MambaGlue.default_conf); the shape options come from the LightGlue warm start
    "model": {"mixer": "attention+mamba", "regressor": "deep", "scan_order": "hilbert", "bidirectional": True,
              "mamba_message": "gated", "mamba_expand": 0.5},
    "stage1": {
        "batch_size": 8,
        "lr": 1.0e-4,  # warm-started (LightGlue) parameters
        "lr_new": 1.0e-3,  # Mamba branch and the Mamba columns of the self-block FFN input layer
        "weight_decay": 0.0,
        "weight_decay_new": 0.01,
        "warmup_steps": 20,
        "min_lr_factor": 0.1,  # cosine decay to this fraction of the lr over the budget
        "clip_grad": 1.0,
        "gamma": 1.0,  # layer weights gamma ** (L - 1 - l); 1 = every layer counts the same
        "nll_balance": 0.5,
        "max_minutes": 35.0,
        "max_steps": 0,  # 0 = until the time budget
        "ckpt_every": 50,
        "val_every": 200,
        "log_every": 10,
        "init": "lightglue",  # matcher weights stage 1 starts from: 'lightglue' (the warm start above) or the path of
                              # a released MambaGlue checkpoint whose matcher it continues (its network options must
                              # be the config's; its regressors are dropped: stage 2 trains new ones)
    },
    "stage2": {
        "batch_size": 8,
        "lr": 1.0e-3,
        "weight_decay": 0.01,
        "warmup_steps": 10,
        "min_lr_factor": 0.1,
        "clip_grad": 1.0,
        "max_minutes": 10.0,
        "max_steps": 0,
        "ckpt_every": 50,
        "val_every": 100,
        "log_every": 10,
        "init": "best",  # matcher weights for stage 2: 'best' or 'last' of stage 1, or the path of a released
                         # checkpoint (a new regressor on a shipped matcher; its network options must match)
    },
}


# ------------------------------------------------------------------------------------------ config
def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            out[k] = _merge(base[k], v)
        else:
            out[k] = v
    return out


def load_config(path: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """Defaults <- YAML file <- overrides (nested dicts merge). The result is the caller's own: its sections are
    copies, so editing one never changes ``DEFAULTS`` or the overrides (the merge alone shares every section nothing
    overrode)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        text = Path(path).read_text()
        cfg = _merge(cfg, yaml.safe_load(text) or {})
    cfg = _merge(cfg, copy.deepcopy(overrides))  # nor does editing it change an override's dict or list
    unknown = set(cfg) - set(DEFAULTS)
    for section in ("data", "model", "stage1", "stage2"):
        unknown |= {f"{section}.{k}" for k in set(cfg[section]) - set(DEFAULTS[section])}
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)}")
    cfg["data"]["images"] = expand_data_path(cfg["data"]["images"])
    for stage in ("stage1", "stage2"):
        if not (float(cfg[stage]["max_minutes"] or 0) > 0 or int(cfg[stage]["max_steps"] or 0) > 0):
            raise ValueError(f"{stage} has neither max_minutes nor max_steps: it would never stop; set one (> 0)")
    return cfg


# What a resumed stage may change from the run it continues: its budget, how often it logs, validates and saves,
# and where things are written; anything else (data, network, learning rates, seed) would mix two runs in one.
RESUME_FREE_KEYS = ("out_dir", "export", "export_overwrite", "hardware", "threads", "data.cache_dir")
RESUME_FREE_STAGE_KEYS = ("max_minutes", "max_steps", "ckpt_every", "val_every", "log_every")


def resume_fingerprint(cfg: dict[str, Any], stage: int) -> dict[str, Any]:
    """The config keys a resumed ``stage`` must share with its saved state, flattened ("stage1.lr": ...) and
    JSON-normalised (tuples as lists); the other stage's section is not part of it."""
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        if key.startswith("stage") and key != f"stage{stage}":
            continue
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, v in items:
            name = key if sub is None else f"{key}.{sub}"
            if name in RESUME_FREE_KEYS or (key.startswith("stage") and sub in RESUME_FREE_STAGE_KEYS):
                continue
            flat[name] = v
    return json.loads(json.dumps(flat))


def check_run_folder(cfg: dict[str, Any], out: Path, stages: Sequence[int], resume: bool, overwrite: bool) -> None:
    """Before a run: a stage whose saved state is in ``out`` runs only with ``resume`` (and the same config, bar
    ``RESUME_FREE_KEYS``) or ``overwrite`` (its state, log and best file are deleted); an export target that exists
    is replaced only with ``export_overwrite``. ValueError naming what to do otherwise."""
    for stage in stages:
        path = _state_path(out, stage)
        if not path.is_file():
            continue
        if not resume and not overwrite:
            raise ValueError(f"{path} holds a stage-{stage} run: continue it with --resume, or start it again with "
                             "--overwrite (its state, log and best checkpoint are deleted), or use another --out")
        if resume:
            # mmap: only the config is read here, not the model and optimiser tensors (run_stage loads those)
            saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("config")
            if saved is not None:
                now = resume_fingerprint(cfg, stage)
                # a key the saved run did not know (added to DEFAULTS since) counts as its default
                default = resume_fingerprint(DEFAULTS, stage)
                differ = sorted(k for k in set(saved) | set(now)
                                if saved.get(k, default.get(k)) != now.get(k, default.get(k)))
                if differ:
                    raise ValueError(f"{path} was trained with another config; --resume may change only the budget, "
                                     f"the logging and the output paths, not: "
                                     + ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in differ)
                                     + ". Start a new --out, or drop --resume and pass --overwrite")
    if 2 in stages and cfg.get("export") and Path(cfg["export"]).exists() and not cfg.get("export_overwrite"):
        raise ValueError(f"export target {cfg['export']} exists (a shipped weights file?): set export_overwrite: true "
                         "to replace it, or another export path (or null: the release file stays in the run folder)")


def _write_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` beside ``path``, then ``tmp`` moved over it: a Ctrl-C mid-write leaves the old file whole, not a
    truncated one. ``tmp`` keeps ``path``'s suffix (``weights.save_checkpoint`` compresses by it)."""
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    write(tmp)
    tmp.replace(path)


def _write_json(path: Path, data: Any) -> None:
    _write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1)))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): delete it (or the run folder) to start fresh") from e


TRAIN_PRECISIONS = ("fp32", "bf16", "auto")


def training_precision(cfg: dict[str, Any]) -> str:
    """The config's ``precision`` resolved for this machine: 'fp32' or 'bf16'."""
    precision = str(cfg.get("precision", "fp32"))
    if precision not in TRAIN_PRECISIONS:
        raise ValueError(f"unknown training precision {precision!r}; choose from {TRAIN_PRECISIONS}")
    if precision == "auto":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return precision


def hardware_string(cfg: dict[str, Any]) -> str:
    if cfg.get("hardware"):
        return str(cfg["hardware"])
    return (f"{os.cpu_count()}-core CPU ({platform.machine()}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


# ------------------------------------------------------------------------------------------ data
def cache_spec(cfg: dict[str, Any], photos: Sequence[Path], num_pairs: int, seed: int,
               scene_offset: int = 0) -> CacheSpec:
    """The pairs a config's data options make of ``photos``: ``num_pairs`` of them, drawn with ``seed`` (rendered
    pairs in the rooms from ``scene_offset`` on: ``render_pairs.make_render_pair``)."""
    d = cfg["data"]
    return CacheSpec(features=cfg["features"], max_keypoints=int(d["max_keypoints"]),
                     photos=[str(p.resolve()) for p in photos], num_pairs=int(num_pairs), seed=int(seed),
                     difficulty=float(d["difficulty"]), size=tuple(d["size"]), photometric=float(d["photometric"]),
                     video_fraction=float(d.get("video_fraction", 0.0)),
                     render_fraction=float(d.get("render_fraction", 0.0)), scene_offset=int(scene_offset))


def open_cache(cfg: dict[str, Any], spec: CacheSpec, name: str, extractor: Any = None,
               progress: bool = True) -> tuple[PairCache, Any]:
    """The feature cache of ``spec`` under the config's ``cache_dir``, built (or extended) first where it falls short.
    Returns it and the front end used (``extractor``, or one made here only when features had to be extracted)."""
    folder = cache_folder(cfg["data"]["cache_dir"], spec, name)
    if not (folder / "cache.json").is_file() or PairCache(folder).meta["num_pairs"] < spec.num_pairs:
        if extractor is None:
            from ..features import FeatureExtractor

            extractor = FeatureExtractor(cfg["features"], max_keypoints=int(cfg["data"]["max_keypoints"]))
    build_cache(spec, folder, extractor, progress=progress)
    return PairCache(folder, spec.num_pairs), extractor


def held_out_rooms(cfg: dict[str, Any]) -> int:
    """The ``scene_offset`` of pairs that judge a run (validation, held-out benchmarks): rendered pairs in other rooms
    than training's, so that picking a checkpoint does not reward knowing the training rooms (0 without rendered
    pairs: those caches keep the keys they had before the option)."""
    return NUM_SCENES if float(cfg["data"].get("render_fraction", 0.0)) > 0 else 0


def make_caches(cfg: dict[str, Any], progress: bool = True) -> tuple[PairCache, PairCache | None]:
    """Build (or reuse) the training and validation feature caches of a config."""
    d = cfg["data"]
    photos = list_images(d["images"])
    train_photos, val_photos = split_photos(photos, int(d["holdout_every"]))
    log.info("%s: %d training photos, %d held out for validation", d["images"], len(train_photos), len(val_photos))
    if not val_photos:
        log.warning("no photos held out (%d photos, holdout_every %s): no validation, and stage 2 starts from the "
                    "last matcher, not the best", len(photos), d["holdout_every"])
    extractor = None
    caches: list[PairCache | None] = []
    train_seed = training_pair_seed(cfg)
    # the validation pairs stay the run's (a regressor stage validates on its matcher's pairs)
    for name, subset, n, seed, rooms in (("train", train_photos, d["train_pairs"], train_seed, 0),
                                         ("val", val_photos, d["val_pairs"], cfg["seed"] + 7919, held_out_rooms(cfg))):
        if not subset or int(n) <= 0:
            caches.append(None)
            continue
        cache, extractor = open_cache(cfg, cache_spec(cfg, subset, n, seed, rooms), name, extractor, progress)
        caches.append(cache)
    if caches[0] is None:
        raise ValueError("no training pairs: data.train_pairs must be > 0 and some photos must be left for training")
    return caches[0], caches[1]


EPOCH_SEED_STRIDE = 1_000_003  # epoch e's pairs: seed + e * this (far from the validation pairs' seed + 7919)


def training_pair_seed(cfg: dict[str, Any]) -> int:
    """The seed the training pairs are drawn with: ``data.pair_seed``, else the run's ``seed``."""
    return int(cfg["seed"] if cfg["data"].get("pair_seed") is None else cfg["data"]["pair_seed"])


def epoch_caches(cfg: dict[str, Any], progress: bool = True) -> Callable[[int], PairCache] | None:
    """With ``data.fresh_pairs_each_epoch``: epoch -> the feature cache of that epoch's training pairs (built when
    first asked for; epoch 0's is ``make_caches``' training cache). None without the option."""
    d = cfg["data"]
    if not d.get("fresh_pairs_each_epoch"):
        return None
    train_photos, _ = split_photos(list_images(d["images"]), int(d["holdout_every"]))
    extractor = None

    def cache_of(epoch: int) -> PairCache:
        nonlocal extractor
        spec = cache_spec(cfg, train_photos, d["train_pairs"], training_pair_seed(cfg) + EPOCH_SEED_STRIDE * epoch)
        cache, extractor = open_cache(cfg, spec, "train", extractor, progress)
        return cache

    return cache_of


def load_batch(cache: PairCache, idx: list[int], cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    return collate([cache[i] for i in idx], float(cfg["data"]["pos_th"]), float(cfg["data"]["neg_th"]))


# ------------------------------------------------------------------------------------------ model / optimiser
def build_model(cfg: dict[str, Any]) -> MambaGlue:
    torch.manual_seed(int(cfg["seed"]))  # the fresh Mamba branch and regressor initialisation
    # (mamba_ffn_rank 0: trained and validated as it is, not with the inference-time low-rank Mamba columns)
    net, _ = build_network(cfg["features"], "lightglue", **{**cfg["model"], "mamba_ffn_rank": 0}, early_exit=False,
                           pruning=False)
    return net


def mixed_columns(net: MambaGlue) -> dict[str, int]:
    """Self-block FFN input weights that hold warm (LightGlue) and new (Mamba) columns: name -> #warm columns."""
    out = {}
    d = net.conf["descriptor_dim"]
    for i, layer in enumerate(net.transformers):
        sb = layer.self_attn
        if sb.use_mamba:
            out[f"transformers.{i}.self_attn.ffn.0.weight"] = d * (1 + int(sb.use_attention))
    return out


class MatcherOptimizer:
    """AdamW over the matcher (not the regressors) with a warm lr and a new lr, exact per column."""

    def __init__(self, net: MambaGlue, s: dict[str, Any]) -> None:
        self.mixed = mixed_columns(net)
        self.ratio = float(s["lr"]) / float(s["lr_new"])
        self.named = {n: p for n, p in net.named_parameters() if not n.startswith("token_confidence.")}
        warm = [p for n, p in self.named.items() if ".mamba." not in n and n not in self.mixed]
        new = [p for n, p in self.named.items() if ".mamba." in n]
        mixed = [self.named[n] for n in self.mixed]
        self.opt = torch.optim.AdamW([
            {"params": warm, "lr": float(s["lr"]), "weight_decay": float(s["weight_decay"]), "name": "warm"},
            {"params": new, "lr": float(s["lr_new"]), "weight_decay": float(s["weight_decay_new"]), "name": "new"},
            {"params": mixed, "lr": float(s["lr_new"]), "weight_decay": 0.0, "name": "mixed"},
        ])
        for g in self.opt.param_groups:
            g["base_lr"] = g["lr"]

    def step(self) -> None:
        before = {n: self.named[n].detach()[:, :c].clone() for n, c in self.mixed.items()}
        self.opt.step()
        with torch.no_grad():  # the warm columns move at lr, not lr_new (AdamW's step is linear in lr)
            for n, c in self.mixed.items():
                w = self.named[n]
                w[:, :c] = before[n] + (w[:, :c] - before[n]) * self.ratio

    def set_lr_factor(self, f: float) -> None:
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * f

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return self.opt.state_dict()

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.opt.load_state_dict(sd)
        for g in self.opt.param_groups:
            g.setdefault("base_lr", g["lr"])


class RegressorOptimizer(MatcherOptimizer):
    def __init__(self, net: MambaGlue, s: dict[str, Any]) -> None:  # noqa: D107 - AdamW over the regressors only
        self.mixed, self.ratio, self.named = {}, 1.0, {}
        params = [p for n, p in net.named_parameters() if n.startswith("token_confidence.")]
        self.opt = torch.optim.AdamW(params, lr=float(s["lr"]), weight_decay=float(s["weight_decay"]))
        for g in self.opt.param_groups:
            g["base_lr"] = g["lr"]


def lr_factor(step: int, progress: float, s: dict[str, Any]) -> float:
    """Linear warm-up, then cosine from 1 to ``min_lr_factor`` over the run's progress in [0, 1]."""
    warm = int(s.get("warmup_steps", 0))
    if warm and step < warm:
        return (step + 1) / warm
    lo = float(s.get("min_lr_factor", 0.1))
    return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


# ------------------------------------------------------------------------------------------ validation
@torch.no_grad()
def validate(net: MambaGlue, cache: PairCache | None, cfg: dict[str, Any], batch_size: int = 8,
             alpha: float = 0.95) -> dict[str, float]:
    """Validation numbers on held-out pairs: NLL (mean over layers, final layer), final-layer precision and
    recall (mutual matches above the filter threshold, correct = reprojection error < pos_th px),
    regressor BCE / accuracy, and a simulated early exit at ``alpha`` (mean stop layer, precision there)."""
    if cache is None or len(cache) == 0:
        return {}
    was_training = net.training
    net.eval()
    th = net.conf["filter_threshold"]
    L = net.conf["n_layers"]
    sums: dict[str, float] = {}
    count = 0

    def add(key: str, value: float, weight: float = 1.0) -> None:
        sums[key] = sums.get(key, 0.0) + value * weight

    for start in range(0, len(cache), batch_size):
        idx = list(range(start, min(len(cache), start + batch_size)))
        batch = load_batch(cache, idx, cfg)
        data = net_inputs(batch)
        out = net.forward_train(data)
        las = out["log_assignment"]
        b = len(idx)
        loss, per_layer = matcher_loss(las, batch["gt_matches0"], batch["gt_matches1"], 1.0)
        add("nll_mean", float(loss), b)
        add("nll_final", per_layer[-1], b)
        add("nll_first", per_layer[0], b)
        closs, accs = confidence_loss(out["confidence0"], out["confidence1"], las, batch["mask0"], batch["mask1"])
        add("conf_bce", float(closs), b)
        add("conf_acc", sum(accs) / len(accs), b)
        # per pair: matches at the final layer and at the simulated exit layer
        for k in range(b):
            m0 = batch["mask0"][k]
            m1 = batch["mask1"][k]
            n0, n1 = int(m0.sum()), int(m1.sum())
            exit_layer = L - 1
            for li in range(L - 1):
                settled = net.settled_fraction(out["confidence0"][li][k:k + 1, :n0], out["confidence1"][li][k:k + 1, :n1],
                                               li, torch.tensor([n0 + n1]))
                if float(settled) >= alpha:
                    exit_layer = li
                    break
            add("stop_layer", exit_layer + 1)
            gt0 = batch["gt_matches0"][k, :n0]
            num_gt = int((gt0 >= 0).sum())
            for name, li in (("final", L - 1), ("exit", exit_layer)):
                la = las[li][k: k + 1]
                la = torch.cat([la[:, :n0, :n1], la[:, :n0, -1:]], 2)
                la = torch.cat([la, torch.cat([las[li][k: k + 1, -1:, :n1], las[li][k: k + 1, -1:, -1:]], 2)], 1)
                mm0 = filter_matches(la, th)[0][0]
                valid = mm0 >= 0
                i0 = torch.where(valid)[0]
                if len(i0):
                    p0 = batch["keypoints0"][k, i0]
                    p1 = batch["keypoints1"][k, mm0[i0]]
                    err = (batch["proj0_1"][k, i0] - p1.double()).norm(dim=-1)  # NaN (hidden) is never < th
                    correct = err < float(cfg["data"]["pos_th"])
                    add(f"precision_{name}", float(correct.float().mean()))
                    hit = int((gt0[i0] == mm0[i0]).sum())
                else:
                    add(f"precision_{name}", 0.0)
                    hit = 0
                add(f"recall_{name}", hit / max(num_gt, 1))
                add(f"matches_{name}", float(len(i0)))
        count += b
    net.train(was_training)
    return {k: round(v / count, 5) for k, v in sums.items()}


# ------------------------------------------------------------------------------------------ training loop
def _state_path(out: Path, stage: int) -> Path:
    return out / f"stage{stage}_state.pt"


def _save_state(path: Path, net: MambaGlue, opt: MatcherOptimizer, st: dict[str, Any]) -> None:
    _write_atomically(path, lambda tmp: torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), **st}, tmp))


def _append_log(out: Path, stage: int, record: dict[str, Any]) -> None:
    with open(out / f"stage{stage}_log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def matcher_fingerprint(net: MambaGlue) -> str:
    """SHA-256 of the matcher's weights (everything but the confidence regressors): what stage 2 trains on."""
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        if not k.startswith("token_confidence."):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def run_stage(stage: int, cfg: dict[str, Any], out: Path, train_cache: PairCache, val_cache: PairCache | None,
              net: MambaGlue, resume: bool = False, progress: bool = True,
              epoch_cache: Callable[[int], PairCache] | None = None) -> dict[str, Any]:
    """Train one stage until its time budget or step limit; returns its summary. Stage 2 resumes only on the
    matcher its state was trained on (a stage 1 continued since would change it). ``epoch_cache`` (``epoch_caches``):
    the training pairs of each epoch after the first (``train_cache`` is epoch 0's); building one is not counted
    as training time."""
    s = cfg[f"stage{stage}"]
    out.mkdir(parents=True, exist_ok=True)
    if stage == 1:
        for n, p in net.named_parameters():
            p.requires_grad_(not n.startswith("token_confidence."))
        opt: MatcherOptimizer = MatcherOptimizer(net, s)
    else:
        for n, p in net.named_parameters():
            p.requires_grad_(n.startswith("token_confidence."))
        opt = RegressorOptimizer(net, s)
    st: dict[str, Any] = {"step": 0, "epoch": 0, "pos": 0, "elapsed_s": 0.0, "best_val": None, "best_step": None,
                          "history": [], "val_history": []}
    path = _state_path(out, stage)
    matcher = matcher_fingerprint(net) if stage == 2 else None
    if resume and path.is_file():  # (train's check_run_folder compared the configs)
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("matcher", matcher) != matcher:
            raise ValueError(f"{path} trained the regressors of another matcher than the one stage 2 starts from now "
                             "(stage 1 went on since?): run stage 2 again with --overwrite")
        val_now = val_cache.folder.name if val_cache is not None else None
        if "val_cache" in saved and saved["val_cache"] != val_now:  # (states saved before 2026-12-07 do not say)
            raise ValueError(f"{path} picked its best checkpoint on validation pairs {saved['val_cache']}, this run's "
                             f"are {val_now}: a resumed run would compare the two; run the stage again with --overwrite")
        net.load_state_dict(saved.pop("model"))
        opt.load_state_dict(saved.pop("optimizer"))
        saved.pop("config", None)
        st.update(saved)
        log.info("stage %d: resumed at step %d (%.1f min done)", stage, st["step"], st["elapsed_s"] / 60)
    else:  # a fresh stage: an earlier run's log and best file (without a state to resume) must not mix in
        if resume:
            log.info("stage %d: nothing to resume in %s, starting at step 0", stage, out)
        for f in (path, out / f"stage{stage}_log.jsonl", out / f"stage{stage}_best.pt"):
            f.unlink(missing_ok=True)
    st["config"] = resume_fingerprint(cfg, stage)  # saved with the state: what a --resume must not change
    st["val_cache"] = val_cache.folder.name if val_cache is not None else None  # (the pairs best_val was measured on)
    if matcher is not None:
        st["matcher"] = matcher
    budget_s = float(s["max_minutes"]) * 60.0
    max_steps = int(s["max_steps"] or 0)
    bs = int(s["batch_size"])
    steps_per_epoch = math.ceil(len(train_cache) / bs)
    L = net.conf["n_layers"]
    bf16 = training_precision(cfg) == "bf16"
    device_type = next(net.parameters()).device.type
    torch.manual_seed(int(cfg["seed"]) + 1000 * stage + st["step"])

    def progress_of(elapsed: float) -> float:
        p = elapsed / budget_s if budget_s > 0 else 0.0
        return max(p, st["step"] / max_steps) if max_steps else p

    def budget_spent(elapsed: float) -> bool:
        return bool(max_steps and st["step"] >= max_steps) or (budget_s > 0 and elapsed >= budget_s)

    def do_validate() -> dict[str, Any]:
        t = time.perf_counter()
        v = validate(net, val_cache, cfg)
        v["step"] = st["step"]
        v["val_s"] = round(time.perf_counter() - t, 1)
        st["val_history"].append(v)
        _append_log(out, stage, {"val": v})
        key = "nll_mean" if stage == 1 else "conf_bce"
        if v and (st["best_val"] is None or v[key] < st["best_val"]):
            st["best_val"], st["best_step"] = v[key], st["step"]
            _write_atomically(out / f"stage{stage}_best.pt",  # never a truncated best file (stage 2 starts from it)
                              lambda tmp: torch.save({"model": net.state_dict(), "step": st["step"], "val": v}, tmp))
        log.info("stage %d step %d validation: %s", stage, st["step"],
                 {k: v[k] for k in sorted(v) if k in ("nll_mean", "nll_final", "precision_final", "recall_final",
                                                       "conf_bce", "conf_acc", "stop_layer", "precision_exit")})
        return v

    if st["step"] == 0 and not st["val_history"] and val_cache is not None:
        do_validate()  # the starting point (stage 1: the LightGlue warm start)
    net.train()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=max_steps or None, initial=st["step"], desc=f"stage {stage}", unit="step", dynamic_ncols=True)
    t_start = time.perf_counter() - st["elapsed_s"]
    running: list[float] = []
    stop = False
    while not stop:
        if budget_spent(time.perf_counter() - t_start):
            break  # (before building the next epoch's pairs for nothing)
        cache = train_cache
        if epoch_cache is not None and st["epoch"] > 0:
            t_build = time.perf_counter()
            cache = epoch_cache(st["epoch"])
            built_s = time.perf_counter() - t_build
            t_start += built_s  # extraction, as the first cache's, is not training time
            st["epoch_cache_s"] = st.get("epoch_cache_s", 0.0) + built_s
        for pos, idx in iterate_batches(cache, bs, int(cfg["seed"]) + stage, st["epoch"], st["pos"]):
            elapsed = time.perf_counter() - t_start
            if budget_spent(elapsed):
                stop = True
                break
            f = lr_factor(st["step"], progress_of(elapsed), s)
            opt.set_lr_factor(f)
            batch = load_batch(cache, idx, cfg)
            data = net_inputs(batch)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                out_t = net.forward_train(data)  # stage 2: frozen matcher, autograd only tracks the regressors
            if stage == 1:
                loss, per_layer = matcher_loss(out_t["log_assignment"], batch["gt_matches0"], batch["gt_matches1"],
                                               float(s["gamma"]), float(s["nll_balance"]))
                extra = {"nll_first": round(per_layer[0], 4), "nll_final": round(per_layer[-1], 4)}
            else:
                loss, accs = confidence_loss(out_t["confidence0"], out_t["confidence1"], out_t["log_assignment"],
                                             batch["mask0"], batch["mask1"])
                extra = {"acc_first": round(accs[0], 4), "acc_last": round(accs[-1], 4)}
            if not torch.isfinite(loss):
                raise FloatingPointError(f"stage {stage}: non-finite loss at step {st['step']}")
            opt.zero_grad()
            loss.backward()
            params = [p for p in net.parameters() if p.requires_grad]
            gnorm = float(torch.nn.utils.clip_grad_norm_(params, float(s["clip_grad"]))) if s["clip_grad"] else 0.0
            opt.step()
            st["step"] += 1
            st["pos"] = pos
            running.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss):.4f}", lr=f"{f:.2f}", ep=st["epoch"])
            if st["step"] % int(s["log_every"]) == 0:
                rec = {"step": st["step"], "epoch": st["epoch"], "loss": round(sum(running) / len(running), 5),
                       "lr_factor": round(f, 4), "grad_norm": round(gnorm, 4),
                       "time_s": round(time.perf_counter() - t_start, 1), **extra}
                running = []
                st["history"].append(rec)
                _append_log(out, stage, rec)
                if bar is None:
                    log.info("stage %d %s", stage, rec)
            if val_cache is not None and st["step"] % int(s["val_every"]) == 0:
                do_validate()
                net.train()
            if st["step"] % int(s["ckpt_every"]) == 0:
                st["elapsed_s"] = time.perf_counter() - t_start
                _save_state(path, net, opt, st)
        else:
            st["epoch"] += 1
            st["pos"] = 0
    if bar is not None:
        bar.close()
    st["elapsed_s"] = time.perf_counter() - t_start
    if val_cache is not None and (not st["val_history"] or st["val_history"][-1]["step"] != st["step"]):
        do_validate()
    _save_state(path, net, opt, st)
    net.eval()
    summary = {"stage": stage, "steps": st["step"], "epochs": round(st["step"] / steps_per_epoch, 2),
               "precision": "bf16" if bf16 else "fp32",
               "wall_time_s": round(st["elapsed_s"], 1), "batch_size": bs, "best_step": st["best_step"],
               **({"epoch_cache_s": round(st["epoch_cache_s"], 1)} if "epoch_cache_s" in st else {}),
               "validation_start": st["val_history"][0] if st["val_history"] else None,
               "validation_best": next((v for v in st["val_history"] if v["step"] == st["best_step"]), None),
               "validation_last": st["val_history"][-1] if st["val_history"] else None,
               "loss_curve": _curve_summary(st["history"]), "layers": L}
    _write_json(out / f"stage{stage}_summary.json", summary)
    return summary


def _curve_summary(history: list[dict[str, Any]], points: int = 10) -> list[dict[str, Any]]:
    """About ``points`` evenly spaced records of the loss curve."""
    if not history:
        return []
    stride = max(1, len(history) // points)
    picked = history[::stride]
    if picked[-1] is not history[-1]:
        picked.append(history[-1])
    return picked


def load_stage_weights(net: MambaGlue, out: Path, stage: int, which: str = "best") -> str:
    """Load the best (or last) model of a finished stage into ``net``; returns which file was used."""
    best = out / f"stage{stage}_best.pt"
    last = _state_path(out, stage)
    path = best if which == "best" and best.is_file() else last
    if not path.is_file():
        raise FileNotFoundError(f"stage {stage} has no saved model in {out}: run stage {stage} first")
    saved = torch.load(path, map_location="cpu", weights_only=True)["model"]
    own = net.state_dict()
    # stage 2 may train another regressor kind (linear vs deep ablation) on the same stage-1 matcher:
    # confidence heads that do not fit keep their fresh initialisation; the matcher must fit exactly
    for key in [k for k in saved if k.startswith("token_confidence.") and (k not in own or own[k].shape != saved[k].shape)]:
        del saved[key]
    for key in own:
        if key.startswith("token_confidence.") and key not in saved:
            saved[key] = own[key]
    net.load_state_dict(saved, strict=True)
    return path.name


def check_released_options(ckpt: dict[str, Any], conf: dict[str, Any], keys: Sequence[str], path: str) -> None:
    """ValueError naming the options among ``keys`` in which a released checkpoint's network differs from ``conf``
    (a network's or a config's ``model`` section: keys it does not set are not compared)."""
    saved = ckpt["config"]
    differ = {k: (saved.get(k), conf[k]) for k in keys if k in conf and saved.get(k, conf[k]) != conf[k]}
    if differ:
        raise ValueError(f"{path} has other network options than the config (checkpoint, config): {differ}")


def _load_released_matcher(net: MambaGlue, ckpt: dict[str, Any], path: str) -> None:
    """The matcher of a released checkpoint (``weights.load_checkpoint``, read from ``path``) into ``net``: for
    stage 2 alone, or as the start of a continued stage 1 (``stage1.init``). fp16 values widen exactly, the
    regressors stay fresh."""
    check_released_options(ckpt, net.conf, CHECKPOINT_OPTIONS, path)
    own = net.state_dict()
    saved = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("token_confidence.")}
    saved.update({k: v for k, v in own.items() if k.startswith("token_confidence.")})
    net.load_state_dict(saved, strict=True)


def continued_provenance(path: str, ckpt: dict[str, Any]) -> dict[str, Any]:
    """What a continued stage 1 records of the released checkpoint it starts from (``stage1.init``): its path and
    sha256, and that file's own training from its ``meta`` (a file written by ``training.release`` keeps its matcher's
    data in ``matcher_data``, its regressor's in ``data``)."""
    prior = ckpt.get("meta", {})
    keep = ("init", "data", "matcher_data", "note", "steps", "command", "validation", "matcher")
    return {"path": str(path), "sha256": W.sha256_of(path),
            **{k: prior[k] for k in keep if k in prior}, "stage1_config": (prior.get("config") or {}).get("stage1")}


def export(net: MambaGlue, cfg: dict[str, Any], out: Path, meta: dict[str, Any]) -> Path:
    """The release checkpoint (fp16) in the run folder, and its copy at ``cfg['export']`` if set."""
    conf = {**net.conf, "early_exit": True, "pruning": True, "alpha": MambaGlue.default_conf["alpha"],
            "mamba_ffn_rank": MambaGlue.default_conf["mamba_ffn_rank"]}  # the inference defaults, not training's
    path = out / f"mambaglue_{cfg['features']}.pt"
    _write_atomically(path, lambda tmp: W.save_checkpoint(tmp, net, cfg["features"], conf, meta=meta, half=True))
    if cfg.get("export"):
        dst = Path(cfg["export"])
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.name.endswith(".xz"):  # the release file compressed (see weights.packaged_checkpoint; xz takes seconds)
            _write_atomically(dst, lambda tmp: W.save_checkpoint(tmp, net, cfg["features"], conf, meta=meta, half=True))
        else:
            _write_atomically(dst, lambda tmp: shutil.copyfile(path, tmp))
    return path


def train(cfg: dict[str, Any], stage: str = "both", resume: bool = False, out_dir: str | None = None,
          progress: bool = True, command: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Run stage 1, stage 2 or both for a config (see ``load_config``); returns the summary. A stage whose state is
    in the run folder needs ``resume`` (same config but its budget) or ``overwrite`` (``check_run_folder``)."""
    if int(cfg.get("threads") or 0) > 0:
        torch.set_num_threads(int(cfg["threads"]))
    continued = str(cfg["stage1"].get("init") or "lightglue")  # stage 1's start: the LightGlue warm start, or a file
    if stage != "2" and cfg["stage2"]["init"] not in ("best", "last"):
        raise ValueError(f"stage2.init names a released checkpoint ({cfg['stage2']['init']}), whose matcher would "
                         f"replace what stage 1 trains: run stage 2 alone (--stage 2)")
    continued_from = None  # the released checkpoint stage 1 continues (stage1.init): read only when stage 1 runs
    if continued != "lightglue" and stage != "2":
        continued_from = W.load_checkpoint(continued, features=cfg["features"])
        # refused before minutes of feature caching (_load_released_matcher checks the shape options too, on the net)
        check_released_options(continued_from, cfg["model"], ARCHITECTURE_OPTIONS, continued)
    out = Path(out_dir or cfg["out_dir"])
    stages = {"1": [1], "2": [2], "both": [1, 2]}[stage]
    check_run_folder(cfg, out, stages, resume, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.perf_counter()
    train_cache, val_cache = make_caches(cfg, progress=progress)
    cache_s = time.perf_counter() - t0
    net = build_model(cfg)
    summary_path = out / "summary.json"
    summary: dict[str, Any] = _read_json(summary_path) if summary_path.is_file() else {}
    if not resume:  # a stage run afresh: what the folder said of it and of the stages after it is stale
        for key in [f"stage{s}" for s in range(stages[0], 3)] + ["export"]:
            summary.pop(key, None)
    summary.update({"features": cfg["features"], "config": cfg, "hardware": hardware_string(cfg),
                    "train_pairs": len(train_cache), "val_pairs": len(val_cache) if val_cache else 0,
                    "cache_s": round(cache_s, 1), "train_cache": str(train_cache.folder),
                    "val_cache": str(val_cache.folder) if val_cache else None})
    commands = summary.setdefault("commands", [])
    if command:
        commands.append(command)
    if stage in ("1", "both"):
        # What stage 1 starts from, recorded when it starts (the file may change before the export reads it): a
        # stage starting afresh (run_stage resumes only with --resume and a saved state) drops an earlier record first.
        if not (resume and _state_path(out, 1).is_file()):
            summary.pop("stage1_init", None)
        if continued_from is not None:  # a resumed state replaces these weights with its own
            _load_released_matcher(net, continued_from, continued)
            summary.setdefault("stage1_init", continued_provenance(continued, continued_from))
        _write_json(summary_path, summary)
        summary["stage1"] = run_stage(1, cfg, out, train_cache, val_cache, net, resume, progress,
                                      epoch_caches(cfg, progress))
        _write_json(summary_path, summary)
    if stage in ("2", "both"):
        init = cfg["stage2"]["init"]
        released = None  # the checkpoint whose matcher stage 2 starts from, when it is a released one
        if init in ("best", "last"):
            used = load_stage_weights(net, out, 1, init)
        else:
            released, used = W.load_checkpoint(init, features=cfg["features"]), str(init)
            _load_released_matcher(net, released, used)
        matcher_before = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("token_confidence.")}
        summary["stage2"] = run_stage(2, cfg, out, train_cache, val_cache, net, resume, progress,
                                      epoch_caches(cfg, progress))
        summary["stage2"]["matcher_from"] = used
        summary["stage2"]["exported"] = load_stage_weights(net, out, 2, "best")
        changed = [k for k, v in net.state_dict().items() if k in matcher_before and not torch.equal(v, matcher_before[k])]
        if changed:
            raise RuntimeError(f"stage 2 changed matcher weights: {changed[:3]}")
        # the fp16 release checkpoint, checked by loading it back the way users do
        s1, s2 = summary.get("stage1") or {}, summary["stage2"]
        matcher_meta = None if released is None else released.get("meta", {})
        # a continued stage 1 of this folder (its record), unless stage 2 runs on another released matcher
        continuation = summary.get("stage1_init") if released is None else None
        if matcher_meta is not None:  # the matcher is a released one: its stage 1 is that checkpoint's, carried over
            s1 = {"steps": matcher_meta.get("steps", {}).get("stage1"),
                  "precision": (matcher_meta.get("precision") or {}).get("stage1", "fp32"),
                  "batch_size": matcher_meta.get("batch_size", {}).get("stage1"),
                  "wall_time_s": matcher_meta.get("wall_time_s", {}).get("stage1"),
                  "validation_start": matcher_meta.get("validation", {}).get("stage1_start"),
                  "validation_best": matcher_meta.get("validation", {}).get("stage1_best")}
        d = cfg["data"]
        meta = {
            "data": {"images": d["images"], "holdout_every": d["holdout_every"], "train_pairs": len(train_cache),
                     "val_pairs": len(val_cache) if val_cache else 0, "max_keypoints": d["max_keypoints"],
                     "difficulty": d["difficulty"], "size": d["size"], "photometric": d["photometric"],
                     "video_fraction": d["video_fraction"], "render_fraction": d["render_fraction"],
                     "pos_th": d["pos_th"], "neg_th": d["neg_th"],
                     **({} if d.get("pair_seed") is None else {"pair_seed": int(d["pair_seed"])}),
                     **({"fresh_pairs_each_epoch": True} if d.get("fresh_pairs_each_epoch") else {})},
            "init": (f"matcher of {used}, regressors fresh" if matcher_meta is not None
                     else f"matcher of {continuation['path']} (stage 1 continued it), regressors fresh" if continuation
                     else f"LightGlue weights of {cfg['features']} (warm start)"),
            "steps": {"stage1": s1.get("steps"), "stage2": s2["steps"]},
            "batch_size": {"stage1": s1.get("batch_size"), "stage2": s2["batch_size"]},
            "wall_time_s": {"stage1": s1.get("wall_time_s"), "stage2": s2["wall_time_s"], "cache": round(cache_s, 1)},
            "hardware": hardware_string(cfg),
            "precision": {"stage1": s1.get("precision", "fp32"), "stage2": s2.get("precision", "fp32")},
            "command": summary.get("commands", []),
            "validation": {"stage1_start": s1.get("validation_start"), "stage1_best": s1.get("validation_best"),
                           "stage2_last": s2.get("validation_last")},
            "config": {k: cfg[k] for k in ("model", "stage1", "stage2")},
        }
        if continuation:  # what stage 1 continued (as recorded when it started): that file's own training
            meta["continued_from"] = continuation
        if matcher_meta is not None:  # where the frozen matcher came from: its data and commands
            meta["matcher"] = {"from": used, "init": matcher_meta.get("init"), "data": matcher_meta.get("data"),
                               "command": matcher_meta.get("command"),
                               "stage1_config": (matcher_meta.get("config") or {}).get("stage1"),
                               **{k: matcher_meta[k] for k in ("matcher_data", "note", "matcher") if k in matcher_meta}}
        path = export(net, cfg, out, meta)
        reloaded, _ = build_network(cfg["features"], str(path), early_exit=False, pruning=False, mamba_ffn_rank=0)
        summary["export"] = {"path": str(path), "copied_to": cfg.get("export"), "size_mb": round(path.stat().st_size / 2**20, 2),
                             "validation_fp16": validate(reloaded, val_cache, cfg)}
        _write_json(summary_path, summary)
        log.info("wrote %s (%.1f MB)", path, path.stat().st_size / 2**20)
    _write_json(summary_path, summary)
    return summary


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="training config (YAML), e.g. config/train_xfeat.yaml")
    p.add_argument("--stage", default="both", choices=("1", "2", "both"))
    p.add_argument("--max-minutes", type=float, default=None,
                   help="time budget of each stage run now (total over resumes); overrides the config")
    p.add_argument("--max-steps", type=int, default=None, help="step limit of each stage run now (0 = none)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the run folder's saved state (the same config; only the budget may change)")
    p.add_argument("--overwrite", action="store_true",
                   help="run a stage again whose saved state is in the run folder (deletes its state, log and best file)")
    p.add_argument("--out", default=None, help="run folder (default: out_dir of the config)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_cli(args: argparse.Namespace) -> int:
    over: dict[str, Any] = {}
    for key, val in (("max_minutes", args.max_minutes), ("max_steps", args.max_steps)):
        if val is not None:
            over.setdefault("stage1", {})[key] = val
            over.setdefault("stage2", {})[key] = val
    cfg = load_config(args.config, **over)
    command = "mambaglue " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else None
    summary = train(cfg, args.stage, args.resume, args.out, progress=not args.no_progress, command=command,
                    overwrite=args.overwrite)
    for stage in ("stage1", "stage2"):
        if stage in summary:
            s = summary[stage]
            print(f"{stage}: {s['steps']} steps ({s['epochs']} epochs) in {s['wall_time_s'] / 60:.1f} min; "
                  f"validation start {_short(s['validation_start'])} -> last {_short(s['validation_last'])}")
    if "export" in summary:
        e = summary["export"]
        print(f"checkpoint: {e['path']} ({e['size_mb']} MB)" + (f", copied to {e['copied_to']}" if e["copied_to"] else ""))
    return 0


def _short(v: dict[str, Any] | None) -> str:
    if not v:
        return "-"
    keys = ("nll_mean", "precision_final", "recall_final", "conf_bce", "stop_layer", "precision_exit")
    return "{" + ", ".join(f"{k}={v[k]:.4g}" for k in keys if k in v) + "}"
