"""Weights files as an attacker or a bad network would deliver them: an xz bomb, code inside a
compressed pickle, a tampered or truncated download (a real HTTP server on 127.0.0.1). Each guard is
shown with its positive control: the same input does harm (or loads) without the guard."""
from __future__ import annotations

import http.server
import io
import lzma
import os
import threading
from pathlib import Path

import pytest
import torch

from mambaglue_ros import weights as W
from mambaglue_ros.matcher import build_network


# ---------------------------------------------------------------------------------------------- xz
def test_xz_bomb_is_refused_with_a_clear_error(tmp_path, monkeypatch):
    """A 3 kB file that inflates to 32 MiB, against a 4 MiB cap: refused before it is all in memory."""
    bomb = tmp_path / "bomb.pt.xz"
    bomb.write_bytes(lzma.compress(b"\0" * (32 << 20)))
    assert bomb.stat().st_size < 8192
    monkeypatch.setattr(W, "MAX_XZ_DECOMPRESSED_BYTES", 4 << 20)
    with pytest.raises(W.WeightsError, match=r"bomb.pt.xz: it decompresses to more than 4 MiB"):
        W.load_file(bomb)
    with pytest.raises(W.WeightsError, match="more than 4 MiB"):
        build_network("xfeat", str(bomb))  # the path users take
    # control: a real xz checkpoint just under the same cap loads
    net, _ = build_network("xfeat", "lightglue")
    ok = tmp_path / "ok.pt.xz"
    W.save_checkpoint(ok, net, "xfeat", net.conf)  # fp16, 2.8 MB raw
    assert len(lzma.decompress(ok.read_bytes())) < 4 << 20
    assert W.load_checkpoint(ok, "xfeat")["features"] == "xfeat"


def test_read_xz_reads_at_most_one_block_past_the_cap(tmp_path):
    data = os.urandom(3 << 20)  # incompressible: what is read is what is decompressed
    path = tmp_path / "x.xz"
    path.write_bytes(lzma.compress(data, preset=0))
    assert W.read_xz(path, limit=len(data)) == data
    with pytest.raises(W.WeightsError, match="more than 2 MiB"):
        W.read_xz(path, limit=2 << 20)


def test_the_default_cap_leaves_room_for_the_shipped_checkpoints():
    for features in ("xfeat", "aliked"):
        path = W.packaged_checkpoint(features)
        assert path is not None
        raw = len(lzma.decompress(path.read_bytes())) if path.name.endswith(".xz") else path.stat().st_size
        assert raw < W.MAX_XZ_DECOMPRESSED_BYTES / 8, (path.name, raw)


# ---------------------------------------------------------------------------------------------- pickles
class _Exploit:
    def __reduce__(self):
        return (os.mkdir, (os.environ["MG_EXPLOIT_DIR"],))


def evil_checkpoint() -> bytes:
    """A torch file shaped like our checkpoint whose unpickling runs ``os.mkdir($MG_EXPLOIT_DIR)``."""
    buffer = io.BytesIO()
    torch.save({"format": W.CHECKPOINT_FORMAT, "version": W.CHECKPOINT_VERSION, "features": "xfeat",
                "config": {}, "state_dict": _Exploit()}, buffer, pickle_protocol=2)
    return buffer.getvalue()


def test_code_in_an_xz_checkpoint_is_refused_and_would_run_without_the_guard(tmp_path, monkeypatch):
    marker = tmp_path / "payload_ran"
    monkeypatch.setenv("MG_EXPLOIT_DIR", str(marker))
    evil = tmp_path / "mambaglue_xfeat.pt.xz"
    evil.write_bytes(lzma.compress(evil_checkpoint()))
    for load in (lambda: W.load_file(evil), lambda: build_network("xfeat", str(evil))):
        with pytest.raises(W.WeightsError, match="refused to load .*may contain code"):
            load()
        assert not marker.exists(), "the payload ran"
    # positive control: the same bytes, unpickled without weights_only, do run the payload
    torch.load(io.BytesIO(lzma.decompress(evil.read_bytes())), weights_only=False)
    assert marker.is_dir()


# ---------------------------------------------------------------------------------------------- URLs
class _Server:
    """A real HTTP server on 127.0.0.1 (ephemeral port) serving fixed bodies; counts requests."""

    def __init__(self, files: dict[str, bytes], truncate: dict[str, int]) -> None:
        server = self
        self.requests: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.requests.append(self.path)
                body = files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))  # the full length ...
                self.end_headers()
                self.wfile.write(body[:truncate.get(self.path, len(body))])  # ... maybe not the full body
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def weights_server(tmp_path):
    net, _ = build_network("xfeat", "lightglue")
    path = tmp_path / "src.pt"
    W.save_checkpoint(path, net, "xfeat", net.conf)
    body = path.read_bytes()
    server = _Server({"/mambaglue_xfeat.pt": body, "/cut.pt": body}, truncate={"/cut.pt": len(body) // 2})
    yield server, body, W.sha256_of(path)
    server.close()


def test_url_download_checked_cached_and_loaded(weights_server, tmp_path):
    server, body, digest = weights_server
    cache = tmp_path / "cache"
    url = f"{server.url}/mambaglue_xfeat.pt"
    path = W.resolve(url, sha256=digest, cache_dir=cache)
    assert path.read_bytes() == body and path.parent == cache
    assert W.resolve(url, sha256=digest.upper(), cache_dir=cache) == path  # cached: no second download
    assert server.requests == ["/mambaglue_xfeat.pt"]
    assert W.load_checkpoint(path, "xfeat")["features"] == "xfeat"
    with pytest.raises(W.WeightsError, match="needs its SHA-256"):
        W.resolve(url, cache_dir=cache)


def test_url_with_the_wrong_sha256_is_refused_and_not_cached(weights_server, tmp_path):
    server, _, digest = weights_server
    cache = tmp_path / "cache"
    wrong = "0" * 64
    with pytest.raises(W.WeightsError, match=f"SHA-256 mismatch .*expected {wrong}, got {digest}"):
        W.resolve(f"{server.url}/mambaglue_xfeat.pt", sha256=wrong, cache_dir=cache)
    assert list(cache.iterdir()) == []  # nothing kept, not even a temporary file
    # a cached file that was tampered with afterwards is refused too
    good = W.resolve(f"{server.url}/mambaglue_xfeat.pt", sha256=digest, cache_dir=cache)
    good.write_bytes(b"tampered")
    with pytest.raises(W.WeightsError, match="SHA-256 mismatch"):
        W.resolve(f"{server.url}/mambaglue_xfeat.pt", sha256=digest, cache_dir=cache)


def test_truncated_or_missing_download_is_a_clear_error(weights_server, tmp_path):
    server, _, digest = weights_server
    cache = tmp_path / "cache"
    # the server announces the whole file and closes the connection halfway
    with pytest.raises(W.WeightsError, match=r"cannot download .*/cut.pt: truncated, \d+ of \d+ bytes"):
        W.resolve(f"{server.url}/cut.pt", sha256=digest, cache_dir=cache)
    with pytest.raises(W.WeightsError, match=r"cannot download .*/missing.pt: HTTPError.*404"):
        W.resolve(f"{server.url}/missing.pt", sha256=digest, cache_dir=cache)
    assert list(cache.iterdir()) == []
    assert server.requests == ["/cut.pt", "/missing.pt"]
