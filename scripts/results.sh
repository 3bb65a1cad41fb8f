#!/usr/bin/env bash
# Every command behind the result tables (README headline, docs/results.md), in order. Each step is one of the documented CLI
# commands; run a single step with `bash scripts/results.sh STEP` (steps below), or all with `all`.
# Needs ../shared/data or $MAMBAGLUE_DATA (photos, EuRoC, KITTI). Training steps take tens of minutes each on 2 cores.
# Bash reads a script as it runs: to edit this file while a long step runs, run the step from a copy under the repo
# (e.g. `cp scripts/results.sh out/run_a.sh; bash out/run_a.sh STEP`), one copy per running step.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
M="${MAMBAGLUE_VENV:-$ROOT/.venv}/bin/mambaglue"
PY="${MAMBAGLUE_VENV:-$ROOT/.venv}/bin/python"
DATA="${MAMBAGLUE_DATA:-$ROOT/../shared/data}"
export MAMBAGLUE_DATA="$DATA"  # the training configs' $MAMBAGLUE_DATA (mambaglue_ros/paths.py) is this same folder
VAL="$DATA/photos/val"
ALPHAS=0.8,0.85,0.9,0.95,1.0,none
# The packaged XFeat file was the version-1 network until 2026-12-05 (commit b3789ae); xfeat_v1_weights puts it here.
# Steps written before then compare against "mambaglue" (the packaged file): re-run now, they compare the version-2 file.
XFEAT_V1=out/weights/mambaglue_xfeat_v1.pt

train_xfeat() {   # shipped mambaglue_ros/weights/mambaglue_xfeat.pt since 2026-12-05: the version-2 network, 3000 matcher steps
                  # on 3000 homography pairs + the 600-step video-aware regressor (xfeat_long3k v2), then its release file
  train_tagged xfeat_long3k v2
  "$PY" -m mambaglue_ros.training.release --matcher-run out/ablation_xfeat_long3k_v2 --regressor-run out/ablation_xfeat_long3k_v2_reg600 \
    --out mambaglue_ros/weights/mambaglue_xfeat.pt --note "version-2 network, 3000 + 600 steps (bash scripts/results.sh train_xfeat)"
}
train_xfeat_v1() {  # the version-1 XFeat file shipped until 2026-12-05 (xfeat_v1_weights restores it; model card for the runs)
  "$M" train --config config/train_xfeat_v1.yaml --stage both --no-progress
}
xfeat_v1_weights() {  # that version-1 file, from git history: steps dated before 2026-12-05 that say "mambaglue" ran with it
  mkdir -p out/weights
  [ -f "$XFEAT_V1" ] || git show b3789ae:mambaglue_ros/weights/mambaglue_xfeat.pt > "$XFEAT_V1" || {
    rm -f "$XFEAT_V1"  # not an empty file that the next call would take for the weights
    echo "xfeat_v1_weights: commit b3789ae is not in this clone's history (a shallow clone? git fetch --unshallow)" >&2
    exit 1
  }
}
train_aliked() {  # shipped mambaglue_ros/weights/mambaglue_aliked.pt
  "$M" train --config config/train_aliked.yaml --stage 1 --max-minutes 60 --no-progress
  "$M" train --config config/train_aliked.yaml --stage 2 --no-progress
}
ablations() {     # version-1 study: XFeat, same data / steps / learning rates as train_xfeat (v1). Its attention-only
                  # config was config/ablations/xfeat_attention.yaml at commit 1db350c (that file is now the v2 control)
  "$M" train --config config/ablations/xfeat_attention.yaml --stage both --no-progress
  "$M" train --config config/ablations/xfeat_mamba.yaml --stage both --no-progress
  mkdir -p out/ablation_xfeat_linear && cp out/train_xfeat/stage1_best.pt out/ablation_xfeat_linear/
  "$M" train --config config/ablations/xfeat_linear.yaml --stage 2 --no-progress
}
eval_xfeat() {    # the README headline and the alpha sweep (plots): the shipped network, the released LighterGlue, the shipped
                  # network's equal-budget attention-only control (xfeat_long3k attention) and the version-1 file; bf16 rows
  xfeat_v1_weights
  local CTRL=out/ablation_xfeat_long3k_attention_reg600/mambaglue_xfeat.pt
  "$M" eval-homography --images "$VAL" --pairs 200 --seed 0 --features xfeat \
    --methods "mambaglue,lightglue,mambaglue@$CTRL,mambaglue@$XFEAT_V1,mambaglue+bf16,lightglue+bf16" \
    --alphas "$ALPHAS" --sweep-methods "mambaglue,lightglue,mambaglue@$CTRL" \
    --json out/eval_xfeat.json --plots out/plots --threads 1 --no-progress
  mkdir -p docs/results && cp out/plots/alpha_sweep_xfeat.png docs/results/alpha_sweep_xfeat_v2.png
}
eval_xfeat_v1() {  # what eval_xfeat was while the version-1 file shipped: its ablation networks (ablations) and alpha sweeps
  xfeat_v1_weights
  "$M" eval-homography --images "$VAL" --pairs 200 --seed 0 --features xfeat \
    --methods mambaglue@$XFEAT_V1,lightglue,mambaglue@out/ablation_xfeat_attention/mambaglue_xfeat.pt,mambaglue@out/ablation_xfeat_mamba/mambaglue_xfeat.pt,mambaglue@out/ablation_xfeat_linear/mambaglue_xfeat.pt,mambaglue@$XFEAT_V1+bf16,lightglue+bf16 \
    --alphas "$ALPHAS" --sweep-methods mambaglue@$XFEAT_V1,lightglue,mambaglue@out/ablation_xfeat_linear/mambaglue_xfeat.pt \
    --json out/eval_xfeat_v1.json --plots out/plots_v1 --threads 1 --no-progress
}
design_xfeat() {  # issue 11: the v2 design and its attention-only control, same data and step budget
  "$M" train --config config/train_xfeat.yaml --stage both --no-progress
  "$M" train --config config/ablations/xfeat_attention.yaml --stage both --no-progress
}
eval_design_xfeat() {  # v2 vs control vs released LighterGlue vs the shipped v1 weights; pruning off; alpha sweep
  local V2=${1:-out/train_xfeat_v2}/mambaglue_xfeat.pt CTRL=${2:-out/ablation_xfeat_attention}/mambaglue_xfeat.pt
  local TAG=${3:-design_xfeat}
  "$M" eval-homography --images "$VAL" --pairs 200 --seed 0 --features xfeat \
    --methods "mambaglue@$V2,mambaglue@$V2+noprune,mambaglue@$CTRL,lightglue,mambaglue" \
    --alphas 0.9,0.95,1.0,none --sweep-methods "mambaglue@$V2,mambaglue@$CTRL,lightglue" \
    --json "out/eval_$TAG.json" --plots "out/plots_$TAG" --threads 1 --no-progress
  "$M" eval-pose --features xfeat --methods "mambaglue@$V2,mambaglue@$CTRL,lightglue" \
    --json "out/eval_pose_$TAG.json" --no-progress
  bench_easy "$V2" "$TAG"
}
compressed_decode() {  # 2026-12-07 (session 53): JPEG input at 30 Hz, decoded by the stage that takes the frame (the
                       # node's way since then) against decoded in the callback for every frame (before), one run
  "$PY" benchmarks/node_rate.py --configs mono:xfeat,stereo:xfeat --transport compressed --compressed-decode both \
    --input-hz 30 --seconds 20 --json out/node_rate_compressed_decode.json
}
cpu_speed() {  # 2026-12-07: the cross attention's denormal floor and the two-way gated CPU kernel; the shipped files
               # against our LightGlue on the easy pair (adaptive and full depth); the node's rate with the floor off / on
  "$PY" benchmarks/denormals.py --plot docs/results/denormals.png --json out/denormals.json
  "$PY" benchmarks/denormals.py --configs "" --train-configs xfeat:512:8,aliked:512:4 --json out/denormals_training.json
  git show 99e1261:mambaglue_ros/models/selective_scan_cpu.cpp > out/scan_before_2026-12-07.cpp
  "$PY" benchmarks/kernel_ab.py --old-source out/scan_before_2026-12-07.cpp --features xfeat --keypoints 1024 --repeats 40
  "$PY" benchmarks/kernel_ab.py --old-source out/scan_before_2026-12-07.cpp --features xfeat --keypoints 512 --repeats 60
  "$PY" benchmarks/kernel_ab.py --old-source out/scan_before_2026-12-07.cpp --features aliked --keypoints 1024 --repeats 12
  for f in xfeat aliked; do
    "$M" bench --json "out/bench/bench_shipped_${f}_easy.json" --features $f --threads 1 --pair easy --keypoints 512,1024 \
      --extractors none --methods mambaglue_adaptive,lightglue_adaptive,mambaglue,lightglue
  done
  for round in 1 2; do
    "$PY" benchmarks/node_rate.py --configs mono:xfeat,stereo:xfeat --denormal-floor both --seconds 20 --json out/node_rate_floor_$round.json
  done
}
headline_time() {  # 2026-12-07: the README headline's rows again at alpha 0.95 after the CPU speed changes (cpu_speed):
                   # the same accuracy is expected (the floor changes no float32 sum), the times are new
  for f in xfeat aliked; do
    "$M" eval-homography --images "$VAL" --pairs 200 --seed 0 --features $f --methods mambaglue,lightglue --alphas 0.95 \
      --json "out/eval_headline_${f}.json" --threads 1 --no-progress
  done
}
compare_headline() {  # paired bootstrap intervals (compare) of MambaGlue - LightGlue in headline_time's runs
  local f
  for f in xfeat aliked; do
    "$M" compare "out/eval_headline_${f}.json" --methods mambaglue,lightglue --json "out/compare_headline_${f}.json"
  done
}
bench_easy() {  # WEIGHTS TAG [FEATURES]: adaptive and full depth against our LightGlue on the easy (video-like) pair
  "$M" bench --json "out/bench/bench_${2}_easy.json" --features "${3:-xfeat}" --threads 1 --pair easy --keypoints 512,1024 \
    --extractors none --weights "$1" --methods mambaglue_adaptive,lightglue_adaptive,mambaglue,lightglue
}
train_long() {  # CFG OUT [REGRESSOR_STEPS]: 1000 matcher + 200 (or REGRESSOR_STEPS) regressor steps, each stage resumed
  "$M" train --config "$1" --stage 1 --max-steps 1000 --out "$2" --no-progress $([ -f "$2/stage1_state.pt" ] && echo --resume)
  "$M" train --config "$1" --stage 2 --max-steps "${3:-200}" --out "$2" --no-progress $([ -f "$2/stage2_state.pt" ] && echo --resume)
  touch "$2/DONE"  # both stages finished (eval steps pick up only finished runs)
}
design_xfeat_long() {  # issue 11's longer budget: v2 and its attention-only control (re-running continues them)
  train_long config/train_xfeat.yaml out/train_xfeat_v2_long
  train_long config/ablations/xfeat_attention.yaml out/ablation_xfeat_attention_long
}
ablations_xfeat_long() {  # issue 11's one-factor ablations of v2, and the v1 design, at the budget of the *_reg600 runs
  local cfg
  for cfg in config/ablations/xfeat_v2_score_order.yaml config/ablations/xfeat_v2_forward_only.yaml \
             config/ablations/xfeat_v2_concat.yaml config/ablations/xfeat_v1design.yaml; do
    train_long "$cfg" "out/ablation_$(basename "$cfg" .yaml)_long" 600
  done
}
eval_design_xfeat_long() {
  eval_design_xfeat out/train_xfeat_v2_long out/ablation_xfeat_attention_long design_xfeat_long
}
regressor_xfeat_long() {  # issue 11: both longer runs' deep regressors again, 600 steps (the shipped model had 575)
  local run                # instead of 200, on the same frozen stage-1 matchers
  for run in train_xfeat_v2_long:config/train_xfeat.yaml ablation_xfeat_attention_long:config/ablations/xfeat_attention.yaml; do
    mkdir -p "out/${run%%:*}_reg600" && cp "out/${run%%:*}/stage1_best.pt" "out/${run%%:*}_reg600/"
    "$M" train --config "${run#*:}" --stage 2 --max-steps 600 --out "out/${run%%:*}_reg600" --no-progress
  done
}
eval_regressor_xfeat_long() {  # the 600-step regressors (full depth is the frozen matcher's: eval_design_xfeat_long)
  local V2=out/train_xfeat_v2_long_reg600/mambaglue_xfeat.pt CTRL=out/ablation_xfeat_attention_long_reg600/mambaglue_xfeat.pt
  "$M" eval-homography --images "$VAL" --pairs 200 --seed 0 --features xfeat --methods "mambaglue@$V2,mambaglue@$CTRL" \
    --alphas 0.9,0.95,1.0 --sweep-methods "mambaglue@$V2,mambaglue@$CTRL" \
    --json out/eval_design_xfeat_long_reg600.json --threads 1 --no-progress
  "$M" eval-pose --features xfeat --methods "mambaglue@$V2,mambaglue@$CTRL" --json out/eval_pose_design_xfeat_long_reg600.json \
    --no-progress
  "$PY" benchmarks/regressor_calibration.py --images "$VAL" --pairs 30 --json out/regressor_calibration_long.json \
    --methods "mambaglue,lightglue,mambaglue@out/train_xfeat_v2_long/mambaglue_xfeat.pt,mambaglue@out/ablation_xfeat_attention_long/mambaglue_xfeat.pt,mambaglue@$V2,mambaglue@$CTRL"
  bench_easy "$V2" design_xfeat_long_reg600
}
train_regressor() {  # FEATURES: a 600-step, video-aware regressor on the shipped matcher (stage 2 only, resumable)
  "$M" train --config "config/train_${1}_regressor.yaml" --stage 2 --no-progress \
    $([ -f "out/train_${1}_regressor/stage2_state.pt" ] && echo --resume)
}
eval_regressor() {  # FEATURES: the new regressor against the shipped one and LightGlue: homographies (alpha sweep of the
                    # new one), relative pose, what the regressors predict, the easy pair
  local NEW="out/train_${1}_regressor/mambaglue_${1}.pt"
  "$M" eval-homography --images "$VAL" --pairs 200 --seed 0 --features "$1" --methods "mambaglue,mambaglue@$NEW,lightglue" \
    --alphas 0.9,0.95,1.0,none --sweep-methods "mambaglue@$NEW" --json "out/eval_${1}_regressor.json" \
    --plots "out/plots_${1}_regressor" --threads 1 --no-progress
  "$M" eval-pose --features "$1" --methods "mambaglue,mambaglue@$NEW,lightglue" --json "out/eval_pose_${1}_regressor.json" \
    --no-progress
  "$PY" benchmarks/regressor_calibration.py --images "$VAL" --pairs 30 --features "$1" --kinds homography,video,easy \
    --methods "mambaglue,lightglue,mambaglue@$NEW" --json "out/regressor_calibration_${1}.json"
  bench_easy "$NEW" "${1}_regressor" "$1"
}
regressor_aliked() { train_regressor aliked; }      # issue 11: the shipped ALIKED file's regressor (config/train_aliked_regressor.yaml)
eval_regressor_aliked() { eval_regressor aliked; }
regressor_xfeat() { xfeat_v1_weights; train_regressor xfeat; }  # the same for the v1 XFeat file (config/train_xfeat_regressor.yaml): changed nothing
eval_regressor_xfeat() { eval_regressor xfeat; }
train_control() {  # STAGE1_CONFIG STAGE2_CONFIG OUT: an attention-only control's matcher, then its regressor on the frozen
                   # matcher (in OUT_reg600, from the matcher's best checkpoint); each stage resumed when its state exists
  "$M" train --config "$1" --stage 1 --no-progress $([ -f "$3/stage1_state.pt" ] && echo --resume)
  mkdir -p "$3_reg600" && cp "$3/stage1_best.pt" "$3_reg600/"
  "$M" train --config "$2" --stage 2 --no-progress $([ -f "$3_reg600/stage2_state.pt" ] && echo --resume)
}
aliked_control() {  # issue 11: the ALIKED attention-only control: the shipped matcher's stage-1 budget (418 steps, same
                    # data), then the shipped regressor's recipe (600 video-aware steps)
  train_control config/ablations/aliked_attention.yaml config/ablations/aliked_attention_regressor.yaml \
    out/ablation_aliked_attention
}
xfeat_v1_control() {  # issue 11: the control of the shipped v1 XFeat matcher (837 steps, its data), then the regressor
                      # recipe of regressor_xfeat
  train_control config/ablations/xfeat_v1_attention.yaml config/ablations/xfeat_v1_attention_regressor.yaml \
    out/ablation_xfeat_v1_attention
}
eval_xfeat_v1_control() {  # the shipped XFeat matcher with the video-aware regressor (regressor_xfeat) against its
                           # control with the same regressor recipe (xfeat_v1_control), LighterGlue and the shipped
                           # file; alpha 0.95 and full depth, one run; relative pose
  local NEW=out/train_xfeat_regressor/mambaglue_xfeat.pt CTRL=out/ablation_xfeat_v1_attention_reg600/mambaglue_xfeat.pt
  "$M" eval-homography --images "$VAL" --pairs 200 --seed 0 --features xfeat --methods "mambaglue,mambaglue@$NEW,mambaglue@$CTRL,lightglue" \
    --alphas none --json out/eval_xfeat_v1_control.json --threads 1 --no-progress
  "$M" eval-pose --features xfeat --methods "mambaglue@$NEW,mambaglue@$CTRL,lightglue" --json out/eval_pose_xfeat_v1_control.json \
    --no-progress
}
aliked_control_fulldepth() {  # the control's stage-1 matcher as a checkpoint, for full-depth comparisons before its stage 2
                              # ends (one regressor step: the regressors are not used at full depth)
  mkdir -p out/ablation_aliked_attention_fulldepth
  cp out/ablation_aliked_attention/stage1_best.pt out/ablation_aliked_attention_fulldepth/
  "$M" train --config config/ablations/aliked_attention.yaml --stage 2 --max-steps 1 --out out/ablation_aliked_attention_fulldepth \
    --no-progress
}
aliked_v2() {  # issue 11: the version-2 network for ALIKED with the control's budget and data (418 + 600 steps)
  train_control config/ablations/aliked_v2.yaml config/ablations/aliked_v2_regressor.yaml out/ablation_aliked_v2
}
eval_against_shipped() {  # FEATURES WEIGHTS TAG: WEIGHTS against the shipped network and the released LightGlue on the
                          # seeded 200 pairs: the default alpha (0.95) and full depth; relative pose; easy pair
  "$M" eval-homography --images "$VAL" --pairs 200 --seed 0 --features "$1" --methods "mambaglue@$2,mambaglue,lightglue" \
    --alphas none --json "out/eval_$3.json" --threads 1 --no-progress
  "$M" eval-pose --features "$1" --methods "mambaglue@$2,mambaglue,lightglue" --json "out/eval_pose_$3.json" --no-progress
  bench_easy "$2" "$3" "$1"
}
eval_aliked_v2() {  # on the pairs and keypoints of eval_aliked_control(_fulldepth)
  eval_against_shipped aliked out/ablation_aliked_v2_reg600/mambaglue_aliked.pt aliked_v2
}
xfeat_v1budget_v2() {  # issue 11: the version-2 network for XFeat with the shipped v1 matcher's data and steps and the
                       # control's regressor recipe (837 + 600 steps)
  train_control config/ablations/xfeat_v1budget_v2.yaml config/ablations/xfeat_v1budget_v2_regressor.yaml \
    out/ablation_xfeat_v1budget_v2
}
eval_xfeat_v1budget_v2() {  # on the pairs and keypoints of eval_xfeat_v1_control
  eval_against_shipped xfeat out/ablation_xfeat_v1budget_v2_reg600/mambaglue_xfeat.pt xfeat_v1budget_v2
}
xfeat_seed() {  # SEED [TAG...]: issue 11, xfeat_v1budget_v2 and xfeat_v1_control trained again with another seed (837 + 600
               # steps; the seed picks other pairs, initialisation and order); v2 and attention, or the two tags side by side
  local seed=$1
  shift
  [ $# -gt 0 ] || set -- v2 attention
  train_tagged "xfeat_seed$seed" "$@"
}
xfeat_seed1() { xfeat_seed 1 "$@"; }  # [TAG...]: the second seed (2026-12-07)
xfeat_seed2() { xfeat_seed 2 "$@"; }  # [TAG...]: the third seed
eval_xfeat_pair() {  # PREFIX [TAG...]: each network out/ablation_PREFIX_TAG_reg600 (v2, attention) at alpha 0.95 and full
                     # depth on the pairs and keypoints of eval_xfeat_v1budget_v2, with the shipped file and LighterGlue
                     # beside the control; relative pose. One run per network (side by side on two cores);
                     # compare_xfeat_pair pairs them up
  local prefix=$1 tag net beside
  shift
  for tag in ${@:-v2 attention}; do
    net=mambaglue@out/ablation_${prefix}_${tag}_reg600/mambaglue_xfeat.pt
    beside=""  # the references, evaluated once: beside the control
    [ "$tag" = attention ] && beside=",lightglue"
    "$M" eval-homography --images "$VAL" --pairs 200 --seed 0 --features xfeat \
      --methods "$net,$net+fulldepth${beside:+,mambaglue$beside}" --json "out/eval_${prefix}_${tag}.json" \
      --threads 1 --no-progress
    "$M" eval-pose --features xfeat --methods "$net$beside" --json "out/eval_pose_${prefix}_${tag}.json" \
      --threads 1 --no-progress
  done
}
eval_xfeat_seed() { local seed=$1; shift; eval_xfeat_pair "xfeat_seed$seed" "$@"; }  # SEED [TAG...]: that seed's runs
eval_xfeat_seed1() { eval_xfeat_seed 1 "$@"; }  # [TAG...]
eval_xfeat_seed2() { eval_xfeat_seed 2 "$@"; }  # [TAG...]
compare_xfeat_pair() {  # PREFIX: paired bootstrap intervals of eval_xfeat_pair PREFIX's v2 - control: alpha 0.95, full
                        # depth, relative pose
  local prefix=$1
  local V2=mambaglue@out/ablation_${prefix}_v2_reg600/mambaglue_xfeat.pt
  local CTRL=mambaglue@out/ablation_${prefix}_attention_reg600/mambaglue_xfeat.pt
  local H="out/eval_${prefix}_v2.json out/eval_${prefix}_attention.json"
  "$M" compare $H --methods "$V2,$CTRL" --json "out/compare_${prefix}.json"
  "$M" compare $H --methods "$V2+fulldepth,$CTRL+fulldepth" --json "out/compare_${prefix}_fulldepth.json"
  "$M" compare "out/eval_pose_${prefix}_v2.json" "out/eval_pose_${prefix}_attention.json" \
    --methods "$V2,$CTRL" --json "out/compare_pose_${prefix}.json"
}
compare_xfeat_seed() { compare_xfeat_pair "xfeat_seed$1"; }  # SEED
compare_xfeat_seed1() { compare_xfeat_seed 1; }
compare_xfeat_seed2() { compare_xfeat_seed 2; }
seeds_xfeat() {  # v2 - control over the seeds of the 837 + 600-step XFeat comparison: each seed's difference, their mean,
                 # spread and a t interval over seeds (the seed, not the pairs, as the unit). Seeds 1 and 2 from
                 # compare_xfeat_seed's files; seed 0's result files are not kept, so its differences are the rounded
                 # ones of docs/results.md (eval_xfeat_v1budget_v2 against eval_xfeat_v1_control, 2026-12-04/05)
  "$PY" - <<'PY'
import json
import numpy as np
from scipy import stats
seed0 = {"alpha 0.95": {"precision": 0.809 - 0.804, "auc@3px": 0.537 - 0.523},
         "full depth": {"precision": 0.823 - 0.820, "auc@3px": 0.540 - 0.533}}
for depth, suffix in (("alpha 0.95", ""), ("full depth", "_fulldepth")):
    for metric in ("precision", "auc@3px"):
        d = [seed0[depth][metric]]
        for seed in (1, 2):
            sets = json.load(open(f"out/compare_xfeat_seed{seed}{suffix}.json"))["sets"]["homography"]["methods"]
            d.append(next(iter(sets.values()))[metric]["diff"])
        d = np.array(d)
        mean, sd = d.mean(), d.std(ddof=1)
        half = stats.t.ppf(0.975, len(d) - 1) * sd / np.sqrt(len(d))
        print(f"{depth:10s} {metric:9s} v2 - control by seed {' '.join(f'{x:+.4f}' for x in d)}: mean {mean:+.4f}, "
              f"sd {sd:.4f}, 95 % t interval over seeds [{mean - half:+.4f}, {mean + half:+.4f}]")
PY
}
train_tagged() {  # PREFIX TAG...: train_control for each config/ablations/PREFIX_TAG.yaml (+ its _regressor.yaml), in turn
  local prefix=$1 tag
  shift
  for tag; do
    train_control "config/ablations/${prefix}_${tag}.yaml" "config/ablations/${prefix}_${tag}_regressor.yaml" \
      "out/ablation_${prefix}_${tag}"
  done
}
xfeat_continue() {  # issue 11, the easy-pair exit: the shipped XFeat matcher continued (up to 500 steps) with the early layers'
                    # NLL weighted more (early, gamma 1.25) or not (equal, the control), then fresh 600-step regressors;
                    # ARG: early / equal (default both, one after the other)
  local tag
  for tag in ${1:-early equal}; do
    "$M" train --config "config/ablations/xfeat_continue_$tag.yaml" --stage both --no-progress \
      $([ -f "out/ablation_xfeat_continue_$tag/stage1_state.pt" ] && echo --resume)
  done
}
eval_xfeat_continue() {  # TAG...: each continued network (early, equal) at alpha 0.95 and full depth (200 pairs, 1024
                         # keypoints), with the shipped file (both depths) beside early and LighterGlue beside equal;
                         # relative pose; the easy pair. One run per network (side by side on two cores)
  local tag net beside pose
  for tag in ${@:-early equal}; do
    net=mambaglue@out/ablation_xfeat_continue_$tag/mambaglue_xfeat.pt
    beside=",lightglue" pose=",lightglue"
    [ "$tag" = early ] && beside=",mambaglue,mambaglue+fulldepth" pose=",mambaglue"
    "$M" eval-homography --images "$VAL" --pairs 200 --seed 0 --features xfeat --methods "$net,$net+fulldepth$beside" \
      --json "out/eval_xfeat_continue_$tag.json" --threads 1 --no-progress
    "$M" eval-pose --features xfeat --methods "$net$pose" --json "out/eval_pose_xfeat_continue_$tag.json" --threads 1 \
      --no-progress
    bench_easy "out/ablation_xfeat_continue_$tag/mambaglue_xfeat.pt" "xfeat_continue_$tag" xfeat
  done
}
settle_xfeat_continue() {  # the stop layers of the shipped file, both continued networks and LighterGlue: their own rule,
                           # an exact regressor, 30 video-like + 30 homography pairs at 1024 keypoints and the easy pair at
                           # 512 and 1024
  local nets=mambaglue,lightglue,mambaglue@out/ablation_xfeat_continue_early/mambaglue_xfeat.pt
  nets=$nets,mambaglue@out/ablation_xfeat_continue_equal/mambaglue_xfeat.pt
  "$PY" benchmarks/regressor_calibration.py --images "$VAL" --pairs 30 --kinds video,homography --keypoints 1024 \
    --methods $nets --alphas 0.95 --json out/settle_xfeat_continue_1024.json
  "$PY" benchmarks/regressor_calibration.py --images "$VAL" --pairs 1 --kinds easy --keypoints 512 \
    --methods $nets --alphas 0.95 --json out/settle_xfeat_continue_easy512.json
  "$PY" benchmarks/regressor_calibration.py --images "$VAL" --pairs 1 --kinds easy --keypoints 1024 \
    --methods $nets --alphas 0.95 --json out/settle_xfeat_continue_easy1024.json
}
compare_xfeat_continue() {  # paired bootstrap intervals: early - equal, early - shipped, equal - shipped (alpha 0.95, full
                            # depth), early - equal in pose
  local E=mambaglue@out/ablation_xfeat_continue_early/mambaglue_xfeat.pt
  local Q=mambaglue@out/ablation_xfeat_continue_equal/mambaglue_xfeat.pt
  local H="out/eval_xfeat_continue_early.json out/eval_xfeat_continue_equal.json"
  "$M" compare $H --methods "$E,$Q" --json out/compare_xfeat_continue.json
  "$M" compare $H --methods "$E+fulldepth,$Q+fulldepth" --json out/compare_xfeat_continue_fulldepth.json
  "$M" compare out/eval_xfeat_continue_early.json --methods "$E,mambaglue" --json out/compare_xfeat_continue_shipped.json
  "$M" compare out/eval_xfeat_continue_early.json --methods "$E+fulldepth,mambaglue+fulldepth" \
    --json out/compare_xfeat_continue_shipped_fulldepth.json
  "$M" compare $H --methods "$Q,mambaglue" --json out/compare_xfeat_continue_equal_shipped.json
  "$M" compare $H --methods "$Q+fulldepth,mambaglue+fulldepth" --json out/compare_xfeat_continue_equal_shipped_fulldepth.json
  "$M" compare out/eval_pose_xfeat_continue_early.json out/eval_pose_xfeat_continue_equal.json --methods "$E,$Q" \
    --json out/compare_pose_xfeat_continue.json
}
v1budget_v2_one_factor() {  # issue 11: v2's one-factor ablations at the shipped v1 budget (837 + 600 steps, the data of
                           # xfeat_v1budget_v2): a causal scan (direction), the ungated concat message (gate); ARG: one
                           # of forward_only / concat (default both, one after the other)
  train_tagged xfeat_v1budget_v2 ${1:-forward_only concat}
}
eval_v1budget_v2_one_factor() {  # v2 and its one-factor variants in one run, with the shipped network and LighterGlue (the
                                 # pairs and keypoints of eval_xfeat_v1budget_v2): alpha 0.95 and full depth; pose; easy pair
  local V2=out/ablation_xfeat_v1budget_v2_reg600/mambaglue_xfeat.pt tag methods
  methods="mambaglue@$V2"
  for tag in forward_only concat; do methods="$methods,mambaglue@out/ablation_xfeat_v1budget_v2_${tag}_reg600/mambaglue_xfeat.pt"; done
  "$M" eval-homography --images "$VAL" --pairs 200 --seed 0 --features xfeat --methods "$methods,mambaglue,lightglue" \
    --alphas none --json out/eval_xfeat_v1budget_v2_one_factor.json --threads 1 --no-progress
  "$M" eval-pose --features xfeat --methods "$methods,mambaglue,lightglue" --json out/eval_pose_xfeat_v1budget_v2_one_factor.json --no-progress
  for tag in forward_only concat; do
    bench_easy "out/ablation_xfeat_v1budget_v2_${tag}_reg600/mambaglue_xfeat.pt" "xfeat_v1budget_v2_${tag}"
  done
}
xfeat_long3k() {  # issue 11's longer budget: v2 and its attention-only control, 3000 matcher steps on 3000 homography pairs
                  # of the shipped XFeat data (3.6x its steps), then 600 regressor steps each; ARG: v2 / attention
                  # (default both, one after the other; to run them side by side, start v2 first: it extends the
                  # shared feature cache, then attention). Each stage resumes from its state file.
  train_tagged xfeat_long3k ${1:-v2 attention}
}
eval_xfeat_long3k() {  # each finished long3k run against the shipped network and LighterGlue (the pairs and keypoints of
                       # eval_xfeat_v1budget_v2): alpha 0.95 and full depth; relative pose; easy pair. ARG: v2 / attention
  local tag
  for tag in ${1:-v2 attention}; do
    eval_against_shipped xfeat "out/ablation_xfeat_long3k_${tag}_reg600/mambaglue_xfeat.pt" "xfeat_long3k_$tag"
  done
}
xfeat_long3k_seed1() {  # issue 11: xfeat_long3k's two runs (the shipped XFeat file's budget) again with seed 1, so that
                        # v2 - control at that budget can be set against the seed's spread; ARG: v2 / attention (side by
                        # side: start v2 first, it builds the seed's feature cache). Each stage resumes.
  train_tagged xfeat_long3k_seed1 ${1:-v2 attention}
}
eval_xfeat_long3k_seed1() { eval_xfeat_pair xfeat_long3k_seed1 "$@"; }  # [TAG...]: as eval_xfeat_seed
compare_xfeat_long3k_seed1() { compare_xfeat_pair xfeat_long3k_seed1; }  # its v2 - control, as compare_xfeat_seed
xfeat_fresh() {  # issue 11, the training protocol after session 55's review: xfeat_long3k's two runs with new pairs
                 # every epoch, 128 validation pairs and the regressor on pairs its matcher did not see; ARG: v2 /
                 # attention (side by side: each builds an epoch's pairs when it reaches it, the other then reads them;
                 # two arriving together extract some twice, harmlessly). Resumes.
  train_tagged xfeat_fresh ${1:-v2 attention}
}
eval_xfeat_fresh() { eval_xfeat_pair xfeat_fresh "$@"; }  # [TAG...]: as eval_xfeat_long3k_seed1, on the same pairs
compare_xfeat_fresh() { compare_xfeat_pair xfeat_fresh; }  # its v2 - control with paired intervals
xfeat_fresh3ep() {  # issue 11: xfeat_fresh's two runs at 1125 matcher steps (3 epochs of new pairs), a budget that finishes
                    # inside one session; ARG: v2 / attention (side by side, as xfeat_fresh). Resumes.
  train_tagged xfeat_fresh3ep ${1:-v2 attention}
}
eval_xfeat_fresh3ep() { eval_xfeat_pair xfeat_fresh3ep "$@"; }  # [TAG...]: as eval_xfeat_fresh
compare_xfeat_fresh3ep() { compare_xfeat_pair xfeat_fresh3ep; }  # its v2 - control with paired intervals
render_xfeat() {  # issue 11: v2 and its attention-only control with 30 % rendered-room pairs, 1000 + 600 steps each, fp32
                  # (as the design runs); ARG: v2 / attention (default both in turn; side by side: start v2 first, it builds
                  # the feature cache, then attention once its stage 1 has started). Each stage resumes.
  local tag
  for tag in ${1:-v2 attention}; do
    train_long "config/ablations/xfeat_render_${tag}.yaml" "out/ablation_xfeat_render_${tag}" 600
  done
}
eval_render_runs() {  # PREFIX [TAG]: the PREFIX (render / render3k) runs, v2 and its control (or the finished one named
                      # by TAG: v2 / attention, into *_TAG.json), in one run with the shipped network and LighterGlue
                      # (the 200 pairs and keypoints of eval_design_xfeat_long and eval_xfeat_long3k, whose shipped /
                      # LighterGlue rows this run reproduces): alpha 0.95 and full depth; relative pose; the easy pair
  local tag methods="" json="${1}_xfeat${2:+_$2}"
  for tag in ${2:-v2 attention}; do
    [ -f "out/ablation_xfeat_${1}_${tag}/DONE" ] || { echo "eval_${1}_xfeat: run ${1}_xfeat $tag to the end first" >&2; return 1; }
    methods="${methods}mambaglue@out/ablation_xfeat_${1}_${tag}/mambaglue_xfeat.pt,"
  done
  "$M" eval-homography --images "$VAL" --pairs 200 --seed 0 --features xfeat --methods "${methods}mambaglue,lightglue" \
    --alphas none --json "out/eval_${json}.json" --threads 1 --no-progress
  "$M" eval-pose --features xfeat --methods "${methods}mambaglue,lightglue" --json "out/eval_pose_${json}.json" --no-progress
  for tag in ${2:-v2 attention}; do
    bench_easy "out/ablation_xfeat_${1}_${tag}/mambaglue_xfeat.pt" "${1}_xfeat_${tag}" xfeat
  done
}
eval_render_xfeat() { eval_render_runs render "$@"; }  # the render_xfeat runs; ARG: v2 / attention (one network)
render3k_xfeat() {  # issue 11: render_xfeat's recipe at the shipped file's budget (3000 + 600 steps on 3000 pairs), bf16;
                    # ARG: v2 / attention (default both in turn; side by side: start v2 first, it extends the feature
                    # cache, then attention once its stage 1 has started). Each stage resumes.
  local tag out
  for tag in ${1:-v2 attention}; do
    out="out/ablation_xfeat_render3k_${tag}"
    "$M" train --config "config/ablations/xfeat_render3k_${tag}.yaml" --stage 1 --no-progress \
      $([ -f "$out/stage1_state.pt" ] && echo --resume)
    "$M" train --config "config/ablations/xfeat_render3k_${tag}.yaml" --stage 2 --no-progress \
      $([ -f "$out/stage2_state.pt" ] && echo --resume)
    touch "$out/DONE"
  done
}
eval_render3k_xfeat() { eval_render_runs render3k "$@"; }  # the render3k_xfeat runs; ARG: v2 / attention
aliked_long() {  # issue 11: the ALIKED v2 network and its attention-only control at 1000 matcher steps on 1000 homography
                 # pairs (2.4x the shipped file's 418 on 300), then 600 regressor steps each; ARG: v2 / attention (default
                 # both in turn; side by side: start v2 first, it builds the feature cache). Each stage resumes.
  train_tagged aliked_long ${1:-v2 attention}
}
eval_aliked_runs() {  # PREFIX [TAGS]: each finished out/ablation_PREFIX_TAG_reg600 ALIKED run against the shipped network
                      # and the released LightGlue (the pairs and keypoints of eval_aliked_v2): alpha 0.95 and full
                      # depth; relative pose; easy pair. TAGS: v2 / attention (default both)
  local prefix=$1 tag
  for tag in ${2:-v2 attention}; do
    eval_against_shipped aliked "out/ablation_${prefix}_${tag}_reg600/mambaglue_aliked.pt" "${prefix}_$tag"
  done
}
eval_aliked_long() { eval_aliked_runs aliked_long "$@"; }  # the aliked_long runs; ARG: v2 / attention
aliked_long3k() {  # issue 11: the same two networks at 3000 matcher steps on 3000 homography pairs (3x aliked_long, the
                   # shipped XFeat file's 3000), then 600 regressor steps each; ARG: v2 / attention (default both in
                   # turn; side by side on two cores: one call per tag). Each stage resumes. The shipping rule for v2,
                   # fixed before its first step: docs/results.md, "ALIKED at 3000 matcher steps"
  train_tagged aliked_long3k ${1:-v2 attention}
}
eval_aliked_long3k() { eval_aliked_runs aliked_long3k "$@"; }  # the aliked_long3k runs (the same pairs); ARG: v2 / attention
ship_aliked_long3k() {  # the pre-registered shipping rule on eval_aliked_long3k v2's two JSON files
                        # (scripts/shipping_rule.py); only where it holds, the v2 run becomes the packaged ALIKED file
  local CAND=mambaglue@out/ablation_aliked_long3k_v2_reg600/mambaglue_aliked.pt
  if "$PY" scripts/shipping_rule.py out/eval_aliked_long3k_v2.json out/eval_pose_aliked_long3k_v2.json --candidate "$CAND"; then
    "$PY" -m mambaglue_ros.training.release --matcher-run out/ablation_aliked_long3k_v2 \
      --regressor-run out/ablation_aliked_long3k_v2_reg600 --out mambaglue_ros/weights/mambaglue_aliked.pt.xz \
      --note "version-2 network, 3000 + 600 steps (bash scripts/results.sh aliked_long3k v2; passed ship_aliked_long3k)"
  fi
}
regfresh_aliked_long3k() {  # [TAG]: each aliked_long3k matcher (v2, attention; or TAG) with a fresh 600-step regressor
                            # on pairs that matcher did not see (data.pair_seed 1; else its _regressor recipe), from its
                            # stage1_best.pt: out/ablation_aliked_long3k_TAG_regfresh. Resumes. One call per tag side by side
  local tag out
  for tag in ${1:-v2 attention}; do
    out=out/ablation_aliked_long3k_${tag}_regfresh
    mkdir -p "$out" && cp "out/ablation_aliked_long3k_$tag/stage1_best.pt" "$out/"
    "$M" train --config "config/ablations/aliked_long3k_${tag}_regfresh.yaml" --stage 2 --no-progress \
      $([ -f "$out/stage2_state.pt" ] && echo --resume)
  done
}
eval_regfresh_aliked_long3k() {  # [TAG]: each matcher with its two regressors (seen pairs: _reg600; unseen: _regfresh)
                                 # at alpha 0.95 on the 200 seeded pairs (exit layer, precision, AUC), then the easy pair
  local tag seen fresh
  for tag in ${1:-v2 attention}; do
    seen=out/ablation_aliked_long3k_${tag}_reg600/mambaglue_aliked.pt
    fresh=out/ablation_aliked_long3k_${tag}_regfresh/mambaglue_aliked.pt
    "$M" eval-homography --images "$VAL" --pairs 200 --seed 0 --features aliked \
      --methods "mambaglue@$seen,mambaglue@$fresh" --json "out/eval_regfresh_aliked_long3k_$tag.json" --threads 1 --no-progress
    bench_easy "$fresh" "regfresh_aliked_long3k_$tag" aliked
  done
}
train_step() {  # what a training step costs each design against the attention-only control, with the C++ training scan
                # and with the torch scan (benchmarks/train_step.py: XFeat batch 8, ALIKED batch 4, 512 keypoints)
  "$PY" benchmarks/train_step.py --json out/train_step.json
}
compare_aliked_runs() {  # PREFIX: paired bootstrap intervals (compare) of eval_aliked_runs PREFIX's two runs: v2, the
                         # shipped file and LightGlue each against the attention-only control, homographies and relative pose
  local V2=mambaglue@out/ablation_$1_v2_reg600/mambaglue_aliked.pt
  local CTRL=mambaglue@out/ablation_$1_attention_reg600/mambaglue_aliked.pt
  "$M" compare "out/eval_$1_attention.json" "out/eval_$1_v2.json" --methods "$V2,mambaglue,lightglue,$CTRL" \
    --json "out/compare_$1.json"
  "$M" compare "out/eval_pose_$1_attention.json" "out/eval_pose_$1_v2.json" \
    --methods "$V2,mambaglue,lightglue,$CTRL" --json "out/compare_pose_$1.json"
}
compare_aliked_long() { compare_aliked_runs aliked_long; }
compare_aliked_long3k() { compare_aliked_runs aliked_long3k; }  # (before ship_aliked_long3k: compared with "mambaglue" as shipped)
eval_aliked_control_fulldepth() {  # full depth (exit off): shipped MambaGlue, the control's matcher, LightGlue; one run
  "$M" eval-homography --images "$VAL" --pairs 200 --seed 0 --features aliked \
    --methods "mambaglue+fulldepth,mambaglue@out/ablation_aliked_attention_fulldepth/mambaglue_aliked.pt+fulldepth,lightglue+fulldepth" \
    --json out/eval_aliked_control_fulldepth.json --threads 1 --no-progress
}
eval_aliked_control() {  # at the default alpha, with the control's 600-step regressor: shipped, control, LightGlue; one run
  local CTRL=out/ablation_aliked_attention_reg600/mambaglue_aliked.pt
  "$M" eval-homography --images "$VAL" --pairs 200 --seed 0 --features aliked --methods "mambaglue,mambaglue@$CTRL,lightglue" \
    --json out/eval_aliked_control.json --threads 1 --no-progress
  "$M" eval-pose --features aliked --methods "mambaglue,mambaglue@$CTRL,lightglue" --json out/eval_pose_aliked_control.json \
    --no-progress
}
eval_ablations_xfeat_long() {  # the one-factor ablations of v2 that have finished, with v2 and its control (600-step
                               # regressors) in the same run: alpha 0.95 and full depth
  local V2=out/train_xfeat_v2_long_reg600/mambaglue_xfeat.pt CTRL=out/ablation_xfeat_attention_long_reg600/mambaglue_xfeat.pt
  local methods="mambaglue@$V2,mambaglue@$CTRL" cfg run
  for cfg in xfeat_v2_score_order xfeat_v2_forward_only xfeat_v2_concat xfeat_v1design; do
    run=out/ablation_${cfg}_long/mambaglue_xfeat.pt
    [ -f "out/ablation_${cfg}_long/DONE" ] && [ -f "$run" ] && methods="$methods,mambaglue@$run"
  done
  "$M" eval-homography --images "$VAL" --pairs 200 --seed 0 --features xfeat --methods "$methods" \
    --alphas 0.95,none --json out/eval_ablations_xfeat_long.json --threads 1 --no-progress
}
eval_ablation_depth() {  # the mixers at full depth (exit off), so regressor choice does not blur the mixer comparison
  "$M" eval-homography --images "$VAL" --pairs 200 --seed 0 --features xfeat \
    --methods mambaglue,mambaglue@out/ablation_xfeat_attention/mambaglue_xfeat.pt,mambaglue@out/ablation_xfeat_mamba/mambaglue_xfeat.pt \
    --alphas none --json out/eval_xfeat_ablation_full_depth.json --threads 1 --no-progress
}
eval_aliked() {
  "$M" eval-homography --images "$VAL" --pairs 200 --seed 0 --features aliked --methods mambaglue,lightglue \
    --alphas "$ALPHAS" --json out/eval_aliked.json --plots out/plots --threads 1 --no-progress
}
eval_pose() {
  "$M" eval-pose --features xfeat --methods mambaglue,lightglue,orb --json out/eval_pose_xfeat.json --plots out/plots --no-progress
}
replays() {       # at max_keypoints 1024, the node's default before 512 (the README figures); realtime_512 below for 512.
                  # precision=fp32: the same figures on every CPU (`auto` picks a bf16 front end where the CPU has
                  # native bf16; what that changes: precision_auto below)
  "$M" demo --out out/demo
  [ -d out/bags/euroc ] || "$M" bag-from-euroc "$DATA/euroc_v101_micro/mav0" out/bags/euroc
  "$M" replay out/bags/euroc --params config/stereo.yaml --out out/euroc --lossless --matcher mambaglue lightglue orb --set num_threads=1 max_keypoints=1024 precision=fp32 --force
  "$M" replay out/bags/euroc --params config/stereo.yaml --out out/euroc_previous --lossless --matcher mambaglue --set num_threads=1 max_keypoints=1024 precision=fp32 keyframe_policy=previous --force
  [ -d out/bags/kitti ] || "$M" bag-from-kitti "$DATA/kitti_seq1" out/bags/kitti
  "$M" replay out/bags/kitti --params config/matcher.yaml --out out/kitti --lossless --matcher mambaglue lightglue orb --set num_threads=1 max_keypoints=1024 precision=fp32 --force
  "$M" replay out/bags/kitti --params config/stereo.yaml --out out/kitti_stereo --lossless --matcher mambaglue lightglue orb --set num_threads=1 max_keypoints=1024 precision=fp32 --force
  mkdir -p docs/results && cp out/kitti_stereo/trajectory.png docs/results/kitti_stereo_trajectory.png
}
precision_auto() {  # 2026-12-05, issue 15: bf16 on a sequence (per-shape kernels, padded products), and what
                    # precision: auto (the node's default) changes: XFeat's front end in bf16, ALIKED's matcher in bf16
  "$PY" benchmarks/precision_sequence.py --configs xfeat:512,xfeat:1024,aliked:1024 --images "$DATA/kitti_seq1/image_l" --plot docs/results/precision_sequence.png --json out/precision_sequence.json
  "$PY" benchmarks/precision_sequence.py --configs aliked:512,xfeat:768 --variants fp32,bf16-bucketed --images "$DATA/kitti_seq1/image_l" --json out/precision_sequence_more.json
  "$M" eval-homography --images "$VAL" --pairs 200 --seed 0 --features aliked --methods mambaglue,mambaglue+bf16,lightglue,lightglue+bf16 --json out/eval_aliked_bf16.json --threads 1 --no-progress
  for p in fp32 bf16; do
    "$M" eval-homography --images "$VAL" --pairs 200 --seed 0 --features xfeat --methods mambaglue,lightglue --max-keypoints 512 --extractor-precision $p --json out/eval_xfeat512_fe_$p.json --threads 1 --no-progress
  done
  [ -d out/bags/kitti ] || "$M" bag-from-kitti "$DATA/kitti_seq1" out/bags/kitti
  for p in fp32 auto; do
    "$M" replay out/bags/kitti --params config/stereo.yaml --features aliked --out out/kitti_stereo_aliked_$p --lossless --matcher mambaglue --set num_threads=1 max_keypoints=1024 precision=$p --force --no-plots
    "$M" replay out/bags/kitti --params config/stereo.yaml --out out/kitti_stereo_xfeat_$p --lossless --matcher mambaglue --set num_threads=1 max_keypoints=1024 precision=$p --force --no-plots
    "$M" replay out/bags/kitti --params config/matcher.yaml --out out/kitti_mono_xfeat_$p --lossless --matcher mambaglue --set num_threads=1 max_keypoints=1024 precision=$p --force --no-plots
  done
  for round in 1 2; do
    for p in fp32 auto; do
      "$PY" benchmarks/node_rate.py --configs mono:xfeat,stereo:xfeat --seconds 20 --precision $p --json out/node_rate_${p}_$round.json
    done
  done
}
stereo_epipolar() {  # 2026-12-05, issue 15: left/right matches along the rows (stereo_matching: epipolar) against a matcher pass
  [ -d out/bags/kitti ] || "$M" bag-from-kitti "$DATA/kitti_seq1" out/bags/kitti
  [ -d out/bags/euroc ] || "$M" bag-from-euroc "$DATA/euroc_v101_micro/mav0" out/bags/euroc
  [ -d out/bags/demo ] || "$M" demo-bag out/bags/demo
  for sm in network epipolar; do
    "$M" replay out/bags/demo --params config/stereo.yaml --out out/demo_sm_$sm --lossless --matcher mambaglue --set num_threads=1 precision=fp32 stereo_matching=$sm --force --no-plots
    "$M" replay out/bags/kitti --params config/stereo.yaml --out out/kitti_stereo_sm_${sm}_512 --lossless --matcher mambaglue --set num_threads=1 precision=fp32 stereo_matching=$sm --force --no-plots
    "$M" replay out/bags/kitti --params config/stereo.yaml --out out/kitti_stereo_sm_${sm}_1024 --lossless --matcher mambaglue --set num_threads=1 max_keypoints=1024 precision=fp32 stereo_matching=$sm --force --no-plots
    "$M" replay out/bags/euroc --params config/stereo.yaml --out out/euroc_sm_$sm --lossless --matcher mambaglue --set num_threads=1 max_keypoints=1024 precision=fp32 stereo_matching=$sm --force --no-plots
  done
  for round in 1 2; do
    for sm in network epipolar; do
      "$PY" benchmarks/node_rate.py --configs stereo:xfeat --seconds 20 --set stereo_matching=$sm --json out/node_rate_stereo_${sm}_$round.json
    done
  done
}
resolution_knob() {  # issue 15: the rate controller's front-end resolution. What it costs (KITTI at the node's 512 keypoints,
                     # full resolution and resize_max = what image_scale 0.75 / 0.5 give a 1241 px image: 960 / 640 px)
                     # and what it buys with a target rate (mono 10 Hz, stereo 5 Hz; the controller's state in the JSON)
  [ -d out/bags/kitti ] || "$M" bag-from-kitti "$DATA/kitti_seq1" out/bags/kitti
  for cfg in matcher stereo; do
    for rm in 0 960 640; do
      "$M" replay out/bags/kitti --params config/$cfg.yaml --out out/kitti_scale_${cfg}_$rm --lossless --matcher mambaglue --set num_threads=1 precision=fp32 resize_max=$rm --force --no-plots
    done
  done
  "$PY" benchmarks/node_rate.py --configs mono:xfeat --target-hz 10 --seconds 60 --json out/node_rate_target10_scale.json
  "$PY" benchmarks/node_rate.py --configs mono:xfeat --target-hz 10 --seconds 60 --set min_image_scale=1.0 --json out/node_rate_target10_noscale.json
  "$PY" benchmarks/node_rate.py --configs stereo:xfeat --target-hz 5 --seconds 40 --json out/node_rate_stereo_target5_scale.json
}
realtime_512() {  # issue 15: what the 512 default costs (lossless) and what it gains live (--rate 1: the node drops
                  # what it cannot keep up with); node rate on a quiet machine, pipeline off against on
  [ -d out/bags/kitti ] || "$M" bag-from-kitti "$DATA/kitti_seq1" out/bags/kitti
  for kp in 1024 512; do
    for cfg in matcher stereo; do
      "$M" replay out/bags/kitti --params config/$cfg.yaml --out out/kitti_${cfg}_kp$kp --lossless --matcher mambaglue --set num_threads=1 max_keypoints=$kp precision=fp32 --force --no-plots
      "$M" replay out/bags/kitti --params config/$cfg.yaml --out out/kitti_rt_${cfg}_kp$kp --matcher mambaglue --set max_keypoints=$kp --force --no-plots
    done
    "$M" eval-homography --images "$VAL" --pairs 200 --seed 0 --features xfeat --methods mambaglue --max-keypoints $kp --json out/eval_kp$kp.json --threads 1 --no-progress
  done
  "$M" eval-homography --images "$VAL" --pairs 200 --seed 0 --features xfeat --methods mambaglue --max-keypoints 512 --extractor-precision bf16 --json out/eval_kp512_bf16fe.json --threads 1 --no-progress
  "$PY" benchmarks/node_rate.py --configs mono:xfeat,stereo:xfeat --seconds 20 --json out/node_rate_defaults.json
  "$PY" benchmarks/node_rate.py --configs mono:xfeat,stereo:xfeat --keypoints 512 --pipeline both --seconds 20 --json out/node_rate_both512.json
  "$PY" benchmarks/node_rate.py --configs mono:xfeat --keypoints 1024 --pipeline both --seconds 20 --json out/node_rate_both1024.json
  "$PY" benchmarks/node_rate.py --configs mono:xfeat --target-hz 10 --seconds 60 --json out/node_rate_target10.json
  "$PY" benchmarks/node_rate.py --configs mono:xfeat --target-hz 5 --seconds 60 --json out/node_rate_target5.json
}
pose_settle() {   # mono pose: cost and accuracy of stopping the seeded MAGSAC runs early (settle 0 = all six)
  "$PY" benchmarks/pose_mono.py --kitti "$DATA/kitti_seq1" --settle 0,2,3 --json out/pose_mono.json
  # the LM polish's stopping tolerance 1e-10 -> 1e-6 (commit after 1305dfd): that geometry.py against the one before
  "$PY" benchmarks/pose_time.py --baseline-rev 1305dfd --strides 1 4
}
live_kitti_ab() { # PARAMS MODE PARAM VALUE...: the node live on the KITTI bag (--rate 1: it drops what it cannot keep
                  # up with), three rounds, the values alternating -> out/kitti_live_MODE_VALUE_ROUND
  local params=$1 mode=$2 param=$3 r v
  shift 3
  for r in 1 2 3; do
    for v in "$@"; do
      "$M" replay out/bags/kitti --params "$params" --out "out/kitti_live_${mode}_${v}_$r" --matcher mambaglue --set "$param=$v" --force --no-plots
    done
  done
}
mono_scale() {    # mono ~/odom step lengths (unit / time / depth): offline on KITTI and the rendered sequences with
                  # frame patterns, then the node live on the KITTI bag (--rate 1: it drops what it cannot keep up with)
  [ -d out/bags/kitti ] || "$M" bag-from-kitti "$DATA/kitti_seq1" out/bags/kitti
  "$PY" benchmarks/mono_scale.py "$DATA/kitti_seq1" --json out/mono_scale_512.json
  "$PY" benchmarks/mono_scale.py "$DATA/kitti_seq1" --keypoints 1024 --json out/mono_scale_1024.json
  "$PY" benchmarks/mono_scale.py --synthetic forward orbit figure8 --json out/mono_scale_synthetic.json
  live_kitti_ab config/matcher.yaml mono mono_scale unit time
}
stereo_gaps() {   # stereo odometry with frames skipped (pnp_ransac pixel / auto / covariance): offline on KITTI and the
                  # rendered stereo sequences, then the node live on the KITTI bag (--rate 1: it drops what it cannot keep up with)
  [ -d out/bags/kitti ] || "$M" bag-from-kitti "$DATA/kitti_seq1" out/bags/kitti
  "$PY" benchmarks/stereo_gaps.py "$DATA/kitti_seq1" --gate-analysis --json out/stereo_gate_analysis_512.json
  "$PY" benchmarks/stereo_gaps.py "$DATA/kitti_seq1" --json out/stereo_gaps_512.json
  "$PY" benchmarks/stereo_gaps.py "$DATA/kitti_seq1" --keypoints 1024 --json out/stereo_gaps_1024.json
  "$PY" benchmarks/stereo_gaps.py --synthetic forward orbit figure8 --json out/stereo_gaps_synthetic.json
  live_kitti_ab config/stereo.yaml stereo pnp_ransac pixel auto
}
bad_frames() {    # stereo odometry with degraded frames (blur, covered, dark; alone and in bursts of 3), every frame
                  # processed: the reference fallback and auto's camera-period rule, against the tracker before 2026-12-05
                  # (its "before" runs keep the constant-velocity place of a frame without a pose and auto's rule of
                  # 2026-12-06, covariance gate only across skipped frames: that session's before/after ran commit
                  # f45c946 from a worktree, docs/results.md)
  "$PY" benchmarks/stereo_gaps.py "$DATA/kitti_seq1" --bad-frames --json out/stereo_bad_frames.json
  "$PY" benchmarks/stereo_gaps.py "$DATA/kitti_seq1" --bad-frames --set max_lost_frames=0 --without-camera-period \
    --json out/stereo_bad_frames_before.json
  "$PY" benchmarks/stereo_gaps.py --synthetic forward orbit --bad-frames --modes pixel auto \
    --json out/stereo_bad_frames_synthetic.json
  "$PY" benchmarks/stereo_gaps.py --synthetic forward orbit --bad-frames --modes pixel auto --set max_lost_frames=0 \
    --without-camera-period --json out/stereo_bad_frames_synthetic_before.json
}
sharpness_gate() {  # degraded frames with the sharpness gate (max_sharpness_ratio, default 2) and without it (0):
                    # mono every frame (KITTI, rendered rooms); stereo auto with every N-th frame processed
  for g in 2 0; do
    "$PY" benchmarks/mono_scale.py "$DATA/kitti_seq1" --bad-frames --modes time --tracking max_sharpness_ratio=$g \
      --json out/mono_bad_frames_gate$g.json
    "$PY" benchmarks/mono_scale.py --synthetic forward orbit --bad-frames --modes time --tracking max_sharpness_ratio=$g \
      --json out/mono_bad_frames_synthetic_gate$g.json
    for stride in 1 3 4 6; do
      "$PY" benchmarks/stereo_gaps.py "$DATA/kitti_seq1" --bad-frames --bad-frames-stride $stride --modes auto \
        --set max_sharpness_ratio=$g --json out/stereo_bad_frames_stride${stride}_gate$g.json
    done
    "$PY" benchmarks/stereo_gaps.py --synthetic forward orbit --bad-frames --bad-frames-stride 3 --modes auto \
      --set max_sharpness_ratio=$g --json out/stereo_bad_frames_synthetic_stride3_gate$g.json
  done
  "$PY" benchmarks/mono_blur_sweep.py "$DATA/kitti_seq1" --json out/mono_blur_sweep.json
  "$PY" benchmarks/mono_blur_sweep.py --synthetic forward orbit --json out/mono_blur_sweep_synthetic.json
}
track_gate() {    # which temporal matches continue a feature track (~/tracks, Matches.inliers), against the rendered
                  # room's truth: the real matcher, ORB, and the real matcher with 20 % of its matches swapped
  "$PY" benchmarks/track_gate.py --json out/track_gate_mambaglue.json
  "$PY" benchmarks/track_gate.py --matcher orb --json out/track_gate_orb.json
  "$PY" benchmarks/track_gate.py --swap 0.2 --json out/track_gate_mambaglue_swap.json
  "$PY" benchmarks/track_gate.py --kitti "$DATA/kitti_seq1" --json out/track_gate_kitti.json
}
raw_stereo() {    # stereo as raw cameras publish it: the KITTI clip as image_rect next to a raw camera_info (R turned back)
                  # and as raw images (stereo_rectify), against the clip as it is; then the EuRoC clip's raw pair
  "$PY" benchmarks/raw_stereo.py "$DATA/kitti_seq1" --out out/raw_stereo
  [ -d out/bags/euroc_raw ] || "$M" bag-from-euroc --raw "$DATA/euroc_v101_micro/mav0" out/bags/euroc_raw
  [ -d out/bags/euroc ] || "$M" bag-from-euroc "$DATA/euroc_v101_micro/mav0" out/bags/euroc
  "$M" replay out/bags/euroc_raw --params config/stereo.yaml --out out/raw_stereo/euroc_raw --matcher mambaglue \
    --lossless --force --no-plots --set stereo_rectify=true
  "$M" replay out/bags/euroc_raw --params config/stereo.yaml --out out/raw_stereo/euroc_raw_unrectified \
    --matcher mambaglue --lossless --force --no-plots --max-frames 30
  "$M" replay out/bags/euroc --params config/stereo.yaml --out out/raw_stereo/euroc_rect --matcher mambaglue \
    --lossless --force --no-plots
}
live_floor_rate() {  # the KITTI bag live through the node on this host: the defaults against target_rate_hz 10 (the
                     # bag's rate: a floor, not a throttle), mono and stereo, twice
  local rep cfg target
  for rep in 1 2; do for cfg in matcher stereo; do for target in 0.0 10.0; do
    "$M" replay out/bags/kitti --params config/$cfg.yaml --out out/s38_live_${cfg}_t${target}_$rep --matcher mambaglue \
      --set target_rate_hz=$target --force --no-plots
  done; done; done
}
scan_kernel() {   # the C++ CPU scan against the torch scan, same network and run; v1 (shipped) and v2 against our
                  # LightGlue, full depth and adaptive; then the node (quiet machine)
  local pair
  for pair in easy moderate; do
    "$M" bench --json out/bench/bench_scan_v1_$pair.json --features xfeat --threads 1 --pair $pair --keypoints 512,1024 \
      --extractors none --methods mambaglue_adaptive,lightglue_adaptive,mambaglue,mambaglue_torchscan,lightglue
    "$M" bench --json out/bench/bench_scan_v2_$pair.json --features xfeat --threads 1 --pair $pair --keypoints 512,1024 \
      --extractors none --weights out/train_xfeat_v2_long_reg600/mambaglue_xfeat.pt \
      --methods mambaglue_adaptive,lightglue_adaptive,mambaglue,mambaglue_torchscan,lightglue
  done
  "$M" bench --json out/bench/bench_scan_aliked.json --features aliked --threads 1 --keypoints 512,1024 --extractors none \
    --methods mambaglue,mambaglue_torchscan,lightglue
  "$PY" benchmarks/node_rate.py --configs mono:xfeat,stereo:xfeat --cpu-scan both --seconds 20 --json out/node_rate_scan.json
}
video_sweep() {   # [FEATURES [KEYPOINTS...]]: 2026-12-07 (issue 11), the alpha sweep on 200 video-like pairs of the held-out
                  # photos (eval-homography --video: what the node matches), the shipped file against the released
                  # LightGlue, so the exit is judged by accuracy against time, not by the stop layer at one alpha.
                  # No arguments: XFeat at 1024 and 512 keypoints, then ALIKED at 1024
  if [ $# -eq 0 ]; then
    video_sweep xfeat 1024 512
    video_sweep aliked 1024
    return
  fi
  local f=$1 k
  shift
  [ $# -gt 0 ] || set -- 1024
  for k in "$@"; do
    "$M" eval-homography --images "$VAL" --video --pairs 200 --seed 0 --features "$f" --max-keypoints "$k" \
      --methods mambaglue,lightglue --alphas 0.8,0.85,0.9,0.95,0.97,0.99,none \
      --json "out/video_sweep_${f}_${k}.json" --plots "out/plots_video_sweep_${f}_${k}" --threads 1 --no-progress
  done
}
video_equal_precision() {  # [FEATURES ALPHA [KEYPOINTS...]]: 2026-12-07 (issue 11), after video_sweep: MambaGlue at the alpha
                           # where its precision on those video-like pairs met (XFeat: 0.9) or first passed (ALIKED: 0.97)
                           # LightGlue's at 0.95 (a point of the sweep's curve, not a default), its default and LightGlue
                           # interleaved in one pass: the time at equal precision, free of the load changes between the
                           # sweep's rows; then the paired bootstrap. No arguments: both front ends, as documented
  if [ $# -eq 0 ]; then
    video_equal_precision xfeat 0.9 1024 512
    video_equal_precision aliked 0.97 1024
    return
  fi
  local f=$1 a=${2:-0.9} k
  shift $(( $# > 2 ? 2 : $# ))
  [ $# -gt 0 ] || set -- 1024
  for k in "$@"; do
    "$M" eval-homography --images "$VAL" --video --pairs 200 --seed 0 --features "$f" --max-keypoints "$k" \
      --methods "mambaglue,mambaglue+alpha$a,lightglue" --json "out/video_equal_precision_${f}_${k}.json" \
      --threads 1 --no-progress
    "$M" compare "out/video_equal_precision_${f}_${k}.json" --methods "mambaglue,mambaglue+alpha$a,lightglue" \
      --json "out/compare_video_equal_precision_${f}_${k}.json"
  done
}
video_pose() {    # [FEATURES [KEYPOINTS...]]: 2026-12-07 (issue 11), the same question on real frames: relative pose on KITTI
                  # (frame t <-> t+1 and t+3 of the driving clip) and EuRoC (left <-> right), both networks at five
                  # operating points (alpha 0.8, 0.9, 0.95, 0.99, full depth), all interleaved in one pass.
                  # No arguments: XFeat at 512 and 1024 keypoints
  local f=${1:-xfeat} k ops="" m a
  [ $# -gt 0 ] && shift
  [ $# -gt 0 ] || set -- 512 1024
  for m in mambaglue lightglue; do
    for a in +alpha0.8 +alpha0.9 "" +alpha0.99 +fulldepth; do ops="$ops,$m$a"; done
  done
  for k in "$@"; do
    "$M" eval-pose --features "$f" --max-keypoints "$k" --kitti-steps 1,3 --methods "${ops#,}" --threads 1 \
      --json "out/video_pose_${f}_${k}.json" --no-progress
  done
}
regressor_inputs() {  # 2026-12-07 (issue 11): what the deep regressor reads (the descriptor; its change over the layer;
                     # matchability; the assignment row maximum), fitted offline on the shipped XFeat matcher's frozen
                     # layers, and where an exact regressor would stop; 400 new pairs of the held-out training photos
  "$PY" benchmarks/regressor_inputs.py --config config/ablations/xfeat_long3k_v2_regressor.yaml \
    --json out/regressor_inputs_xfeat.json
}
low_rank_aliked() {  # 2026-12-08 (issue 11): the ALIKED file (version 1) with its FFN's Mamba columns at rank d/4
                     # (+lowrank, mamba_ffn_rank -1) against the same file as trained, on the pairs and keypoints of
                     # eval_aliked_long3k: alpha 0.95 and full depth, relative pose, paired intervals. (Run on 2026-12-08
                     # while -1 was the default: there the methods were named mambaglue and mambaglue+dense.)
  "$M" eval-homography --images "$VAL" --pairs 200 --seed 0 --features aliked \
    --methods mambaglue+lowrank,mambaglue,mambaglue+lowrank+fulldepth,mambaglue+fulldepth \
    --json out/eval_low_rank_aliked.json --threads 1 --no-progress
  "$M" eval-pose --features aliked --methods mambaglue+lowrank,mambaglue --json out/eval_pose_low_rank_aliked.json \
    --threads 1 --no-progress
  "$M" compare out/eval_low_rank_aliked.json --methods mambaglue+lowrank,mambaglue --json out/compare_low_rank_aliked.json
  "$M" compare out/eval_low_rank_aliked.json --methods mambaglue+lowrank+fulldepth,mambaglue+fulldepth \
    --json out/compare_low_rank_aliked_fulldepth.json
  "$M" compare out/eval_pose_low_rank_aliked.json --methods mambaglue+lowrank,mambaglue \
    --json out/compare_pose_low_rank_aliked.json
}
full_depth_flops() {  # 2026-12-07 (issue 11): full-depth time ratios with each design's FLOP ratio to LightGlue (quiet machine)
  "$PY" benchmarks/full_depth_ratio.py --configs xfeat:512:30,xfeat:1024:20,aliked:512:10,aliked:1024:8 --flops
}
speed() {         # run on a quiet machine: ratios within one run are what to compare
  "$M" bench --json out/bench/bench_xfeat.json --plots out/bench --features xfeat --threads 1
  "$M" bench --json out/bench/bench_aliked.json --plots out/bench --features aliked --threads 1 --extractors xfeat,aliked,disk,superpoint
  "$M" bench --json out/bench/bench_xfeat_easy.json --features xfeat --threads 1 --pair easy --keypoints 512,1024 --extractors none \
    --methods mambaglue_adaptive,lightglue_adaptive,lightglue_kornia_adaptive
  "$M" bench --json out/bench/bench_aliked_easy.json --features aliked --threads 1 --pair easy --keypoints 512,1024 --extractors none \
    --methods mambaglue_adaptive,lightglue_adaptive,lightglue_kornia_adaptive
  "$PY" benchmarks/node_rate.py --json out/node_rate.json
  "$PY" benchmarks/node_rate.py --configs mono:xfeat --target-hz 5 --json out/node_rate_5hz.json
  "$PY" benchmarks/node_rate.py --configs mono:xfeat,stereo:xfeat,mono:aliked --precision bf16 --json out/node_rate_bf16.json
}

steps=(train_xfeat train_xfeat_v1 xfeat_v1_weights train_aliked ablations design_xfeat eval_design_xfeat design_xfeat_long ablations_xfeat_long eval_design_xfeat_long regressor_xfeat_long eval_regressor_xfeat_long eval_ablations_xfeat_long regressor_aliked eval_regressor_aliked regressor_xfeat eval_regressor_xfeat aliked_control xfeat_v1_control eval_xfeat_v1_control aliked_control_fulldepth eval_aliked_control_fulldepth eval_aliked_control aliked_v2 eval_aliked_v2 xfeat_v1budget_v2 eval_xfeat_v1budget_v2 v1budget_v2_one_factor eval_v1budget_v2_one_factor xfeat_seed1 eval_xfeat_seed1 compare_xfeat_seed1 xfeat_seed2 eval_xfeat_seed2 compare_xfeat_seed2 seeds_xfeat xfeat_continue eval_xfeat_continue settle_xfeat_continue compare_xfeat_continue xfeat_long3k eval_xfeat_long3k xfeat_long3k_seed1 eval_xfeat_long3k_seed1 compare_xfeat_long3k_seed1 xfeat_fresh eval_xfeat_fresh compare_xfeat_fresh xfeat_fresh3ep eval_xfeat_fresh3ep compare_xfeat_fresh3ep render_xfeat eval_render_xfeat render3k_xfeat eval_render3k_xfeat aliked_long eval_aliked_long compare_aliked_long aliked_long3k eval_aliked_long3k compare_aliked_long3k ship_aliked_long3k regfresh_aliked_long3k eval_regfresh_aliked_long3k train_step eval_xfeat eval_xfeat_v1 eval_ablation_depth eval_aliked eval_pose replays precision_auto stereo_epipolar resolution_knob realtime_512 pose_settle mono_scale stereo_gaps bad_frames sharpness_gate track_gate live_floor_rate raw_stereo scan_kernel compressed_decode cpu_speed headline_time compare_headline video_sweep video_equal_precision video_pose regressor_inputs low_rank_aliked full_depth_flops speed)
if [ "${1:-}" = all ]; then
  for s in "${steps[@]}"; do "$s"; done
elif [ -n "${1:-}" ] && declare -F "$1" >/dev/null; then
  "$@"  # STEP [ARGS]: the few steps that take arguments say so beside their name
else
  echo "usage: bash scripts/results.sh all|$(IFS='|'; echo "${steps[*]}")" >&2
  exit 2
fi
