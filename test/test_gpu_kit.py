"""``scripts/gpu_kit.py``: the carried kit gives back wheels pip accepts, byte for byte the files fetched."""
from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_kit", ROOT / "scripts" / "gpu_kit.py")
gpu_kit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_kit)


def make_wheel(folder: Path) -> Path:
    """A minimal valid pure-Python wheel (module + dist-info with a correct RECORD), a library file stored
    three times as the ROS wheels store their soname links."""
    files = {"kitdemo/__init__.py": b"VALUE = 42\n",
             "kitdemo-1.0.data/data/lib/libdemo.so": b"\x7fELF" + bytes(range(256)) * 64,
             "kitdemo-1.0.data/data/lib/libdemo.so.1": b"\x7fELF" + bytes(range(256)) * 64,
             "kitdemo-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: kitdemo\nVersion: 1.0\n",
             "kitdemo-1.0.dist-info/WHEEL": (b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                             b"Tag: py3-none-any\n")}
    record = "".join(f"{n},sha256={hashlib.sha256(d).hexdigest()},{len(d)}\n" for n, d in files.items())
    files["kitdemo-1.0.dist-info/RECORD"] = (record + "kitdemo-1.0.dist-info/RECORD,,\n").encode()
    wheel = folder / "kitdemo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return wheel


def test_pack_unpack_gives_the_same_files_and_pip_installs_them(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = make_wheel(wheels)
    (wheels / "demo-0.1.tar.gz").write_bytes(b"not really an sdist")
    kit = gpu_kit.pack(wheels, tmp_path / "kit.tar.xz")
    back = gpu_kit.unpack(kit, tmp_path / "back")
    assert [p.name for p in back] == ["demo-0.1.tar.gz", wheel.name]
    assert (tmp_path / "back" / "demo-0.1.tar.gz").read_bytes() == b"not really an sdist"
    with zipfile.ZipFile(wheel) as a, zipfile.ZipFile(back[1]) as b:
        assert sorted(a.namelist()) == sorted(b.namelist())
        assert all(a.read(n) == b.read(n) for n in a.namelist())
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target",
                           str(target), str(back[1])], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (target / "kitdemo" / "__init__.py").read_text() == "VALUE = 42\n"


def test_marker_filter_keeps_linux_requirements_of_the_target_python():
    assert gpu_kit.wants("", "3.12")
    assert gpu_kit.wants(' python_version < "3.13"', "3.12")
    assert not gpu_kit.wants(' python_version < "3.11"', "3.12")
    assert not gpu_kit.wants(' sys_platform == "win32"', "3.12")
    assert not gpu_kit.wants(' extra == "test"', "3.12")
    assert gpu_kit.requirement_name("ros-kilted-rclpy==9.1.2") == "ros-kilted-rclpy"
    assert gpu_kit.requirement_name("Kornia_RS>=0.1 ; python_version>'3.8'") == "kornia-rs"
