"""A ROS 2 user's `colcon build` of this package works against the pip-installed ROS 2 wheels.

Runs scripts/colcon_build_check.sh (copies the package into a temp colcon workspace, builds it with
colcon / ament_cmake against this venv, checks the layout and that the installed package imports
after sourcing install/local_setup.bash), then checks the install layout here too.

Needs colcon (`colcon` on PATH, next to this Python, or COLCON=/path/to/colcon) and cmake/gcc;
skips otherwise. About 10 s on 2 cores.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "colcon_build_check.sh"
PKG = "mambaglue_ros"
SKIP_RC = 77  # the script's "this environment cannot run the check"


def _colcon() -> str | None:
    """The colcon executable the script will use, or None."""
    if os.environ.get("COLCON"):
        return os.environ["COLCON"]
    on_path = shutil.which("colcon")
    if on_path:
        return on_path
    beside = Path(sys.executable).parent / "colcon"
    if beside.exists():
        return str(beside)
    # made by scripts/setup.sh, where MAMBAGLUE_COLCON_VENV says (default: <repo>/.venv-colcon)
    own_venv = Path(os.environ.get("MAMBAGLUE_COLCON_VENV") or ROOT / ".venv-colcon") / "bin" / "colcon"
    return str(own_venv) if own_venv.exists() else None


@pytest.fixture(scope="module")
def colcon_install(tmp_path_factory):
    """Run the check once; returns (workspace, script output)."""
    prefix = Path(sys.prefix)
    if not (prefix / "share" / "ament_cmake").is_dir():
        pytest.skip(f"the ROS 2 wheels (ament_cmake) are not installed in this Python's prefix {prefix}")
    if _colcon() is None:
        pytest.skip("colcon is not installed: not on PATH, not next to this Python, COLCON not set "
                    "(pip install colcon-common-extensions, e.g. into a separate venv, and set COLCON)")
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not on PATH")
    ws = tmp_path_factory.mktemp("colcon_ws")
    env = dict(os.environ, MAMBAGLUE_COLCON_WS=str(ws), PYTHON=sys.executable, COLCON=_colcon())
    proc = subprocess.run(["bash", str(SCRIPT), str(prefix)], env=env, capture_output=True,
                          text=True, timeout=300)
    output = proc.stdout + proc.stderr
    if proc.returncode == SKIP_RC:
        pytest.skip(output.strip().splitlines()[-1] if output.strip() else "colcon check cannot run here")
    assert proc.returncode == 0, f"scripts/colcon_build_check.sh failed (rc {proc.returncode}):\n{output}"
    return ws, output


@pytest.mark.slow
def test_colcon_build_install_layout(colcon_install):
    ws, output = colcon_install
    inst = ws / "install" / PKG
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    pkg = inst / "lib" / version / "site-packages" / PKG

    # our Python package and the generated messages share one directory
    for name in ("matcher.py", "cli.py", "features.py", "types.py", "ros/__init__.py", "models/selective_scan_cpu.cpp",
                 "msg/__init__.py", "msg/_matches.py"):
        assert (pkg / name).is_file(), f"missing {name} in {pkg}"
    init = (pkg / "__init__.py").read_text()
    assert init == (ROOT / PKG / "__init__.py").read_text(), "__init__.py is rosidl's, not ours"
    assert "extend_path" in init
    for ts in ("c", "fastrtps_c", "introspection_c"):
        assert (pkg / f"{PKG}_s__rosidl_typesupport_{ts}.so").is_file()
        assert (inst / "lib" / f"lib{PKG}__rosidl_typesupport_{ts}.so").is_file()

    # `ros2 run mambaglue_ros <exe>` looks in lib/<package>
    for exe, module in (("matcher_node", "mambaglue_ros.ros.node"), ("mambaglue", "mambaglue_ros.cli"),
                        ("multi_camera_node", "mambaglue_ros.ros.multi_camera")):
        path = inst / "lib" / PKG / exe
        assert path.is_file() and os.access(path, os.X_OK), f"lib/{PKG}/{exe} missing or not executable"
        text = path.read_text()
        assert text.startswith("#!/usr/bin/env python3\n") and f"from {module} import main" in text

    share = inst / "share" / PKG
    assert (share / "launch" / "matcher.launch.py").is_file()
    assert sorted(p.name for p in (share / "config").glob("*.yaml")) == \
        sorted(p.name for p in (ROOT / "config").glob("*.yaml"))
    for name in ("Matches.msg", "Matches.idl", "Matches.json"):
        assert (share / "msg" / name).is_file()
    assert (share / "package.xml").read_text() == (ROOT / "package.xml").read_text()
    assert (inst / "share" / "ament_index" / "resource_index" / "packages" / PKG).is_file()
    assert (ws / "install" / "local_setup.bash").is_file()

    # the script imported messages (+ serialisation through the typesupport) and our code from the
    # install after sourcing install/local_setup.bash
    assert "imports ok: mambaglue_ros, mambaglue_ros.msg" in output, output
