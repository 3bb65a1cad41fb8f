#!/usr/bin/env bash
# Build this package the way a ROS 2 user does (colcon, ament_cmake) in a throw-away workspace,
# against a ROS prefix (by default the venv holding the pip-installed ROS 2 Kilted wheels), then
# check the install layout and that the installed package imports (messages + our Python code).
#
# Usage: scripts/colcon_build_check.sh [ROS_PREFIX] [-- extra colcon build args, e.g. --symlink-install]
#   ROS_PREFIX   prefix with share/ament_cmake (default: $MAMBAGLUE_VENV, else <repo>/.venv)
# Environment:
#   COLCON                 colcon executable (default: `colcon` on PATH, else ROS_PREFIX/bin/colcon)
#   PYTHON                 the ROS Python, used by cmake and the import check
#                          (default: ROS_PREFIX/bin/python, else python3)
#   MAMBAGLUE_COLCON_WS    workspace dir to use (kept afterwards; default: a temp dir, removed
#                          unless the check fails)
# Exit status: 0 ok; 1 build or check failed; 77 this environment cannot run the check
# (no colcon, no cmake, no ROS in the prefix, unpatched wheel cmake files): the test skips then.
#
# The working command it runs (pip-installed ROS; no /opt/ros, no setup.bash to source):
#   AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV colcon build \
#     --cmake-args -DPython3_EXECUTABLE=$VENV/bin/python -DBUILD_TESTING=OFF
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKG=mambaglue_ros
log() { printf '[colcon_check] %s\n' "$*"; }
fail() { printf '[colcon_check] FAIL: %s\n' "$*" >&2; exit 1; }
cannot() { printf '[colcon_check] SKIP: %s\n' "$*" >&2; exit 77; }

PREFIX="${MAMBAGLUE_VENV:-$ROOT/.venv}"
if [ $# -gt 0 ] && [ "$1" != "--" ]; then PREFIX="$1"; shift; fi
[ "${1:-}" = "--" ] && shift
EXTRA_ARGS=("$@")
[ -d "$PREFIX" ] || cannot "ROS prefix $PREFIX does not exist"
PREFIX="$(cd "$PREFIX" && pwd)"
[ -d "$PREFIX/share/ament_cmake" ] || cannot "no ament_cmake in $PREFIX/share (ROS 2 wheels not installed there?)"

if [ -z "${PYTHON:-}" ]; then
  if [ -x "$PREFIX/bin/python" ]; then PYTHON="$PREFIX/bin/python"; else PYTHON="$(command -v python3)"; fi
fi
if [ -z "${COLCON:-}" ]; then
  COLCON="$(command -v colcon || true)"
  [ -n "$COLCON" ] || { [ -x "$PREFIX/bin/colcon" ] && COLCON="$PREFIX/bin/colcon"; } || true
fi
[ -n "${COLCON:-}" ] && [ -x "$COLCON" ] || cannot "colcon not found (set COLCON=/path/to/colcon, or put it on PATH; pip install colcon-common-extensions)"
command -v cmake >/dev/null || cannot "cmake not on PATH"

# The msgs wheels hard-code the wheel builder's /opt/python include dirs; scripts/build_msgs.sh
# patches them (this check does not modify the prefix).
if grep -lsE '/opt/python/cp3[0-9]+-cp3[0-9]+/(include|lib)' "$PREFIX"/share/*/cmake/export_*__rosidl_generator_pyExport.cmake >/dev/null; then
  cannot "$PREFIX has unpatched /opt/python include paths in its msgs cmake files; run scripts/build_msgs.sh $PREFIX first"
fi

# colcon's own PYTHONPATH hook is computed with colcon's interpreter: it must be the same X.Y.
COLCON_PY="$(head -1 "$COLCON" | sed -e 's/^#![[:space:]]*//' -e 's/[[:space:]].*//')"
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ -x "$COLCON_PY" ]; then
  CVER="$("$COLCON_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  [ "$CVER" = "$PYVER" ] || log "WARNING: colcon runs on Python $CVER, ROS on $PYVER (colcon's PYTHONPATH hook will point at lib/python$CVER)"
fi

if [ -n "${MAMBAGLUE_COLCON_WS:-}" ]; then
  WS="$MAMBAGLUE_COLCON_WS"; mkdir -p "$WS"; WS="$(cd "$WS" && pwd)"
else
  WS="$(mktemp -d "${TMPDIR:-/tmp}/mambaglue_colcon_ws.XXXXXX")"
  trap 'rc=$?; if [ $rc -eq 0 ]; then rm -rf "$WS"; else echo "[colcon_check] workspace kept: $WS" >&2; fi' EXIT
fi
SRC="$WS/src/$PKG"
rm -rf "$SRC" "$WS/build" "$WS/install" "$WS/log"
mkdir -p "$SRC"
# Copy the package sources (not the venv, build outputs or caches: colcon would see them).
tar -C "$ROOT" -c --exclude=./.git --exclude='./.venv*' --exclude=./build --exclude=./install \
  --exclude=./log --exclude=./out --exclude=./.pytest_cache --exclude=./.whl \
  --exclude='*.egg-info' --exclude='__pycache__' --exclude='*.pyc' . | tar -C "$SRC" -x

log "workspace $WS, ROS prefix $PREFIX, python $PYTHON, colcon $COLCON"
# Only the ROS prefix: no overlay of whatever the calling shell has sourced. COLCON_HOME keeps a
# user's ~/.colcon defaults/mixins out of the build.
export AMENT_PREFIX_PATH="$PREFIX" CMAKE_PREFIX_PATH="$PREFIX" COLCON_HOME="$WS/.colcon"
unset COLCON_PREFIX_PATH PYTHONPATH
(cd "$WS" && "$COLCON" list) >"$WS/colcon_list.txt" 2>&1 || { cat "$WS/colcon_list.txt"; fail "colcon list failed"; }
grep -qE "^$PKG[[:space:]].*\(ros\.ament_cmake\)" "$WS/colcon_list.txt" \
  || { cat "$WS/colcon_list.txt"; fail "colcon does not see $PKG as a ros.ament_cmake package"; }

start=$SECONDS
if ! (cd "$WS" && "$COLCON" build --event-handlers console_direct+ "${EXTRA_ARGS[@]}" \
      --cmake-args "-DPython3_EXECUTABLE=$PYTHON" -DBUILD_TESTING=OFF) >"$WS/colcon_build.log" 2>&1; then
  tail -60 "$WS/colcon_build.log" >&2
  fail "colcon build failed (full output: $WS/colcon_build.log, logs: $WS/log/latest_build)"
fi
log "colcon build ok in $((SECONDS - start)) s"

INST="$WS/install/$PKG"
SITE="$INST/lib/python$PYVER/site-packages"
problems=()
need() { [ -e "$1" ] || problems+=("missing ${1#"$WS/"}"); }
need_x() { [ -x "$1" ] || problems+=("missing or not executable ${1#"$WS/"}"); }
need "$SITE/$PKG/__init__.py"
need "$SITE/$PKG/matcher.py"
need "$SITE/$PKG/cli.py"
need "$SITE/$PKG/ros/__init__.py"
need "$SITE/$PKG/msg/__init__.py"
need "$SITE/$PKG/msg/_matches.py"
for ts in c fastrtps_c introspection_c; do
  need "$SITE/$PKG/${PKG}_s__rosidl_typesupport_$ts.so"
  need "$INST/lib/lib${PKG}__rosidl_typesupport_$ts.so"
done
need "$INST/lib/lib${PKG}__rosidl_generator_py.so"
need_x "$INST/lib/$PKG/matcher_node"
need_x "$INST/lib/$PKG/mambaglue"
need "$INST/share/$PKG/package.xml"
need "$INST/share/$PKG/launch/matcher.launch.py"
need "$INST/share/$PKG/config/matcher.yaml"
need "$INST/share/$PKG/msg/Matches.msg"
need "$INST/share/ament_index/resource_index/packages/$PKG"
if [ -f "$SITE/$PKG/__init__.py" ] && ! cmp -s "$SITE/$PKG/__init__.py" "$SRC/$PKG/__init__.py"; then
  problems+=("$PKG/__init__.py in the install is not ours (rosidl's generated one won?)")
fi
if [ ${#problems[@]} -gt 0 ]; then
  printf '[colcon_check]   %s\n' "${problems[@]}" >&2
  fail "install layout is wrong (${#problems[@]} problems; workspace $WS)"
fi
log "install layout ok"

# What a ROS user does next: source the workspace, then import. Run from the workspace root: in
# the repo root, the cwd's mambaglue_ros/ would shadow the install. Every module must come from
# the install (not from a dev copy elsewhere on sys.path, e.g. an editable install).
check_py="
import importlib.util, os, sys
site = os.path.realpath(sys.argv[1])
import $PKG, $PKG.msg
from $PKG.msg import Matches
from rclpy.serialization import serialize_message, deserialize_message
m = Matches(pair_kind=Matches.PAIR_STEREO, keypoints0=[1.0, 2.0], indices0=[3])
assert deserialize_message(serialize_message(m), Matches) == m
mods = [$PKG, $PKG.msg]
if importlib.util.find_spec('torch') is not None:
    import $PKG.matcher
    mods.append($PKG.matcher)
else:
    print('[colcon_check] note: torch not importable by this Python; $PKG.matcher import not checked')
bad = [f'{mod.__name__} from {mod.__file__}' for mod in mods
       if not os.path.realpath(mod.__file__).startswith(site + os.sep)
       and not os.path.abspath(mod.__file__).startswith(sys.argv[1] + os.sep)]
assert not bad, 'not imported from the install: ' + ', '.join(bad)
from ament_index_python.packages import get_package_share_directory
assert get_package_share_directory('$PKG') == sys.argv[2], get_package_share_directory('$PKG')
print('[colcon_check] imports ok:', ', '.join(mod.__name__ for mod in mods))
"
if ! bash -c 'cd "$1" && source "$1/install/local_setup.bash"; shift; exec "$@"' _ "$WS" \
     "$PYTHON" -c "$check_py" "$SITE" "$INST/share/$PKG"; then
  fail "the installed package does not import after sourcing $WS/install/local_setup.bash"
fi
# The installed launcher (cli imports torch, so only where the ROS Python has it).
if "$PYTHON" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'; then
  bash -c 'cd "$1" && source "$1/install/local_setup.bash"; shift; exec "$@"' _ "$WS" \
    "$PYTHON" "$INST/lib/$PKG/mambaglue" --help >/dev/null || fail "installed lib/$PKG/mambaglue --help failed"
  log "lib/$PKG/mambaglue --help ok"
fi
log "OK: colcon build of $PKG against $PREFIX works ($((SECONDS - start)) s)"
