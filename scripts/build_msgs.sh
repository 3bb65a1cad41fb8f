#!/usr/bin/env bash
# Build msg/ and srv/ into a venv that holds the pip-installed ROS 2 wheels (no /opt/ros needed).
# Usage: scripts/build_msgs.sh VENV   (skips the build when the inputs are unchanged)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(cd "$1" && pwd)"
PY="$VENV/bin/python"
BUILD="$VENV/build/mambaglue_msgs"
STAMP="$BUILD/.inputs.sha256"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

inputs_hash() { cat "$ROOT"/msg/*.msg "$ROOT"/srv/*.srv "$ROOT/CMakeLists.txt" "$ROOT/package.xml" "$0" | sha256sum | cut -d' ' -f1; }
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(inputs_hash)" ] && [ -d "$SITE/mambaglue_ros/msg" ] \
    && [ -d "$SITE/mambaglue_ros/srv" ]; then
  echo "[build_msgs] up to date"; exit 0
fi

# The msgs wheels hard-code the wheel builder's Python and numpy include dirs in their
# exported cmake files; point them at this venv's (idempotent; needed after every reinstall).
PYINC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
NPINC="$("$PY" -c 'import numpy; print(numpy.get_include())')"
sed -i -E \
  -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$PYINC#g" \
  -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_?core/include#$NPINC#g" \
  "$VENV"/share/*/cmake/export_*__rosidl_generator_pyExport.cmake

rm -rf "$BUILD"; mkdir -p "$BUILD"
export AMENT_PREFIX_PATH="$VENV"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV" \
  -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF -DMAMBAGLUE_MSGS_ONLY=ON >"$BUILD/configure.log" \
  || { cat "$BUILD/configure.log"; exit 1; }
cmake --build "$BUILD" -j"$(nproc)" >"$BUILD/build.log" || { tail -50 "$BUILD/build.log"; exit 1; }
cmake --install "$BUILD" >"$BUILD/install.log"
# The generated package __init__.py is empty; removing it lets the editable source package
# (which calls pkgutil.extend_path) own the name and pick the generated msg/ up from here.
rm -f "$SITE/mambaglue_ros/__init__.py"
# ament_cmake_python also records an egg-info named like our pip distribution; pip would
# "uninstall" it (deleting the generated msg files) when it installs the project.
rm -rf "$SITE"/mambaglue_ros-*.egg-info
inputs_hash >"$STAMP"
echo "[build_msgs] built mambaglue_ros/msg and mambaglue_ros/srv into $VENV"
